"""Circuit breakers: open after N consecutive failures, half-open after the cool-down, a limited
number of probes, close on a probe's success, re-open on its failure; every change reported."""

from __future__ import annotations

import pytest

from routing.breaker import (
    TRANSITIONS,
    BreakerEvent,
    BreakerOptions,
    Breakers,
    BreakerState,
    CircuitBreaker,
)

CLOSED, OPEN, HALF = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN

Change = tuple[str, BreakerState, BreakerState, float]


def breaker(failures: int = 3, cooldown: float = 10.0, probes: int = 1
            ) -> tuple[CircuitBreaker, list[Change]]:
    changes: list[Change] = []
    b = CircuitBreaker("opA", BreakerOptions(failures, cooldown, probes),
                       lambda *change: changes.append(change))
    return b, changes


def test_opens_after_n_consecutive_failures() -> None:
    b, changes = breaker(failures=3)
    b.failure(1.0)
    b.failure(2.0)
    assert b.state(2.0) is CLOSED and b.allow(2.0)
    b.failure(3.0)
    assert b.state(3.0) is OPEN and not b.allow(3.0) and not b.available(3.0)
    assert changes == [("opA", CLOSED, OPEN, 3.0)]


def test_a_success_resets_the_consecutive_count() -> None:
    b, changes = breaker(failures=3)
    for t in range(10):
        b.failure(float(t))
        b.failure(float(t))
        b.success(float(t))
    assert b.state(10.0) is CLOSED and changes == []


def test_half_open_after_the_cooldown_and_not_before() -> None:
    b, changes = breaker(failures=1, cooldown=10.0)
    b.failure(100.0)
    assert b.state(109.999) is OPEN and not b.allow(109.999)
    assert b.state(110.0) is HALF
    assert changes[-1] == ("opA", OPEN, HALF, 110.0)


def test_half_open_admits_only_the_configured_number_of_probes() -> None:
    b, _ = breaker(failures=1, cooldown=5.0, probes=2)
    b.failure(0.0)
    assert b.allow(5.0) and b.allow(5.0)
    assert not b.allow(5.0) and not b.available(5.0)
    b.release(6.0)  # a probe ended without a verdict: its slot frees
    assert b.available(6.0) and b.allow(6.0) and not b.allow(6.0)


def test_a_probe_success_closes_it() -> None:
    b, changes = breaker(failures=2, cooldown=5.0)
    b.failure(0.0)
    b.failure(0.0)
    assert b.allow(5.0)
    b.success(5.5)
    assert b.state(5.5) is CLOSED and b.allow(5.5) and b.allow(5.5)
    assert [c[1:3] for c in changes] == [(CLOSED, OPEN), (OPEN, HALF), (HALF, CLOSED)]
    b.failure(6.0)  # counting starts again from zero after closing
    assert b.state(6.0) is CLOSED


def test_a_probe_failure_reopens_it_for_a_new_cooldown() -> None:
    b, changes = breaker(failures=2, cooldown=5.0)
    b.failure(0.0)
    b.failure(0.0)
    assert b.allow(5.0)
    b.failure(6.0)
    assert b.state(6.0) is OPEN and not b.allow(10.9)
    assert b.state(11.0) is HALF
    assert [c[1:3] for c in changes] == [(CLOSED, OPEN), (OPEN, HALF), (HALF, OPEN),
                                         (OPEN, HALF)]


def test_outcomes_of_attempts_admitted_before_it_opened_change_nothing() -> None:
    b, changes = breaker(failures=1, cooldown=5.0)
    b.failure(0.0)
    b.success(1.0)  # a late success does not close an open breaker
    b.failure(4.0)  # nor does a late failure push the cool-down back
    assert b.state(4.9) is OPEN and b.state(5.0) is HALF
    assert len(changes) == 2


def test_failures_of_attempts_under_way_when_a_failure_was_counted_count_once() -> None:
    """Rule: N submits on the wire when a connection drops are one failure, not N; an attempt
    begun after the last counted failure counts again."""
    b, changes = breaker(failures=3)
    for _ in range(10):  # ten attempts begun at 1.0, all failing at 2.0
        b.failure(2.0, started=1.0)
    assert b.consecutive_failures == 1 and b.state(2.0) is CLOSED
    b.failure(3.0, started=2.0)  # begun once that failure was known
    b.failure(3.5, started=1.5)  # begun before it: the same trouble
    b.failure(4.0, started=3.0)
    assert b.state(4.0) is OPEN and len(changes) == 1


def test_while_half_open_only_probes_decide() -> None:
    """Rule: outcomes of attempts begun before the breaker became half-open neither close nor
    re-open it; its probe's outcome does."""
    b, changes = breaker(failures=1, cooldown=5.0)
    b.failure(0.0, started=0.0)
    assert b.state(5.0) is HALF and b.allow(5.0)
    b.failure(5.5, started=0.5)  # an old attempt's late answer
    b.success(5.6, started=0.6)
    assert b.state(5.7) is HALF
    b.success(6.0, started=5.0)  # the probe's
    assert b.state(6.0) is CLOSED
    assert [c[1:3] for c in changes] == [(CLOSED, OPEN), (OPEN, HALF), (HALF, CLOSED)]


def test_every_state_change_goes_through_the_transition_table() -> None:
    assert set(TRANSITIONS.values()) == {CLOSED, OPEN, HALF}
    assert TRANSITIONS[(CLOSED, BreakerEvent.TRIPPED)] is OPEN
    assert (OPEN, BreakerEvent.PROBE_OK) not in TRANSITIONS


@pytest.mark.parametrize("options", [
    {"failures": 0}, {"cooldown": 0.0}, {"cooldown": float("inf")}, {"probes": 0},
])
def test_bad_options_are_refused(options: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="breaker " + next(iter(options))):
        BreakerOptions(**options)  # type: ignore[arg-type]


def test_breakers_apply_per_connector_overrides_and_know_unknown_names_as_up() -> None:
    changes: list[Change] = []
    board = Breakers(["opA", "opB"], BreakerOptions(failures=5),
                     {"opB": BreakerOptions(failures=1)}, lambda *c: changes.append(c))
    board["opA"].failure(0.0)
    board["opB"].failure(0.0)
    assert board.available("opA", 0.0) and not board.available("opB", 0.0)
    assert board.available("rbm", 0.0)  # no breaker: nothing refuses it
    assert changes == [("opB", CLOSED, OPEN, 0.0)]
    with pytest.raises(ValueError, match="unknown connectors: opC"):
        Breakers(["opA"], overrides={"opC": BreakerOptions()})


def test_breakers_know_which_connectors_are_not_closed() -> None:
    board = Breakers(["opA", "opB"], BreakerOptions(failures=1, cooldown=5.0))
    assert board.not_closed == set()  # routing need not ask any breaker
    board["opA"].failure(0.0)
    assert board.not_closed == {"opA"}
    assert board.available("opA", 5.0)  # half-open: a probe may go
    assert board["opA"].allow(5.0)
    assert not board.available("opA", 5.0)  # the one probe is out
    board["opA"].success(6.0)
    assert board.not_closed == set() and board.available("opA", 6.0)
