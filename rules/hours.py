"""Marketing hours: marketing to a country is sent only in its allowed hours (France: Monday
to Saturday 08:00-20:00 Europe/Paris, never on public holidays, from the `holidays` package);
outside them it is deferred to the next allowed time. Alerts are never deferred.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays

from gateway.model import Message
from rules.core import Context, Decision
from rules.mention import destination_country

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"([01][0-9]|2[0-4]):([0-5][0-9])")
DEFAULT_WINDOWS: dict[str, dict[str, Any]] = {
    "FR": {"days": list(DAYS[:6]), "start": "08:00", "end": "20:00",
           "timezone": "Europe/Paris", "holidays": True},
}
_SEARCH_DAYS = 370  # a window that never opens within a year is a configuration error


@lru_cache(maxsize=64)
def _holidays(country: str, year: int) -> holidays.HolidayBase:
    return holidays.country_holidays(country, years=year)


@dataclass(frozen=True, slots=True)
class Window:
    country: str
    days: frozenset[int]  # 0 = Monday
    start: dt.time
    end: dt.time | None  # None: midnight (24:00)
    zone: ZoneInfo
    holidays: bool  # closed on the country's public holidays

    def describe(self) -> str:
        days = ",".join(DAYS[d].capitalize() for d in sorted(self.days))
        end = "24:00" if self.end is None else f"{self.end:%H:%M}"
        closed = ", not on public holidays" if self.holidays else ""
        return f"{days} {self.start:%H:%M}-{end} {self.zone.key}{closed}"

    def _open_day(self, day: dt.date) -> bool:
        if day.weekday() not in self.days:
            return False
        return not (self.holidays and day in _holidays(self.country, day.year))

    def next_open(self, at: float) -> float | None:
        """``at`` itself when it is inside the window, else the next opening (UNIX time)."""
        local = dt.datetime.fromtimestamp(at, self.zone)
        for offset in range(_SEARCH_DAYS):
            day = local.date() + dt.timedelta(days=offset)
            if not self._open_day(day):
                continue
            opens = dt.datetime.combine(day, self.start, self.zone)
            closes = (dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), self.zone)
                      if self.end is None else dt.datetime.combine(day, self.end, self.zone))
            if offset == 0 and opens <= local < closes:
                return at
            if local < opens:
                return opens.timestamp()
        return None


def _time(where: str, value: object) -> dt.time | None:
    m = _HHMM.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f'{where}: expected a time "HH:MM", got {value!r}')
    if m.group(1) == "24":
        if m.group(2) != "00":
            raise ValueError(f'{where}: expected a time "HH:MM", got {value!r}')
        return None
    return dt.time(int(m.group(1)), int(m.group(2)))


def parse_window(country: str, data: object) -> Window:
    where = f"hours.{country}"
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a table, got {data!r}")
    unknown = set(data) - {"days", "start", "end", "timezone", "holidays"}
    if unknown:
        raise ValueError(f"{where}.{sorted(unknown)[0]}: unknown key (expected days, start, "
                         "end, timezone, holidays)")
    days = data.get("days", list(DAYS))
    if not isinstance(days, list) or not days or not all(d in DAYS for d in days):
        raise ValueError(f"{where}.days: expected an array of {', '.join(DAYS)}, got {days!r}")
    start = _time(f"{where}.start", data.get("start", "00:00")) or dt.time(0)
    end = _time(f"{where}.end", data.get("end", "24:00"))
    if end is not None and end <= start:
        raise ValueError(f"{where}.end: expected a time after start")
    try:
        zone = ZoneInfo(str(data.get("timezone", "UTC")))
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{where}.timezone: expected an IANA time zone such as "
                         f"\"Europe/Paris\", got {data.get('timezone')!r}") from None
    closed = data.get("holidays", True)
    if not isinstance(closed, bool):
        raise ValueError(f"{where}.holidays: expected true or false, got {closed!r}")
    if closed and country != "default":
        try:
            _holidays(country, 2026)
        except NotImplementedError:
            raise ValueError(f"{where}.holidays: the holidays package has no calendar for "
                             f"{country}: set holidays = false") from None
    return Window(country, frozenset(DAYS.index(d) for d in days), start, end, zone,
                  closed and country != "default")


class HoursRule:
    """Built-in rule ``hours``. Options: one table per country code (or "default"):
    ``days`` (["mon", ...]), ``start`` / ``end`` ("HH:MM", end "24:00" for midnight),
    ``timezone`` (IANA), ``holidays`` (closed on the country's public holidays, default
    true). Without options: France Mon-Sat 08:00-20:00 Europe/Paris, holidays closed."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        tables = options or DEFAULT_WINDOWS
        self.windows = {country: parse_window(country, data) for country, data in tables.items()}

    def apply(self, message: Message, context: Context) -> Decision:
        if message.traffic != "marketing":
            return Decision.accept()
        country = destination_country(message) or "default"
        window = self.windows.get(country, self.windows.get("default"))
        if window is None:
            return Decision.accept()
        at = max(message.not_before, context.now)
        opens = window.next_open(at)
        if opens is None:
            return Decision.reject("marketing-hours", f"marketing toward {country} has no "
                                   f"allowed time within a year ({window.describe()})")
        if opens == at:
            return Decision.accept()
        local = dt.datetime.fromtimestamp(opens, window.zone)
        return Decision.defer(opens, "marketing-hours",
                              f"marketing toward {country} is sent {window.describe()}: "
                              f"deferred to {local:%Y-%m-%d %H:%M} {window.zone.key}",
                              country=country)
