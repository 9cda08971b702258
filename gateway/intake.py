"""Intake: turn an upstream submit (submit_sm, data_sm, submit_multi, or an HTTP message's
fields) into stored Messages.

Pure validation, no I/O: each check that fails maps to the SMPP command_status the upstream
gets, with a detail for the logs (the field and the problem, never the number or the text).
Validity and scheduling are resolved to absolute times here.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.model import Message, State, new_message_id
from smpp.constants import Status, Tag
from smpp.pdu import DataSm, ReplaceSm, SmeDest, SubmitMulti, SubmitSm
from smpp.smpptime import SmppTimeError, parse_smpp_time
from smpp.text import TextEncodingError, encode_text, split

MAX_BODY_OCTETS = 255 * 134  # what fits in 255 concatenated parts
_PART_FLOOR = 128  # octets every concatenated part holds at least, whatever the alphabet
_UDHI_PART = 140  # octets of one SMS, user data header included
_VALID_TON = frozenset(range(7))
_VALID_NPI = frozenset({0, 1, 3, 4, 6, 8, 9, 10, 14, 18})
_ALPHANUMERIC_TON = 5
_MESSAGE_TYPE_MASK = 0x3C  # esm_class bits 2-5: receipts and acknowledgements, SMSC -> ESME only
_ESM_UDHI = 0x40
_DC_UCS2 = 0x08


class IntakeError(Exception):
    """A submit we refuse: status is the command_status for the response."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True, slots=True)
class IntakePolicy:
    validity: float  # default validity in seconds (24 h unless configured)
    max_validity: float | None = None  # account cap
    max_parts: int = 255  # most SMS parts one message may need (the account's max_parts)


