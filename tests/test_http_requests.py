"""HTTP API request parsing: durations, RFC 3339 times, the Idempotency-Key, and the
fingerprint an idempotency key binds to (pure functions, no server)."""

from __future__ import annotations

import pytest

from gateway.http_requests import (
    check_idempotency_key,
    parse_duration_field,
    parse_post,
    parse_rfc3339,
)


@pytest.mark.parametrize(("value", "seconds"), [
    (60, 60.0), (0.5, 0.5), ("PT4H", 14400.0), ("P1DT12H", 129600.0), ("PT1H30M", 5400.0),
    ("PT90S", 90.0), ("P2D", 172800.0), ("PT0.5S", 0.5),
    (0, None), (-5, None), (True, None), ("P", None), ("PT", None), ("P1M", None),
    ("P1Y", None), ("1h", None), ("P1DT", None), (None, None), ("PT0S", None),
])
def test_validity_is_positive_seconds_or_an_iso_8601_duration_of_fixed_units(
        value: object, seconds: float | None) -> None:
    assert parse_duration_field(value) == seconds


@pytest.mark.parametrize(("value", "stamp"), [
    ("2026-12-01T10:00:00Z", 1796119200.0), ("2026-12-01T11:00:00+01:00", 1796119200.0),
    ("2026-12-01t10:00:00z", 1796119200.0), ("2026-12-01T10:00:00.250Z", 1796119200.25),
    ("2026-12-01T10:00:00", None), ("2026-12-01", None), ("tomorrow", None), (17, None),
    ("2026-12-01 10:00:00Z", None), ("2026-13-01T10:00:00Z", None),
])
def test_send_at_is_an_rfc_3339_time_with_its_offset(value: object, stamp: float | None) -> None:
    assert parse_rfc3339(value) == stamp


def test_idempotency_keys_are_1_to_255_printable_ascii_characters() -> None:
    assert check_idempotency_key("order-17/attempt:2") is None
    for bad in ("", "a b", "x" * 256, "clé"):
        assert check_idempotency_key(bad) is not None


def test_the_fingerprint_ignores_key_order_and_spacing_but_not_values() -> None:
    one = parse_post(b'{"to": "33612345678", "from": "ACME", "text": "Hi"}', 100)
    same = parse_post(b'{"text":"Hi","from":"ACME","to":"33612345678"}', 100)
    other = parse_post(b'{"to": "33612345678", "from": "ACME", "text": "Hi!"}', 100)
    assert one.fingerprint == same.fingerprint != other.fingerprint
    assert not one.batch and parse_post(b'{"messages": [{"to": "1", "from": "A", "text": "x"}]}',
                                        100).batch
