"""Quality tracking: scores per (connector, destination group) from the delivery ratio and the
receipt latency over a sliding window, never under the floor, recovering as receipts improve."""

from __future__ import annotations

import pytest

from routing.quality import QualityOptions, QualityTracker, calling_code


def feed(tracker: QualityTracker, connector: str, destination: str, delivered: int,
         failed: int, now: float, latency: float | None = None) -> None:
    for _ in range(delivered):
        tracker.observe(connector, destination, True, latency, now)
    for _ in range(failed):
        tracker.observe(connector, destination, False, None, now)


def test_no_receipts_score_full() -> None:
    assert QualityTracker().score("opA", "33612345678", 0.0) == 1.0


def test_the_score_follows_the_delivery_ratio() -> None:
    t = QualityTracker(QualityOptions(prior=0.0, floor=0.01))
    feed(t, "opA", "33612345678", delivered=70, failed=30, now=10.0)
    assert t.score("opA", "33699999999", 10.0) == pytest.approx(0.7)
    assert t.counts("opA", "33600000000", 10.0) == (70, 100)


def test_few_receipts_say_little_the_prior_softens_them() -> None:
    t = QualityTracker(QualityOptions(prior=5.0))
    feed(t, "opA", "33612345678", delivered=0, failed=1, now=0.0)
    assert t.score("opA", "33612345678", 0.0) == pytest.approx(5 / 6)


def test_the_score_never_falls_under_the_floor() -> None:
    t = QualityTracker(QualityOptions(floor=0.1, prior=0.0))
    feed(t, "opA", "33612345678", delivered=0, failed=500, now=0.0)
    assert t.score("opA", "33612345678", 0.0) == 0.1


def test_slow_receipts_lower_the_score_relative_to_the_target() -> None:
    t = QualityTracker(QualityOptions(latency_target=10.0, prior=0.0))
    feed(t, "opA", "33612345678", delivered=10, failed=0, now=0.0, latency=40.0)
    feed(t, "opB", "33612345678", delivered=10, failed=0, now=0.0, latency=5.0)
    assert t.score("opA", "33612345678", 0.0) == pytest.approx(0.25)
    assert t.score("opB", "33612345678", 0.0) == 1.0


def test_old_receipts_leave_the_window_so_a_recovered_connector_scores_again() -> None:
    t = QualityTracker(QualityOptions(window=60.0, prior=0.0, floor=0.05))
    feed(t, "opA", "33612345678", delivered=0, failed=50, now=0.0)
    assert t.score("opA", "33612345678", 59.0) == 0.05
    feed(t, "opA", "33612345678", delivered=20, failed=0, now=61.0)  # the floor share works
    assert t.score("opA", "33612345678", 61.0) == 1.0


def test_groups_are_by_country_calling_code_by_default() -> None:
    t = QualityTracker(QualityOptions(prior=0.0))
    feed(t, "opA", "+33612345678", delivered=0, failed=10, now=0.0)
    assert t.score("opA", "0033123", 0.0) == t.options.floor  # same country (33)
    assert t.score("opA", "34612345678", 0.0) == 1.0  # Spain: its own group
    assert t.score("opB", "33612345678", 0.0) == 1.0  # another connector: its own group
    assert calling_code("12125551234") == "1" and calling_code("35312345") == "353"
    assert calling_code("999") == "" and calling_code("") == ""


def test_groups_by_prefix_digits_when_asked() -> None:
    t = QualityTracker(QualityOptions(group_by="prefix:4", prior=0.0))
    feed(t, "opA", "33612345678", delivered=0, failed=10, now=0.0)
    assert t.score("opA", "33619999999", 0.0) == t.options.floor
    assert t.score("opA", "33712345678", 0.0) == 1.0


def test_samples_kept_per_group_are_bounded() -> None:
    t = QualityTracker(QualityOptions(max_samples=10, prior=0.0))
    feed(t, "opA", "336", delivered=0, failed=100, now=0.0)
    feed(t, "opA", "336", delivered=10, failed=0, now=0.0)
    assert t.counts("opA", "336", 0.0) == (10, 10)


def test_the_pairs_tracked_are_bounded_expired_ones_going_first() -> None:
    t = QualityTracker(QualityOptions(group_by="prefix:15", max_groups=3, window=10.0,
                                      prior=0.0))
    feed(t, "opA", "1", delivered=0, failed=1, now=0.0)
    feed(t, "opA", "2", delivered=0, failed=1, now=5.0)
    feed(t, "opA", "3", delivered=0, failed=1, now=6.0)
    feed(t, "opA", "4", delivered=0, failed=1, now=12.0)  # "1" left the window: it goes
    assert len(t) == 3 and t.counts("opA", "1", 12.0) == (0, 0)
    feed(t, "opA", "5", delivered=0, failed=1, now=13.0)  # none expired: the oldest goes
    assert len(t) == 3 and t.counts("opA", "2", 13.0) == (0, 0)
    assert t.counts("opA", "3", 13.0) == (0, 1)


@pytest.mark.parametrize(("options", "message"), [
    ({"window": 0.0}, "window"),
    ({"floor": 0.0}, "floor"),
    ({"floor": 1.5}, "floor"),
    ({"latency_target": -1.0}, "latency_target"),
    ({"group_by": "region"}, "group_by"),
    ({"group_by": "prefix:0"}, "group_by"),
    ({"prior": -1.0}, "prior"),
    ({"max_groups": 0}, "max_groups"),
])
def test_bad_options_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        QualityOptions(**options)  # type: ignore[arg-type]
