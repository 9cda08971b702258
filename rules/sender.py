"""Sender ID (OADC) normalisation and policy, per destination country.

The country table (TOML, option ``table``; see conf/senders.toml) says per country how long an
alphanumeric sender may be, which digit-only senders are short codes, which senders are
forbidden or need the account's authorisation, and whether the sender is replaced. TON/NPI are
set to match: alphanumeric 5/0, short code 3/0, international number 1/1 (E.164).
"""

from __future__ import annotations

import tomllib
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import phonenumbers

from gateway.model import Message
from rules.core import ESME_RINVSRCADR, Change, Context, Decision
from rules.recipient import parse_recipient

TON_INTERNATIONAL, TON_SHORT_CODE, TON_ALPHANUMERIC = 1, 3, 5
NPI_UNKNOWN, NPI_ISDN = 0, 1
DEFAULT_COUNTRY = "default"
# Letters NFKD does not decompose into a base letter and accents.
_LIGATURES = str.maketrans({"Œ": "OE", "œ": "oe", "Æ": "AE", "æ": "ae", "ß": "ss", "Ø": "O",
                            "ø": "o", "Ł": "L", "ł": "l", "Đ": "D", "đ": "d", "Þ": "Th",
                            "þ": "th"})


def transliterate(text: str) -> str:
    """Letters and digits only, accents removed: "Promo-Été!!" -> "PromoEte"."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_LIGATURES))
    return "".join(c for c in decomposed if c.isascii() and c.isalnum())


@dataclass(frozen=True, slots=True)
class CountryPolicy:
    max_length: int = 11  # characters of an alphanumeric sender
    alphanumeric: bool = True  # alphanumeric senders allowed at all
    short_code_lengths: frozenset[int] = frozenset(range(3, 9))  # digits of a short code
    forbidden: frozenset[str] = frozenset()  # upper case
    authorisation_required: frozenset[str] = frozenset()  # upper case
    override: str | None = None  # the sender every message to this country gets


_POLICY_KEYS = ("max_length", "alphanumeric", "short_code_lengths", "forbidden",
                "authorisation_required", "override")


def _policy(file: str, country: str, data: object, base: CountryPolicy) -> CountryPolicy:
    where = f"{file}: country.{country}"
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a table, got {data!r}")
    for key in data:
        if key not in _POLICY_KEYS:
            raise ValueError(f"{where}.{key}: unknown key (expected one of "
                             f"{', '.join(_POLICY_KEYS)})")

    def names(key: str, default: frozenset[str]) -> frozenset[str]:
        value = data.get(key)
        if value is None:
            return default
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ValueError(f"{where}.{key}: expected an array of sender IDs, got {value!r}")
        return frozenset(v.upper() for v in value)

    max_length = data.get("max_length", base.max_length)
    if not isinstance(max_length, int) or isinstance(max_length, bool) \
            or not 1 <= max_length <= 11:
        raise ValueError(f"{where}.max_length: expected an integer from 1 to 11, got "
                         f"{max_length!r}")
    alphanumeric = data.get("alphanumeric", base.alphanumeric)
    if not isinstance(alphanumeric, bool):
        raise ValueError(f"{where}.alphanumeric: expected true or false, got {alphanumeric!r}")
    lengths = data.get("short_code_lengths")
    if lengths is None:
        short = base.short_code_lengths
    elif isinstance(lengths, list) and all(isinstance(n, int) and 3 <= n <= 8 for n in lengths):
        short = frozenset(lengths)
    else:
        raise ValueError(f"{where}.short_code_lengths: expected an array of digit counts from "
                         f"3 to 8, got {lengths!r}")
    override = data.get("override", base.override)
    if override is not None and (not isinstance(override, str) or not override
                                 or len(override) > 20):
        raise ValueError(f"{where}.override: expected a sender ID, got {override!r}")
    return CountryPolicy(max_length, alphanumeric, short, names("forbidden", base.forbidden),
                         names("authorisation_required", base.authorisation_required),
                         override)


def load_table(path: Path) -> dict[str, CountryPolicy]:
    """Country code (ISO 3166, upper case, or "default") -> policy; ValueError naming the
    file and key when the table is not valid."""
    file = str(path)
    try:
        doc = tomllib.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise ValueError(f"{file}: cannot read: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{file}: not a valid TOML file: {exc}") from None
    unknown = set(doc) - {"country"}
    if unknown:
        raise ValueError(f"{file}: {sorted(unknown)[0]}: unknown key (expected [country.XX] "
                         "tables)")
    countries = doc.get("country", {})
    if not isinstance(countries, dict):
        raise ValueError(f"{file}: country: expected tables [country.XX]")
    base = _policy(file, DEFAULT_COUNTRY, countries.get(DEFAULT_COUNTRY, {}), CountryPolicy())
    table = {DEFAULT_COUNTRY: base}
    for code, data in countries.items():
        if code == DEFAULT_COUNTRY:
            continue
        if len(code) != 2 or not code.isascii() or not code.isupper():
            raise ValueError(f"{file}: country.{code}: expected an ISO 3166 code of two capital "
                             'letters (e.g. "FR") or "default"')
        table[code] = _policy(file, code, data, base)
    return table


def _refuse(reason: str, detail: str, **facts: object) -> Decision:
    return Decision.reject(reason, detail, smpp_status=ESME_RINVSRCADR, http_status=422,
                           subject="sender", **facts)


class SenderRule:
    """Built-in rule ``sender``. Options: ``table``, the country table file (relative paths
    from the working directory, like store.path); without it every country gets the default
    policy. Account settings used: ``allowed_senders``, ``authorised_senders``, ``region``."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        unknown = set(options) - {"table"}
        if unknown:
            raise ValueError(f"unknown option {sorted(unknown)[0]!r} (expected: table)")
        table = options.get("table")
        if table is not None and not isinstance(table, str):
            raise ValueError(f"table: expected a file path, got {table!r}")
        self.table = (load_table(Path(table)) if table
                      else {DEFAULT_COUNTRY: CountryPolicy()})

    def policy_for(self, message: Message) -> tuple[str, CountryPolicy]:
        country = DEFAULT_COUNTRY
        if message.dest_ton == TON_INTERNATIONAL or message.dest_addr.startswith("+"):
            try:
                number = phonenumbers.parse("+" + message.dest_addr.removeprefix("+"))
                country = phonenumbers.region_code_for_number(number) or DEFAULT_COUNTRY
            except phonenumbers.NumberParseException:
                pass
        if country in self.table:
            return country, self.table[country]
        return country, self.table[DEFAULT_COUNTRY]

    def apply(self, message: Message, context: Context) -> Decision:
        country, policy = self.policy_for(message)
        old = (message.source_addr, message.source_ton, message.source_npi)
        notes: list[str] = []
        if policy.override is not None:
            sender = policy.override
            notes.append(f"replaced as {country} demands")
            new = self._classify_known(sender, policy)
        elif not message.source_addr:
            return Decision.accept(country=country)  # the operator connection's default
        else:
            result = self._normalise(message, policy, context, notes)
            if isinstance(result, Decision):
                return result
            new = result
        sender = new[0].upper()
        if policy.override is None:
            if sender in policy.forbidden:
                return _refuse("forbidden-sender", f"sender ID {new[0]} is forbidden toward "
                               f"{country}", country=country)
            if sender in policy.authorisation_required and sender not in {
                    s.upper() for s in context.setting("authorised_senders", ())}:
                return _refuse("sender-not-authorised",
                               f"sender ID {new[0]} needs the brand's authorisation toward "
                               f"{country}: the account is not authorised for it "
                               "(authorised_senders)", country=country)
            allowed = context.setting("allowed_senders")
            if allowed and sender not in {s.upper() for s in allowed}:
                return _refuse("sender-not-allowed", f"sender ID {new[0]} is not one of the "
                               "account's allowed_senders", country=country)
        changes = [Change(name, was, now) for name, was, now in zip(
            ("source_addr", "source_ton", "source_npi"), old, new, strict=True) if was != now]
        kind = {TON_ALPHANUMERIC: "alphanumeric", TON_SHORT_CODE: "short_code"}.get(
            new[1], "number")
        return Decision.modify(changes, "; ".join(notes), country=country, sender_type=kind)

    @staticmethod
    def _classify_known(sender: str, policy: CountryPolicy) -> tuple[str, int, int]:
        digits = sender.removeprefix("+")
        if digits.isascii() and digits.isdigit():
            if len(digits) in policy.short_code_lengths:
                return digits, TON_SHORT_CODE, NPI_UNKNOWN
            return digits, TON_INTERNATIONAL, NPI_ISDN
        return sender, TON_ALPHANUMERIC, NPI_UNKNOWN

    def _normalise(self, message: Message, policy: CountryPolicy, context: Context,
                   notes: list[str]) -> tuple[str, int, int] | Decision:
        addr = message.source_addr
        digits = addr.removeprefix("+")
        numeric = digits.isascii() and digits.isdigit()
        if numeric and message.source_ton != TON_ALPHANUMERIC:
            if len(digits) in policy.short_code_lengths and not addr.startswith("+"):
                return digits, TON_SHORT_CODE, NPI_UNKNOWN
            number, why = parse_recipient(addr, message.source_ton, context.setting("region"))
            if number is None:
                return _refuse("invalid-sender", f"sender number refused: {why}")
            e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
            return e164[1:], TON_INTERNATIONAL, NPI_ISDN
        if not policy.alphanumeric:
            return _refuse("alphanumeric-sender", "alphanumeric sender IDs are not allowed "
                           "toward this country: send from a number")
        cleaned = transliterate(addr)
        if cleaned != addr:
            notes.append("characters other than letters and digits removed")
        if not cleaned:
            return _refuse("invalid-sender", "sender ID has no letter or digit")
        if cleaned.isdigit():
            if len(cleaned) in policy.short_code_lengths:
                return cleaned, TON_SHORT_CODE, NPI_UNKNOWN
            return _refuse("digits-only-sender", f"an alphanumeric sender ID of "
                           f"{len(cleaned)} digits only is not allowed (only short codes of "
                           f"{'/'.join(map(str, sorted(policy.short_code_lengths)))} digits)")
        if len(cleaned) > policy.max_length:
            notes.append(f"cut to {policy.max_length} characters")
            cleaned = cleaned[:policy.max_length]
        return cleaned, TON_ALPHANUMERIC, NPI_UNKNOWN
