"""Per-connector circuit breakers: stop sending to a connector that keeps failing, probe it later.

CLOSED -> OPEN after `failures` consecutive failures; OPEN -> HALF_OPEN once `cooldown` has
passed; HALF_OPEN admits at most `probes` attempts at a time, closes on a success and opens
again on a failure. Time is passed in (no clock reads); every change is told to `on_change`.
Outcomes may carry their attempt's start time: attempts already under way when a failure was
counted (e.g. every submit on a connection that dropped) add no further failure.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass


class BreakerState(enum.StrEnum):
    CLOSED = "closed"  # traffic flows; consecutive failures are counted
    OPEN = "open"  # no traffic until the cool-down has passed
    HALF_OPEN = "half_open"  # a few probes may go; their outcome closes or re-opens it


class BreakerEvent(enum.StrEnum):
    TRIPPED = "tripped"  # the consecutive failures reached the threshold
    COOLED = "cooled"  # the cool-down has passed
    PROBE_OK = "probe_ok"  # a success while half-open
    PROBE_FAILED = "probe_failed"  # a failure while half-open


# Every change of state, and only these: (state, event) -> next state.
TRANSITIONS: dict[tuple[BreakerState, BreakerEvent], BreakerState] = {
    (BreakerState.CLOSED, BreakerEvent.TRIPPED): BreakerState.OPEN,
    (BreakerState.OPEN, BreakerEvent.COOLED): BreakerState.HALF_OPEN,
    (BreakerState.HALF_OPEN, BreakerEvent.PROBE_OK): BreakerState.CLOSED,
    (BreakerState.HALF_OPEN, BreakerEvent.PROBE_FAILED): BreakerState.OPEN,
}


@dataclass(frozen=True, slots=True)
class BreakerOptions:
    failures: int = 5  # consecutive failures that open the breaker
    cooldown: float = 30.0  # seconds open before probing
    probes: int = 1  # attempts admitted at a time while half-open

    def __post_init__(self) -> None:
        if isinstance(self.failures, bool) or self.failures < 1:
            raise ValueError(f"breaker failures: expected an integer >= 1, got {self.failures!r}")
        if not (math.isfinite(self.cooldown) and self.cooldown > 0):
            raise ValueError(f"breaker cooldown: expected a positive duration, got "
                             f"{self.cooldown!r}")
        if isinstance(self.probes, bool) or self.probes < 1:
            raise ValueError(f"breaker probes: expected an integer >= 1, got {self.probes!r}")


# (connector, old state, new state, now): for metrics and logs
OnChange = Callable[[str, BreakerState, BreakerState, float], None]


def _ignore(_name: str, _old: BreakerState, _new: BreakerState, _now: float) -> None:
    return None


class CircuitBreaker:
    """The breaker of one connector. The dispatcher asks `allow(now)` before an attempt and
    reports its outcome with `success(now)` or `failure(now)` (or `release(now)` when the attempt
    ended with no verdict on the connector, e.g. cancelled, so that its probe slot frees).

    `started`, when given, is when the reported attempt began. A failure counts only if its
    attempt began at or after the last failure counted: N submits on the wire when a
    connection drops are one failure, not N. While half-open, only the outcomes of attempts
    begun since it became half-open (its probes) close or re-open it."""

    def __init__(self, name: str, options: BreakerOptions = BreakerOptions(),
                 on_change: OnChange | None = None) -> None:
        self.name = name
        self.options = options
        self.on_change: OnChange = on_change or _ignore
        self._state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.opened_at: float | None = None
        self.changed_at: float | None = None  # when the current state began (None: never)
        self.failed_at: float | None = None  # when the last failure counted was reported
        self.probes_out = 0  # probes admitted while half-open, outcome not known yet

    def adopt(self, other: CircuitBreaker) -> None:
        """Take over the state of the breaker this one replaces (a reload with the same
        options): an open breaker stays open, its cool-down and counts stand."""
        self._state, self.consecutive_failures = other._state, other.consecutive_failures
        self.opened_at, self.changed_at = other.opened_at, other.changed_at
        self.failed_at, self.probes_out = other.failed_at, other.probes_out

    def _fire(self, event: BreakerEvent, now: float) -> None:
        old = self._state
        new = TRANSITIONS[(old, event)]  # a missing transition is a bug: KeyError
        self._state = new
        if new is BreakerState.OPEN:
            self.opened_at = now
        self.changed_at = now
        self.consecutive_failures = 0
        self.probes_out = 0
        self.on_change(self.name, old, new, now)

    def state(self, now: float) -> BreakerState:
        """The state at `now` (an open breaker whose cool-down has passed becomes half-open)."""
        if (self._state is BreakerState.OPEN and self.opened_at is not None
                and now >= self.opened_at + self.options.cooldown):
            self._fire(BreakerEvent.COOLED, now)
        return self._state

    def available(self, now: float) -> bool:
        """Whether an attempt would be admitted now (takes no probe slot): for routing."""
        state = self.state(now)
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN:
            return self.probes_out < self.options.probes
        return False

    def allow(self, now: float) -> bool:
        """Admit an attempt now? While half-open an admitted attempt is a probe and takes a slot
        until its outcome is reported."""
        if not self.available(now):
            return False
        if self._state is BreakerState.HALF_OPEN:
            self.probes_out += 1
        return True

    def _before_probing(self, started: float | None) -> bool:
        """Whether an attempt begun at `started` is older than the current half-open spell."""
        return started is not None and self.changed_at is not None \
            and started < self.changed_at

    def success(self, now: float, started: float | None = None) -> None:
        state = self.state(now)
        if state is BreakerState.CLOSED:
            self.consecutive_failures = 0
        elif state is BreakerState.HALF_OPEN and not self._before_probing(started):
            self._fire(BreakerEvent.PROBE_OK, now)
        # OPEN: the outcome of an attempt admitted before it opened; the cool-down stands

    def failure(self, now: float, started: float | None = None) -> None:
        state = self.state(now)
        if state is BreakerState.CLOSED:
            if started is not None and self.failed_at is not None and started < self.failed_at:
                return  # under way when the last failure was counted: the same trouble
            self.failed_at = now
            self.consecutive_failures += 1
            if self.consecutive_failures >= self.options.failures:
                self._fire(BreakerEvent.TRIPPED, now)
        elif state is BreakerState.HALF_OPEN and not self._before_probing(started):
            self._fire(BreakerEvent.PROBE_FAILED, now)
        # OPEN: already open; an older attempt's failure does not extend the cool-down

    def release(self, now: float) -> None:
        """An admitted attempt ended with no verdict on the connector: free its probe slot."""
        if self.state(now) is BreakerState.HALF_OPEN and self.probes_out > 0:
            self.probes_out -= 1


class Breakers:
    """One breaker per connector, with per-connector options over the defaults."""

    def __init__(self, names: Iterable[str], default: BreakerOptions = BreakerOptions(),
                 overrides: Mapping[str, BreakerOptions] | None = None,
                 on_change: OnChange | None = None) -> None:
        overrides = overrides or {}
        unknown = sorted(set(overrides) - set(names := tuple(names)))
        if unknown:
            raise ValueError(f"breaker options for unknown connectors: {', '.join(unknown)}")
        self._on_change = on_change or _ignore
        # the connectors whose breaker is not closed: when none, routing need not ask
        self.not_closed: set[str] = set()
        self.by_name = {n: CircuitBreaker(n, overrides.get(n, default), self._changed)
                        for n in names}

    def _changed(self, name: str, old: BreakerState, new: BreakerState, now: float) -> None:
        if new is BreakerState.CLOSED:
            self.not_closed.discard(name)
        else:
            self.not_closed.add(name)
        self._on_change(name, old, new, now)

    def __getitem__(self, name: str) -> CircuitBreaker:
        return self.by_name[name]

    def adopt(self, other: Breakers) -> None:
        """Keep the state of `other`'s breakers (the running ones a reload replaces) for the
        connectors whose options did not change; the others start closed."""
        for name, breaker in self.by_name.items():
            old = other.by_name.get(name)
            if old is not None and old.options == breaker.options:
                breaker.adopt(old)
                if breaker._state is not BreakerState.CLOSED:
                    self.not_closed.add(name)

    def available(self, name: str, now: float) -> bool:
        """False only for a known connector whose breaker refuses attempts now."""
        if name not in self.not_closed:
            return True
        return self.by_name[name].available(now)
