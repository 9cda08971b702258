"""Recipient normalisation: the destination to E.164 with phonenumbers (TON 1, NPI 1).

A national number (leading 0, TON national, or written with the international call prefix 00)
is read with the account's region (setting ``region``); a number that is not valid is
rejected with ESME_RINVDSTADR / HTTP 422. The number's type and country are recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberType, ValidationResult

from gateway.model import Message
from rules.core import ESME_RINVDSTADR, Change, Context, Decision

_TON_INTERNATIONAL, _TON_NATIONAL = 1, 2
_NPI_ISDN = 1
_POSSIBLE: dict[int, str] = {
    ValidationResult.INVALID_COUNTRY_CODE: "its country code does not exist",
    ValidationResult.TOO_SHORT: "it is too short",
    ValidationResult.TOO_LONG: "it is too long",
    ValidationResult.INVALID_LENGTH: "its length fits no number of its country",
}

_PARSE_ERRORS: dict[int, str] = {
    NumberParseException.INVALID_COUNTRY_CODE: "its country code does not exist",
    NumberParseException.NOT_A_NUMBER: "it is not a phone number",
    NumberParseException.TOO_SHORT_NSN: "it is too short",
    NumberParseException.TOO_SHORT_AFTER_IDD: "it is too short",
    NumberParseException.TOO_LONG: "it is too long",
}


# The number types phonenumbers tells apart, as recorded (Message.number_type) and as routes
# and the ``types`` option name them.
NUMBER_TYPES: tuple[str, ...] = tuple(
    str(PhoneNumberType.to_string(t)).lower() for t in PhoneNumberType.values())


def number_type(number: phonenumbers.PhoneNumber) -> str:
    """"mobile", "fixed_line", "fixed_line_or_mobile", "toll_free", ... ("unknown")."""
    return str(PhoneNumberType.to_string(phonenumbers.number_type(number))).lower()


def parse_recipient(addr: str, ton: int, region: str | None
                    ) -> tuple[phonenumbers.PhoneNumber | None, str]:
    """The number an address means (None if none), and why not when it is None."""
    digits = addr.removeprefix("+")
    international = addr.startswith("+") or (ton == _TON_INTERNATIONAL
                                              and not digits.startswith("0"))
    if not international and region is None:
        return None, ("it is a national number and the account has no region to read it "
                      "with (set region in [rules])")
    try:
        number = phonenumbers.parse("+" + digits if international else digits,
                                    None if international else region)
    except NumberParseException as exc:
        return None, _PARSE_ERRORS.get(exc.error_type, "it cannot be read as a phone number")
    if not phonenumbers.is_valid_number(number):
        why = _POSSIBLE.get(phonenumbers.is_possible_number_with_reason(number))
        country = phonenumbers.region_code_for_number(number) or "its country"
        return None, why or f"it is not a valid number of {country}"
    return number, ""


class RecipientRule:
    """Built-in rule ``recipient``. Options: ``types`` (optional list of number types to
    accept, e.g. ["mobile", "fixed_line_or_mobile"]: others are rejected)."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        unknown = set(options) - {"types"}
        if unknown:
            raise ValueError(f"unknown option {sorted(unknown)[0]!r} (expected: types)")
        types = options.get("types")
        if types is not None and (not isinstance(types, list)
                                  or not all(isinstance(t, str) for t in types)):
            raise ValueError("types: expected an array of number types such as \"mobile\"")
        wrong = sorted(set(types or ()) - set(NUMBER_TYPES))
        if wrong:
            raise ValueError(f"types: unknown number type {wrong[0]!r} (expected: "
                             f"{', '.join(NUMBER_TYPES)})")
        self.types = None if types is None else frozenset(types)

    def apply(self, message: Message, context: Context) -> Decision:
        region = context.setting("region")
        number, why = parse_recipient(message.dest_addr, message.dest_ton, region)
        if number is None:
            return Decision.reject("invalid-recipient", f"destination refused: {why}",
                                   smpp_status=ESME_RINVDSTADR, http_status=422,
                                   subject="recipient")
        kind = number_type(number)
        country = phonenumbers.region_code_for_number(number) or ""
        if self.types is not None and kind not in self.types:
            return Decision.reject(
                "recipient-type", f"destination refused: a {kind} number (this account sends "
                f"to {', '.join(sorted(self.types))})", smpp_status=ESME_RINVDSTADR,
                http_status=422, subject="recipient", number_type=kind, country=country)
        e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)[1:]
        changes = [Change(name, old, new) for name, old, new in (
            ("dest_addr", message.dest_addr, e164),
            ("dest_ton", message.dest_ton, _TON_INTERNATIONAL),
            ("dest_npi", message.dest_npi, _NPI_ISDN)) if old != new]
        return Decision.modify(changes, "destination in E.164" if changes else "",
                               number_type=kind, country=country)
