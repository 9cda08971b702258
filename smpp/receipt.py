"""Delivery receipt text: format ours, parse everybody's, correlate message ids.

The de-facto format (SMPP 3.4 appendix B) carried in deliver_sm short_message:
``id:IIIIIIIIII sub:SSS dlvrd:DDD submit date:YYMMDDhhmm done date:YYMMDDhhmm stat:DDDDDDD
err:E text:...``. Parsing is lenient because SMSCs send many variants; it never raises.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

__all__ = [
    "STATE_TO_STAT",
    "STAT_TO_STATE",
    "Receipt",
    "format_receipt",
    "id_variants",
    "message_state",
    "normalize_stat",
    "parse_receipt",
]

STAT_TO_STATE: Final[dict[str, int]] = {
    "ENROUTE": 1,
    "DELIVRD": 2,
    "EXPIRED": 3,
    "DELETED": 4,
    "UNDELIV": 5,
    "ACCEPTD": 6,
    "UNKNOWN": 7,
    "REJECTD": 8,
}
STATE_TO_STAT: Final[dict[int, str]] = {v: k for k, v in STAT_TO_STATE.items()}

# Spellings seen in the wild for the canonical seven-letter words.
_STAT_ALIASES: Final[dict[str, str]] = {
    "DELIVERED": "DELIVRD",
    "DELIVRED": "DELIVRD",
    "UNDELIVERABLE": "UNDELIV",
    "UNDELIVERED": "UNDELIV",
    "UNDELIVRD": "UNDELIV",
    "REJECTED": "REJECTD",
    "REJECT": "REJECTD",
    "ACCEPTED": "ACCEPTD",
    "EXPIRE": "EXPIRED",
    "DELETE": "DELETED",
    "ENROUTED": "ENROUTE",
    "EN_ROUTE": "ENROUTE",
}
_MAX_TEXT: Final = 20


@dataclass(slots=True, kw_only=True)
class Receipt:
    """One delivery receipt; dates are UTC (parsed dates carry no zone: UTC is assumed)."""

    id: str
    sub: int = 1
    dlvrd: int = 0
    submit_date: datetime | None = None
    done_date: datetime | None = None
    stat: str
    err: str = "000"
    text: str = ""


def normalize_stat(word: str) -> str:
    """Canonical seven-letter stat for a word seen in a receipt (upper-cased if unknown).

    A bare message_state number ("2") is also understood.
    """
    w = word.strip().upper()
    if w.isdigit() and int(w) in STATE_TO_STAT:
        return STATE_TO_STAT[int(w)]
    return _STAT_ALIASES.get(w, w)


def message_state(stat: str) -> int:
    """SMPP message_state for a stat word; UNKNOWN (7) for words nobody defined."""
    return STAT_TO_STATE.get(normalize_stat(stat), STAT_TO_STATE["UNKNOWN"])


# --------------------------------------------------------------------------- format
def _ascii(value: str) -> str:
    return value.encode("ascii", "replace").decode("ascii")


# YYMMDDhhmm per UTC minute: receipts are formatted per message, strftime costs more than
# the rest of format_receipt, and receipts formatted together share their minutes.
_MINUTES: dict[tuple[int, int, int, int, int], str] = {}
_MINUTES_KEPT = 1024


def _date(value: datetime | None, name: str) -> str:
    if value is None:
        raise ValueError(f"receipt {name} is required to format a receipt")
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    key = (value.year, value.month, value.day, value.hour, value.minute)
    formatted = _MINUTES.get(key)
    if formatted is None:
        if len(_MINUTES) >= _MINUTES_KEPT:
            _MINUTES.clear()
        formatted = _MINUTES[key] = value.strftime("%y%m%d%H%M")
    return formatted


def format_receipt(r: Receipt) -> bytes:
    """The receipt as ASCII octets for short_message (naive dates are taken as UTC)."""
    text = " ".join(r.text[:_MAX_TEXT].splitlines()) if r.text else ""
    line = (
        f"id:{r.id} sub:{r.sub:03d} dlvrd:{r.dlvrd:03d}"
        f" submit date:{_date(r.submit_date, 'submit_date')}"
        f" done date:{_date(r.done_date, 'done_date')}"
        f" stat:{r.stat} err:{r.err.zfill(3)} text:{text}"
    )
    return _ascii(line).encode("ascii")


# --------------------------------------------------------------------------- parse
# "submit date", "submit_date", "submitdate", "Submit-Date" -> one key.
_DATE_KEY: Final = re.compile(r"(?i)(?<!\S)(submit|done)[ _\-]?date\s*:")
# Any "word:" at the start or after whitespace starts a key; its value runs to the next key.
_KEY: Final = re.compile(r"(?<!\S)([A-Za-z][A-Za-z0-9_]*)\s*:")
_TEXT_KEY: Final = re.compile(r"(?i)(?<!\S)text\s*:")
_DIGITS: Final = re.compile(r"\d+")
_WORD: Final = re.compile(r"[A-Za-z0-9_]+")


def _parse_date(value: str) -> datetime | None:
    """YYMMDDhhmm, YYMMDDhhmmss (years 2000-2099) or YYYYMMDDhhmmss; None otherwise."""
    words = value.split()
    digits = words[0] if words else ""
    if not (digits.isascii() and digits.isdigit()) or len(digits) not in (10, 12, 14):
        return None
    if len(digits) == 14:
        digits = digits[2:] if digits.startswith("20") else ""
    if not digits:
        return None
    yy, mo, dd, hh, mi = (int(digits[i : i + 2]) for i in range(0, 10, 2))
    ss = int(digits[10:12]) if len(digits) == 12 else 0
    try:
        return datetime(2000 + yy, mo, dd, hh, mi, ss, tzinfo=UTC)
    except ValueError:
        return None


def _parse_count(value: str, default: int) -> int:
    m = _DIGITS.match(value)
    return int(m.group()) if m and len(m.group()) <= 9 else default


def parse_receipt(data: bytes | str) -> Receipt | None:
    """Read a receipt from a deliver_sm body; None when it is not one (needs id and stat).

    Keys are case-insensitive, "submit date"/"submit_date"/"submitdate" are one key, dates
    may have seconds, unknown keys are ignored, and ``text:`` takes the rest of the line
    (so a "stat:" inside the text never overrides the real one).
    """
    if isinstance(data, bytes | bytearray):
        s = bytes(data).decode("latin-1")
    elif isinstance(data, str):
        s = data
    else:
        return None
    s = s.replace("\x00", " ").strip()
    if not s:
        return None
    text = ""
    tm = _TEXT_KEY.search(s)
    if tm is not None:
        text = s[tm.end() :].strip()
        s = s[: tm.start()]
    s = _DATE_KEY.sub(lambda m: f" {m.group(1).lower()}_date:", s)
    fields: dict[str, str] = {}
    keys = list(_KEY.finditer(s))
    for k, match in enumerate(keys):
        end = keys[k + 1].start() if k + 1 < len(keys) else len(s)
        name = match.group(1).lower()
        fields.setdefault(name, s[match.end() : end].strip())
    msg_id = fields.get("id", "").split()
    stat = _WORD.findall(fields.get("stat", ""))
    if not msg_id or not stat or not _WORD.search(msg_id[0]):
        return None
    err = fields.get("err", "").split()
    return Receipt(
        id=msg_id[0],
        sub=_parse_count(fields.get("sub", ""), 1),
        dlvrd=_parse_count(fields.get("dlvrd", ""), 0),
        submit_date=_parse_date(fields.get("submit_date", "")),
        done_date=_parse_date(fields.get("done_date", "")),
        stat=normalize_stat(stat[0]),
        err=err[0] if err else "000",
        text=text,
    )


# --------------------------------------------------------------------------- correlation
_MAX_ID_FOR_CONVERSION: Final = 64
_HEX: Final = re.compile(r"[0-9A-Fa-f]+")
_DEC: Final = re.compile(r"[0-9]+")


def id_variants(smsc_id: str) -> list[str]:
    """Spellings under which one operator message id may come back in a receipt.

    As given, lower-cased, upper-cased, without leading zeros; when decimal, its hex form
    (lower and upper; unpadded, and zero-padded to the original width when the original was
    zero-padded); when hex (which includes decimal-looking ids), its decimal form (likewise,
    plus zero-padded to the 10 digits of the receipt format). Deterministic order, no duplicates.
    """
    given = smsc_id.strip("\x00 \t\r\n")
    if not given:
        return []
    out: list[str] = [given, given.lower(), given.upper()]
    # Keep the original width only when the id was zero-padded to begin with.
    width = len(given) if given.startswith("0") else 0
    if len(given) <= _MAX_ID_FOR_CONVERSION and _HEX.fullmatch(given):
        out.append(given.lstrip("0") or "0")
        if _DEC.fullmatch(given):
            n = int(given, 10)
            for h in (format(n, "x"), format(n, "X")):
                out.extend((h, h.rjust(width, "0")))
        d = str(int(given, 16))
        out.extend((d, d.rjust(width, "0"), d.rjust(10, "0")))
    return list(dict.fromkeys(out))
