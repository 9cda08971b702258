"""Throughput limits per sender: a token bucket per (sender, connector or any connector).

A long number may be allowed 1 message/s while its SMSC takes 100/s. `delay_for` says how long
a message of that sender must wait before going through that connector (0: go now, and the
token is taken). Time is passed in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from routing.core import normalise_digits


def sender_key(sender: str) -> str:
    """A sender as limits compare it: a number without '+' or international '00'; an
    alphanumeric sender as written (case kept: operators treat it as written)."""
    text = sender.strip()
    digits = normalise_digits(text)
    return digits if digits.isdigit() else text


@dataclass(frozen=True, slots=True)
class SenderLimit:
    """At most `rate` messages/s from `sender`, `burst` at once after a quiet spell; through
    `connector` only, or over all connectors together when it is None."""

    sender: str
    rate: float
    burst: int = 1
    connector: str | None = None

    def __post_init__(self) -> None:
        if not self.sender.strip():
            raise ValueError("sender limit sender: expected a sender, got an empty string")
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"sender limit rate: expected a positive number of messages/s, "
                             f"got {self.rate!r}")
        if isinstance(self.burst, bool) or self.burst < 1:
            raise ValueError(f"sender limit burst: expected an integer >= 1, got {self.burst!r}")


class _Bucket:
    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last: float | None = None

    def refill(self, now: float) -> None:
        if self.last is not None and now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        if self.last is None or now > self.last:
            self.last = now

    def wait(self) -> float:
        # a hair under 1 is float rounding of an exact wait, not a reason to wait again
        return 0.0 if self.tokens >= 1.0 - 1e-9 else (1.0 - self.tokens) / self.rate


class SenderLimiter:
    """Every limit that applies to a message (its sender's limit on any connector and its
    limit on the chosen connector) must have a token for it to go."""

    def __init__(self, limits: Sequence[SenderLimit] = ()) -> None:
        self._buckets: dict[tuple[str, str | None], _Bucket] = {}
        for limit in limits:
            key = (sender_key(limit.sender), limit.connector)
            if key in self._buckets:
                where = f" on connector {limit.connector}" if limit.connector else ""
                raise ValueError(f"sender limit: sender {limit.sender!r}{where} is limited twice")
            self._buckets[key] = _Bucket(limit.rate, limit.burst)
        self._senders = {s for s, _c in self._buckets}

    def __bool__(self) -> bool:
        return bool(self._buckets)

    def adopt(self, other: SenderLimiter) -> None:
        """Keep the tokens of `other`'s buckets (the running limiter a reload replaces) for
        the limits whose rate and burst did not change: a reload refills nobody's burst."""
        for key, bucket in self._buckets.items():
            old = other._buckets.get(key)
            if old is not None and (old.rate, old.burst) == (bucket.rate, bucket.burst):
                bucket.tokens, bucket.last = old.tokens, old.last

    def delay_for(self, connector: str, sender: str, now: float) -> float:
        """Seconds until a message of `sender` may go through `connector`; 0 means go now, and
        then one token is taken from each limit that applies."""
        key = sender_key(sender)
        if key not in self._senders:
            return 0.0
        buckets = [b for b in (self._buckets.get((key, None)),
                               self._buckets.get((key, connector))) if b is not None]
        for bucket in buckets:
            bucket.refill(now)
        wait = max((b.wait() for b in buckets), default=0.0)
        if wait <= 0.0:
            for bucket in buckets:
                bucket.tokens -= 1.0
            return 0.0
        return wait