def _check_parts(body: bytes, data_coding: int, esm_class: int, policy: IntakePolicy) -> None:
    """Refuse a message that needs more SMS parts than the account allows, counted as the
    usual concatenation with an 8-bit reference would cut it. A message the upstream already
    segmented (UDHI set) is sent as it is: one part per 140 octets it carries."""
    if len(body) <= _PART_FLOOR * policy.max_parts:
        return
    if esm_class & _ESM_UDHI:
        parts = -(-len(body) // _UDHI_PART)
    else:
        try:
            parts = len(split(body, data_coding))
        except TextEncodingError as exc:
            raise IntakeError(Status.ESME_RINVMSGLEN,
                              f"message cannot be split: {exc}") from None
    if parts > policy.max_parts:
        raise IntakeError(Status.ESME_RINVMSGLEN,
                          f"message needs {parts} SMS parts: the account allows {policy.max_parts}"
                          " (max_parts)")


def _check_address(addr: str, ton: int, npi: int, *, source: bool) -> None:
    bad_addr = Status.ESME_RINVSRCADR if source else Status.ESME_RINVDSTADR
    bad_ton = Status.ESME_RINVSRCTON if source else Status.ESME_RINVDSTTON
    bad_npi = Status.ESME_RINVSRCNPI if source else Status.ESME_RINVDSTNPI
    which = "source" if source else "destination"
    if ton not in _VALID_TON:
        raise IntakeError(bad_ton, f"{which} TON {ton} is not a valid type of number")
    if npi not in _VALID_NPI:
        raise IntakeError(bad_npi, f"{which} NPI {npi} is not a valid numbering plan")
    if source and ton == _ALPHANUMERIC_TON:
        if not addr or len(addr) > 11 or not addr.isprintable():
            problem = (f"has {len(addr)} characters" if addr.isprintable()
                       else "has an unprintable character")
            raise IntakeError(bad_addr, f"alphanumeric source address {problem}: expected 1 to "
                                        "11 printable characters")
        return
    if source and not addr:
        return  # empty source: the operator connection's default applies
    digits = addr[1:] if addr.startswith("+") else addr
    if not digits or not digits.isdigit() or not digits.isascii() or len(digits) > 20:
        raise IntakeError(bad_addr, f"{which} address {_address_problem(addr)}: expected 1 "
                                    "to 20 digits, optionally after a '+'")


def _address_problem(addr: str) -> str:
    """What is wrong with a numeric address, without quoting it (it is a phone number)."""
    skip = 1 if addr.startswith("+") else 0
    if len(addr) == skip:
        return "is empty"
    for position, char in enumerate(addr[skip:], start=1 + skip):
        if not "0" <= char <= "9":
            return f"has a character other than a digit at position {position}"
    return f"has {len(addr) - skip} digits"


def _resolve_times(
    validity_period: str, schedule_delivery_time: str, now: float, policy: IntakePolicy
) -> tuple[float, float]:
    try:
        asked = parse_smpp_time(validity_period, now)
    except SmppTimeError as exc:
        raise IntakeError(Status.ESME_RINVEXPIRY, f"validity_period: {exc}") from exc
    try:
        scheduled = parse_smpp_time(schedule_delivery_time, now)
    except SmppTimeError as exc:
        raise IntakeError(Status.ESME_RINVSCHED, f"schedule_delivery_time: {exc}") from exc
    return _bound_times(asked, scheduled, now, policy, "validity_period", "schedule_delivery_time")


def _bound_times(asked: float | None, scheduled: float | None, now: float, policy: IntakePolicy,
                 validity_name: str, schedule_name: str) -> tuple[float, float]:
    """(expires_at, not_before) from the asked expiry and schedule (absolute times, None when
    not asked): the expiry is capped by the configured validity (and the account's cap)."""
    limit = policy.validity
    if policy.max_validity is not None:
        limit = min(limit, policy.max_validity)
    expires_at = now + limit
    if asked is not None:
        if asked <= now:
            raise IntakeError(Status.ESME_RINVEXPIRY, f"{validity_name} is in the past")
        expires_at = min(expires_at, asked)
    not_before = now if scheduled is None else max(now, scheduled)
    if not_before >= expires_at:
        raise IntakeError(Status.ESME_RINVSCHED, f"{schedule_name} is after the validity")
    return expires_at, not_before


def _check_common(esm_class: int, registered_delivery: int) -> None:
    if esm_class & _MESSAGE_TYPE_MASK:
        raise IntakeError(Status.ESME_RINVESMCLASS,
                          f"esm_class 0x{esm_class:02X}: receipts are not accepted from an ESME")
    if registered_delivery & 0x03 == 0x03:
        raise IntakeError(Status.ESME_RINVREGDLVFLG,
                          f"registered_delivery 0x{registered_delivery:02X}: value 3 is reserved")


def _body(short_message: bytes, tlvs: dict[int, bytes]) -> bytes:
    payload = tlvs.get(Tag.MESSAGE_PAYLOAD)
    if payload is not None and short_message:
        raise IntakeError(Status.ESME_RINVOPTPARAMVAL,
                          "short_message and message_payload are both set")
    body = short_message if payload is None else payload
    if len(body) > MAX_BODY_OCTETS:
        raise IntakeError(Status.ESME_RINVMSGLEN,
                          f"message of {len(body)} octets exceeds {MAX_BODY_OCTETS}")
    return body


def _check_ucs2(body: bytes, data_coding: int, esm_class: int) -> None:
    if data_coding == _DC_UCS2 and not esm_class & _ESM_UDHI and len(body) % 2:
        raise IntakeError(Status.ESME_RINVMSGLEN,
                          f"UCS-2 message of {len(body)} octets: must be an even number")


def _message(
    account: str, pdu: SubmitSm | DataSm | SubmitMulti, dest_ton: int, dest_npi: int,
    dest_addr: str, body: bytes, now: float, expires_at: float, not_before: float,
) -> Message:
    scheduled = not_before > now
    return Message(
        id=new_message_id(), account=account,
        source_addr=pdu.source_addr, source_ton=pdu.source_addr_ton, source_npi=pdu.source_addr_npi,
        dest_addr=dest_addr, dest_ton=dest_ton, dest_npi=dest_npi,
        data_coding=pdu.data_coding, esm_class=pdu.esm_class,
        protocol_id=getattr(pdu, "protocol_id", 0), priority=getattr(pdu, "priority_flag", 0),
        registered_delivery=pdu.registered_delivery, body=body,
        created_at=now, expires_at=expires_at, not_before=not_before,
        state=State.SCHEDULED if scheduled else State.QUEUED, next_attempt_at=not_before,
        service_type=pdu.service_type,
    )


def accept_submit(account: str, pdu: SubmitSm | DataSm, now: float,
                  policy: IntakePolicy) -> Message:
    """Validate a submit_sm or data_sm; return the Message to store or raise IntakeError."""
    _check_address(pdu.source_addr, pdu.source_addr_ton, pdu.source_addr_npi, source=True)
    _check_address(pdu.destination_addr, pdu.dest_addr_ton, pdu.dest_addr_npi, source=False)
    _check_common(pdu.esm_class, pdu.registered_delivery)
    if isinstance(pdu, SubmitSm):
        if pdu.priority_flag > 3:
            raise IntakeError(Status.ESME_RINVPRTFLG, f"priority_flag {pdu.priority_flag} > 3")
        expires_at, not_before = _resolve_times(
            pdu.validity_period, pdu.schedule_delivery_time, now, policy)
        body = _body(pdu.short_message, pdu.tlvs)
    else:
        expires_at, not_before = now + policy.validity, now
        if policy.max_validity is not None:
            expires_at = min(expires_at, now + policy.max_validity)
        body = _body(b"", pdu.tlvs)
    if pdu.esm_class & _ESM_UDHI and (not body or body[0] + 1 > len(body)):
        raise IntakeError(Status.ESME_RINVESMCLASS, "UDHI set but no valid user data header")
    _check_ucs2(body, pdu.data_coding, pdu.esm_class)
    _check_parts(body, pdu.data_coding, pdu.esm_class, policy)
    return _message(account, pdu, pdu.dest_addr_ton, pdu.dest_addr_npi, pdu.destination_addr,
                    body, now, expires_at, not_before)


def accept_text(account: str, source_addr: str, dest_addr: str, text: str, now: float,
                policy: IntakePolicy, *, expires: float | None = None,
                scheduled: float | None = None) -> Message:
    """Validate a message given as text (the HTTP API): the same address, validity and size
    checks as a submit_sm. A source of digits (optionally after '+') is an international
    number, anything else alphanumeric; the destination is an international number (a
    leading '+' is dropped). The text is stored as GSM 03.38 when every character has a code
    there, else as UCS-2. ``expires`` / ``scheduled``: absolute times asked, or None."""
    digits = source_addr.removeprefix("+")
    if digits.isascii() and digits.isdigit():
        source_addr, source_ton, source_npi = digits, 1, 1
    else:
        source_ton, source_npi = _ALPHANUMERIC_TON, 0
    _check_address(source_addr, source_ton, source_npi, source=True)
    _check_address(dest_addr, 1, 1, source=False)
    expires_at, not_before = _bound_times(expires, scheduled, now, policy, "validity", "send_at")
    try:
        data_coding, body = encode_text(text)
    except TextEncodingError as exc:
        raise IntakeError(Status.ESME_RINVMSGLEN, f"text cannot be encoded: {exc}") from None
    if len(body) > MAX_BODY_OCTETS:
        raise IntakeError(Status.ESME_RINVMSGLEN,
                          f"text of {len(body)} octets encoded exceeds {MAX_BODY_OCTETS}")
    _check_parts(body, data_coding, 0, policy)
    return Message(
        id=new_message_id(), account=account,
        source_addr=source_addr, source_ton=source_ton, source_npi=source_npi,
        dest_addr=dest_addr.removeprefix("+"), dest_ton=1, dest_npi=1,
        data_coding=data_coding, esm_class=0, protocol_id=0, priority=0,
        registered_delivery=1,  # an HTTP message always owes its final receipt
        body=body, created_at=now, expires_at=expires_at, not_before=not_before,
        state=State.SCHEDULED if not_before > now else State.QUEUED, next_attempt_at=not_before,
    )


@dataclass(frozen=True, slots=True)
class Replacement:
    """What a replace_sm changes in a message not sent yet (see accept_replace)."""

    body: bytes
    registered_delivery: int
    expires_at: float
    not_before: float


def accept_replace(msg: Message, pdu: ReplaceSm, now: float,
                   policy: IntakePolicy) -> Replacement:
    """Validate a replace_sm of a stored message: its new text gets a submit's checks (in the
    message's own data_coding and esm_class: length, parts, UCS-2 parity, user data header),
    its registered_delivery is taken as given, and an empty schedule_delivery_time or
    validity_period keeps the message's own. A new validity is capped like the original's,
    counted from the message's acceptance (relative times count from now, as for a submit)."""
    _check_common(msg.esm_class, pdu.registered_delivery)
    if pdu.sm_default_msg_id:
        raise IntakeError(Status.ESME_RINVDFTMSGID,
                          f"sm_default_msg_id {pdu.sm_default_msg_id}: this gateway keeps no "
                          "predefined messages (send 0 and the text)")
    body = _body(pdu.short_message, {})
    if msg.esm_class & _ESM_UDHI and (not body or body[0] + 1 > len(body)):
        raise IntakeError(Status.ESME_RINVESMCLASS,
                          "the message has UDHI set but the new text has no valid user data "
                          "header")
    _check_ucs2(body, msg.data_coding, msg.esm_class)
    _check_parts(body, msg.data_coding, msg.esm_class, policy)
    try:
        asked = parse_smpp_time(pdu.validity_period, now)
    except SmppTimeError as exc:
        raise IntakeError(Status.ESME_RINVEXPIRY, f"validity_period: {exc}") from exc
    try:
        scheduled = parse_smpp_time(pdu.schedule_delivery_time, now)
    except SmppTimeError as exc:
        raise IntakeError(Status.ESME_RINVSCHED, f"schedule_delivery_time: {exc}") from exc
    expires_at = msg.expires_at
    if asked is not None:
        if asked <= now:
            raise IntakeError(Status.ESME_RINVEXPIRY, "validity_period is in the past")
        limit = policy.validity if policy.max_validity is None else min(policy.validity,
                                                                         policy.max_validity)
        expires_at = min(asked, msg.created_at + limit)
    not_before = msg.not_before if scheduled is None else max(now, scheduled)
    if not_before >= expires_at:
        raise IntakeError(Status.ESME_RINVSCHED, "schedule_delivery_time is after the validity")
    return Replacement(body, pdu.registered_delivery, expires_at, not_before)


@dataclass(frozen=True, slots=True)
class MultiResult:
    messages: list[Message]
    unsuccess: list[tuple[int, int, str, int]]  # (ton, npi, addr, status) refused destinations


def accept_multi(account: str, pdu: SubmitMulti, now: float, policy: IntakePolicy) -> MultiResult:
    """Validate a submit_multi: one Message per distinct destination (duplicates sent once)."""
    _check_address(pdu.source_addr, pdu.source_addr_ton, pdu.source_addr_npi, source=True)
    _check_common(pdu.esm_class, pdu.registered_delivery)
    if not 1 <= len(pdu.dests) <= 255:
        raise IntakeError(Status.ESME_RINVNUMDESTS, f"{len(pdu.dests)} destinations (1 to 255)")
    if pdu.priority_flag > 3:
        raise IntakeError(Status.ESME_RINVPRTFLG, f"priority_flag {pdu.priority_flag} > 3")
    expires_at, not_before = _resolve_times(
        pdu.validity_period, pdu.schedule_delivery_time, now, policy)
    body = _body(pdu.short_message, pdu.tlvs)
    _check_ucs2(body, pdu.data_coding, pdu.esm_class)
    _check_parts(body, pdu.data_coding, pdu.esm_class, policy)
    messages: list[Message] = []
    unsuccess: list[tuple[int, int, str, int]] = []
    seen: set[str] = set()
    for dest in pdu.dests:
        if not isinstance(dest, SmeDest):
            unsuccess.append((0, 0, dest.name, Status.ESME_RINVDLNAME))
            continue
        try:
            _check_address(dest.addr, dest.ton, dest.npi, source=False)
        except IntakeError as exc:
            unsuccess.append((dest.ton, dest.npi, dest.addr, exc.status))
            continue
        key = dest.addr.lstrip("+")
        if key in seen:
            continue
        seen.add(key)
        messages.append(_message(account, pdu, dest.ton, dest.npi, dest.addr, body, now,
                                 expires_at, not_before))
    if not messages:
        raise IntakeError(Status.ESME_RINVDSTADR, "no valid destination in submit_multi")
    # The upstream learns one id (the first message's); the others share it as a prefix, so a
    # receipt for the n-th destination carries "<id>:<n>" and stays attributable.
    base = messages[0].id
    for n, msg in enumerate(messages[1:], start=2):
        msg.id = f"{base}:{n}"
    return MultiResult(messages, unsuccess)
