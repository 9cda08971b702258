"""SMPP 3.4 time fields (schedule_delivery_time, validity_period) to and from UNIX time.

Absolute: ``YYMMDDhhmmsstnnp`` (t tenths, nn quarter hours from UTC, p '+'/'-');
relative: ``YYMMDDhhmmss000R`` (a year is 365 days, a month 30 days). Pure functions.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Final

__all__ = ["SmppTimeError", "format_absolute", "format_relative", "parse_smpp_time"]

_LEN: Final = 16
_MAX_QUARTERS: Final = 48
_DAY: Final = 86400
_YEAR: Final = 365 * _DAY
_MONTH: Final = 30 * _DAY
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


class SmppTimeError(ValueError):
    """An SMPP time field is malformed or cannot be represented."""


def parse_smpp_time(value: str, now: float) -> float | None:
    """UNIX time (UTC) a time field designates; None for the empty field ("now"/default).

    ``now`` (UNIX seconds) anchors relative times. Raises :class:`SmppTimeError` on a wrong
    length, non-digits, a bad sign character, an impossible date or an offset over 48
    quarter hours.
    """
    if value == "":
        return None
    if len(value) != _LEN:
        raise SmppTimeError(f"time field {value!r} must be {_LEN} characters, not {len(value)}")
    digits, p = value[:15], value[15]
    if not (digits.isascii() and digits.isdigit()):
        raise SmppTimeError(f"time field {value!r}: the first 15 characters must be digits")
    yy, mo, dd, hh, mi, ss = (int(digits[i : i + 2]) for i in range(0, 12, 2))
    if p == "R":
        seconds = yy * _YEAR + mo * _MONTH + dd * _DAY + hh * 3600 + mi * 60 + ss
        return now + seconds
    if p not in "+-":
        raise SmppTimeError(f"time field {value!r}: last character must be '+', '-' or 'R'")
    tenths = int(digits[12])
    quarters = int(digits[13:15])
    if quarters > _MAX_QUARTERS:
        raise SmppTimeError(
            f"time field {value!r}: UTC offset of {quarters} quarter hours exceeds {_MAX_QUARTERS}"
        )
    try:
        local = datetime(2000 + yy, mo, dd, hh, mi, ss, tzinfo=UTC)
    except ValueError as exc:
        raise SmppTimeError(f"time field {value!r}: impossible date ({exc})") from None
    offset = timedelta(minutes=15 * quarters)
    utc = local - offset if p == "+" else local + offset
    return (utc - _EPOCH).total_seconds() + tenths / 10


def format_absolute(ts: float) -> str:
    """Absolute time field for a UNIX timestamp, in UTC (``...t00+``), tenths rounded down."""
    if not math.isfinite(ts):
        raise SmppTimeError(f"timestamp {ts!r} is not finite")
    # round(.., 6) first so that 12.3 (really 12.2999..) still gives tenth 3
    whole, tenths = divmod(math.floor(round(ts * 10, 6)), 10)
    try:
        dt = _EPOCH + timedelta(seconds=whole)
    except OverflowError:
        raise SmppTimeError(f"timestamp {ts!r} out of range") from None
    if not 2000 <= dt.year <= 2099:
        raise SmppTimeError(f"timestamp {ts!r} is outside the years 2000-2099 SMPP can express")
    return dt.strftime("%y%m%d%H%M%S") + f"{tenths}00+"


def format_relative(seconds: float) -> str:
    """Relative time field for a duration; negatives clamp to 0, fractions round down."""
    if math.isnan(seconds) or seconds == math.inf:
        raise SmppTimeError(f"duration {seconds!r} cannot be expressed")
    total = 0 if seconds <= 0 else math.floor(seconds)
    days, rest = divmod(total, _DAY)
    hh, rest = divmod(rest, 3600)
    mi, ss = divmod(rest, 60)
    yy, days = divmod(days, 365)
    mo, dd = divmod(days, 30)
    if yy > 99:
        raise SmppTimeError(f"duration of {seconds} s exceeds 99 years")
    return f"{yy:02d}{mo:02d}{dd:02d}{hh:02d}{mi:02d}{ss:02d}000R"
