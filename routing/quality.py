"""Delivery quality per (connector, destination group), measured from receipts over a window.

The dispatcher feeds every receipt outcome to `observe`; the quality router asks `score` and
sends more traffic where it is higher. A score never falls under `floor`, so a degraded
connector keeps a small share of the traffic and its recovery shows in the receipts.
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass

from phonenumbers import COUNTRY_CODE_TO_REGION_CODE

from routing.core import normalise_digits

_GROUP_BY = re.compile(r"country|prefix:([1-9]|1[0-5])")
GROUP_BY_HINT = '"country" (the country calling code) or "prefix:N" (the first N digits, 1-15)'


def calling_code(digits: str) -> str:
    """The country calling code a string of E.164 digits starts with ("" if none): codes are
    prefix-free, so the first 1 to 3 digits that are one are it."""
    for n in (1, 2, 3):
        if len(digits) >= n and digits[:n].isdigit() and int(digits[:n]) in \
                COUNTRY_CODE_TO_REGION_CODE:
            return digits[:n]
    return ""


@dataclass(frozen=True, slots=True)
class QualityOptions:
    window: float = 3600.0  # seconds of receipts a score is made of
    floor: float = 0.05  # the lowest score: the share a degraded connector keeps
    latency_target: float | None = None  # receipt latency (s) at or under which no penalty
    group_by: str = "country"  # "country" or "prefix:N"
    prior: float = 5.0  # pseudo-receipts of a healthy connector mixed into every ratio
    max_samples: int = 1000  # receipts kept per (connector, group), newest
    max_groups: int = 10_000  # (connector, group) pairs tracked at most (the oldest go first)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.window) and self.window > 0):
            raise ValueError(f"quality window: expected a positive duration, got "
                             f"{self.window!r}")
        if not (0.0 < self.floor <= 1.0):
            raise ValueError(f"quality floor: expected a number > 0 and <= 1, got "
                             f"{self.floor!r}")
        if self.latency_target is not None and not (
                math.isfinite(self.latency_target) and self.latency_target > 0):
            raise ValueError(f"quality latency_target: expected a positive duration, got "
                             f"{self.latency_target!r}")
        if not _GROUP_BY.fullmatch(self.group_by):
            raise ValueError(f"quality group_by: expected {GROUP_BY_HINT}, got "
                             f"{self.group_by!r}")
        if not (math.isfinite(self.prior) and self.prior >= 0):
            raise ValueError(f"quality prior: expected a number >= 0, got {self.prior!r}")
        if self.max_samples < 1:
            raise ValueError(f"quality max_samples: expected an integer >= 1, got "
                             f"{self.max_samples!r}")
        if self.max_groups < 1:
            raise ValueError(f"quality max_groups: expected an integer >= 1, got "
                             f"{self.max_groups!r}")


@dataclass(frozen=True, slots=True)
class _Sample:
    at: float
    delivered: bool
    latency: float | None


class QualityTracker:
    """Receipt outcomes per (connector, destination group) over a sliding window, and a score
    from them in [floor, 1]:

    score = max(floor, ratio * latency_factor), where ratio is the delivered share with
    `prior` healthy pseudo-receipts mixed in (few receipts say little: no data scores 1), and
    latency_factor is min(1, latency_target / mean latency of the delivered ones) when a
    target is set (else 1).
    """

    def __init__(self, options: QualityOptions = QualityOptions()) -> None:
        self.options = options
        digits = options.group_by.partition(":")[2]
        self._prefix_len = int(digits) if digits else 0
        self._samples: dict[tuple[str, str], deque[_Sample]] = {}

    def adopt(self, other: QualityTracker) -> None:
        """Keep the receipts `other` (the tracker a reload replaces) measured, when it
        measured the same way (same options)."""
        if other.options == self.options:
            self._samples = other._samples

    def group(self, destination: str) -> str:
        """The destination group of an address: its calling code, or its first N digits."""
        digits = normalise_digits(destination)
        if self._prefix_len:
            return digits[:self._prefix_len]
        return calling_code(digits)

    def observe(self, connector: str, destination: str, delivered: bool,
                latency: float | None, now: float) -> None:
        """One receipt outcome: through `connector`, to `destination` (an address), delivered
        or not, with its latency (submit to receipt, seconds) when known."""
        key = (connector, self.group(destination))
        samples = self._samples.get(key)
        if samples is None:
            if len(self._samples) >= self.options.max_groups:
                self._make_room(now)
            samples = self._samples[key] = deque(maxlen=self.options.max_samples)
        samples.append(_Sample(now, delivered, latency))
        self._expire(samples, now)

    def _make_room(self, now: float) -> None:
        """Forget the pairs with no receipt left in the window; if none, the oldest pair."""
        for key, samples in list(self._samples.items()):
            self._expire(samples, now)
            if not samples:
                del self._samples[key]
        if len(self._samples) >= self.options.max_groups:
            del self._samples[next(iter(self._samples))]

    def __len__(self) -> int:
        """(connector, group) pairs tracked."""
        return len(self._samples)

    def _expire(self, samples: deque[_Sample], now: float) -> None:
        oldest = now - self.options.window
        while samples and samples[0].at < oldest:
            samples.popleft()

    def counts(self, connector: str, destination: str, now: float) -> tuple[int, int]:
        """(delivered, total) receipts in the window."""
        samples = self._samples.get((connector, self.group(destination)))
        if not samples:
            return 0, 0
        self._expire(samples, now)
        return sum(1 for s in samples if s.delivered), len(samples)

    def score(self, connector: str, destination: str, now: float) -> float:
        opts = self.options
        samples = self._samples.get((connector, self.group(destination)))
        if samples:
            self._expire(samples, now)
        if not samples:
            return 1.0
        delivered = sum(1 for s in samples if s.delivered)
        ratio = (delivered + opts.prior) / (len(samples) + opts.prior)
        factor = 1.0
        if opts.latency_target is not None:
            latencies = [s.latency for s in samples if s.delivered and s.latency is not None]
            if latencies:
                mean = sum(latencies) / len(latencies)
                factor = 1.0 if mean <= opts.latency_target else opts.latency_target / mean
        return max(opts.floor, min(1.0, ratio * factor))
