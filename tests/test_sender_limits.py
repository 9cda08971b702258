"""Per-sender throughput limits: a token bucket per sender (on all connectors, or on one), a
burst after a quiet spell, the wait until the next token, and a token taken only when it goes."""

from __future__ import annotations

import pytest

from routing.limits import SenderLimit, SenderLimiter, sender_key


def test_an_unlimited_sender_always_goes() -> None:
    limiter = SenderLimiter([SenderLimit("33612345678", rate=1.0)])
    assert all(limiter.delay_for("opA", "ACME", 0.0) == 0.0 for _ in range(1000))


def test_one_message_per_second_then_the_wait_until_the_next_token() -> None:
    limiter = SenderLimiter([SenderLimit("33612345678", rate=1.0)])
    assert limiter.delay_for("opA", "33612345678", 10.0) == 0.0
    assert limiter.delay_for("opA", "33612345678", 10.25) == pytest.approx(0.75)
    assert limiter.delay_for("opA", "33612345678", 10.5) == pytest.approx(0.5)
    assert limiter.delay_for("opA", "33612345678", 11.0) == 0.0
    assert limiter.delay_for("opA", "33612345678", 11.0) == pytest.approx(1.0)


def test_a_wait_takes_no_token() -> None:
    limiter = SenderLimiter([SenderLimit("ACME", rate=2.0)])
    assert limiter.delay_for("opA", "ACME", 0.0) == 0.0
    for _ in range(5):  # asking again and again while waiting does not push the token back
        assert limiter.delay_for("opA", "ACME", 0.1) == pytest.approx(0.4)
    assert limiter.delay_for("opA", "ACME", 0.5) == 0.0


def test_burst_allows_that_many_at_once_after_a_quiet_spell() -> None:
    limiter = SenderLimiter([SenderLimit("ACME", rate=1.0, burst=3)])
    assert [limiter.delay_for("opA", "ACME", 0.0) for _ in range(4)] == [0.0, 0.0, 0.0, 1.0]
    assert limiter.delay_for("opA", "ACME", 100.0) == 0.0  # refilled, but never beyond burst
    assert limiter.delay_for("opA", "ACME", 100.0) == 0.0
    assert limiter.delay_for("opA", "ACME", 100.0) == 0.0
    assert limiter.delay_for("opA", "ACME", 100.0) == pytest.approx(1.0)


def test_a_limit_on_one_connector_leaves_the_others_free() -> None:
    limiter = SenderLimiter([SenderLimit("ACME", rate=1.0, connector="opA")])
    assert limiter.delay_for("opA", "ACME", 0.0) == 0.0
    assert limiter.delay_for("opA", "ACME", 0.0) == pytest.approx(1.0)
    assert limiter.delay_for("opB", "ACME", 0.0) == 0.0
    assert limiter.delay_for("opB", "ACME", 0.0) == 0.0


def test_the_global_and_the_connector_limit_both_apply() -> None:
    limiter = SenderLimiter([SenderLimit("ACME", rate=10.0, burst=2),
                             SenderLimit("ACME", rate=1.0, connector="opA")])
    assert limiter.delay_for("opA", "ACME", 0.0) == 0.0
    assert limiter.delay_for("opA", "ACME", 0.0) == pytest.approx(1.0)  # opA's own limit
    assert limiter.delay_for("opB", "ACME", 0.0) == 0.0  # the global one still has a token
    assert limiter.delay_for("opB", "ACME", 0.0) == pytest.approx(0.1)  # now it has none


def test_a_number_matches_with_or_without_plus_or_00() -> None:
    limiter = SenderLimiter([SenderLimit("+33612345678", rate=1.0)])
    assert limiter.delay_for("opA", "0033612345678", 0.0) == 0.0
    assert limiter.delay_for("opA", "33612345678", 0.0) > 0.0
    assert sender_key(" ACME ") == "ACME" and sender_key("00ACME") == "00ACME"


@pytest.mark.parametrize(("limit", "message"), [
    ({"sender": " ", "rate": 1.0}, "sender"),
    ({"sender": "A", "rate": 0.0}, "rate"),
    ({"sender": "A", "rate": float("inf")}, "rate"),
    ({"sender": "A", "rate": 1.0, "burst": 0}, "burst"),
])
def test_bad_limits_are_refused(limit: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SenderLimit(**limit)  # type: ignore[arg-type]


def test_a_sender_limited_twice_on_one_connector_is_refused() -> None:
    with pytest.raises(ValueError, match="limited twice"):
        SenderLimiter([SenderLimit("ACME", 1.0, connector="opA"),
                       SenderLimit("ACME", 2.0, connector="opA")])
