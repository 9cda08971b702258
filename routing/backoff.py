"""Retry delays: exponential backoff with jitter, as a pure function of the attempt number.

No clock and no global randomness: the caller passes the attempt number (1 = the first retry)
and its own random.Random, so the same seed gives the same delays.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal, get_args

Jitter = Literal["none", "full", "equal", "decorrelated"]
JITTERS: tuple[str, ...] = get_args(Jitter)


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long to wait before retry n: ``initial * multiplier**(n-1)``, at most ``cap``, then
    spread by ``jitter``:

    - "none": exactly that delay;
    - "full": uniform between 0 and that delay;
    - "equal": half of it, plus uniform between 0 and the other half;
    - "decorrelated": uniform between ``initial`` and ``multiplier`` times the previous delay
      (the caller's, ``initial`` when there is none), at most ``cap``: delays grow without
      marching in step with other messages that failed at the same moment.
    """

    initial: float = 5.0
    cap: float = 300.0
    multiplier: float = 2.0
    jitter: Jitter = "none"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.initial) and self.initial > 0):
            raise ValueError(f"backoff initial: expected a positive delay, got {self.initial!r}")
        if not (math.isfinite(self.cap) and self.cap >= self.initial):
            raise ValueError(f"backoff cap: expected a delay >= initial ({self.initial:g}), "
                             f"got {self.cap!r}")
        if not (math.isfinite(self.multiplier) and self.multiplier >= 1.0):
            raise ValueError(f"backoff multiplier: expected a number >= 1, got "
                             f"{self.multiplier!r}")
        if self.jitter not in JITTERS:
            raise ValueError(f"backoff jitter: expected one of {', '.join(JITTERS)}, got "
                             f"{self.jitter!r}")

    def base(self, attempt: int) -> float:
        """The delay before retry ``attempt`` without jitter (never overflows: capped)."""
        if attempt < 1:
            raise ValueError(f"backoff attempt: expected an integer >= 1, got {attempt!r}")
        if self.multiplier == 1.0:
            return self.initial
        # initial * multiplier**(attempt-1) > cap  <=>  (attempt-1) * log(m) > log(cap/initial)
        if (attempt - 1) * math.log(self.multiplier) >= math.log(self.cap / self.initial):
            return self.cap
        return min(self.cap, self.initial * self.multiplier ** (attempt - 1))


def retry_delay(attempt: int, backoff: Backoff, rng: random.Random,
                previous: float | None = None) -> float:
    """Seconds to wait before retry ``attempt`` (1-based). ``previous`` is the delay used
    before the last retry; only "decorrelated" jitter reads it."""
    base = backoff.base(attempt)
    if backoff.jitter == "none":
        return base
    if backoff.jitter == "full":
        return rng.uniform(0.0, base)
    if backoff.jitter == "equal":
        return base / 2 + rng.uniform(0.0, base / 2)
    last = backoff.initial if previous is None else max(backoff.initial, previous)
    high = min(backoff.cap, last * backoff.multiplier)
    return min(backoff.cap, rng.uniform(backoff.initial, high))
