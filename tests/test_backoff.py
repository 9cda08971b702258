"""Retry delays: exponential growth up to the cap, each jitter kind within its bounds, the same
seed giving the same delays, and bad options refused."""

from __future__ import annotations

import random

import pytest

from routing.backoff import Backoff, retry_delay


def test_delays_grow_exponentially_up_to_the_cap_without_jitter() -> None:
    b = Backoff(initial=1.0, cap=10.0, multiplier=2.0, jitter="none")
    rng = random.Random(1)
    assert [retry_delay(n, b, rng) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_a_huge_attempt_number_gives_the_cap_not_an_overflow() -> None:
    b = Backoff(initial=1.0, cap=60.0, multiplier=10.0)
    assert retry_delay(100_000, b, random.Random(0)) == 60.0


def test_multiplier_one_keeps_the_initial_delay() -> None:
    b = Backoff(initial=3.0, cap=60.0, multiplier=1.0)
    assert retry_delay(50, b, random.Random(0)) == 3.0


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 8])
def test_full_jitter_is_between_zero_and_the_exponential_delay(attempt: int) -> None:
    b = Backoff(initial=1.0, cap=20.0, multiplier=2.0, jitter="full")
    rng = random.Random(7)
    delays = [retry_delay(attempt, b, rng) for _ in range(500)]
    high = b.base(attempt)
    assert all(0.0 <= d <= high for d in delays)
    assert max(delays) - min(delays) > high / 2  # spread, not constant


@pytest.mark.parametrize("attempt", [1, 3, 9])
def test_equal_jitter_keeps_at_least_half_the_delay(attempt: int) -> None:
    b = Backoff(initial=2.0, cap=30.0, multiplier=3.0, jitter="equal")
    rng = random.Random(3)
    high = b.base(attempt)
    delays = [retry_delay(attempt, b, rng) for _ in range(500)]
    assert all(high / 2 <= d <= high for d in delays)
    assert len(set(delays)) > 100


def test_decorrelated_jitter_grows_from_the_previous_delay_within_initial_and_cap() -> None:
    b = Backoff(initial=1.0, cap=50.0, multiplier=3.0, jitter="decorrelated")
    rng = random.Random(11)
    previous: float | None = None
    for attempt in range(1, 200):
        delay = retry_delay(attempt, b, rng, previous)
        last = 1.0 if previous is None else previous
        assert 1.0 <= delay <= min(50.0, last * 3.0)
        previous = delay
    # with no previous delay, it is drawn between initial and initial * multiplier
    first = [retry_delay(1, b, rng) for _ in range(200)]
    assert all(1.0 <= d <= 3.0 for d in first)


def test_the_same_seed_gives_the_same_delays() -> None:
    for jitter in ("full", "equal", "decorrelated"):
        b = Backoff(initial=1.0, cap=100.0, jitter=jitter)  # type: ignore[arg-type]
        one, two = random.Random(42), random.Random(42)
        assert [retry_delay(n, b, one) for n in range(1, 10)] == [
            retry_delay(n, b, two) for n in range(1, 10)]


@pytest.mark.parametrize(("options", "message"), [
    ({"initial": 0.0}, "initial"),
    ({"initial": float("nan")}, "initial"),
    ({"initial": 5.0, "cap": 1.0}, "cap"),
    ({"multiplier": 0.5}, "multiplier"),
    ({"jitter": "some"}, "jitter"),
])
def test_bad_options_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Backoff(**options)  # type: ignore[arg-type]


def test_attempt_numbers_start_at_one() -> None:
    with pytest.raises(ValueError, match="attempt"):
        retry_delay(0, Backoff(), random.Random(0))
