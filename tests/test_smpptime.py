"""Rules protected by smpp.smpptime: absolute/relative SMPP time fields, both directions."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smpp.smpptime import SmppTimeError, format_absolute, format_relative, parse_smpp_time

T0 = datetime(2026, 11, 23, 10, 30, tzinfo=UTC).timestamp()
NOW = 1_800_000_000.0


def test_empty_field_means_unset() -> None:
    assert parse_smpp_time("", NOW) is None


def test_absolute_utc() -> None:
    assert parse_smpp_time("261123103000000+", NOW) == T0


def test_absolute_tenths() -> None:
    assert parse_smpp_time("261123103000700+", NOW) == pytest.approx(T0 + 0.7)


def test_absolute_positive_offset_is_ahead_of_utc() -> None:
    # 11:30 local at UTC+1 (4 quarters) is 10:30 UTC
    assert parse_smpp_time("261123113000004+", NOW) == T0


def test_absolute_negative_offset_is_behind_utc() -> None:
    # 05:00 local at UTC-05:30 (22 quarters) is 10:30 UTC
    assert parse_smpp_time("261123050000022-", NOW) == T0


def test_absolute_offset_crosses_date_line() -> None:
    # 00:30 on the 24th at UTC+12 is 12:30 UTC on the 23rd
    assert parse_smpp_time("261124003000048+", NOW) == T0 + 2 * 3600
    # 22:30 on the 22nd at UTC-12 is 10:30 UTC on the 23rd
    assert parse_smpp_time("261122223000048-", NOW) == T0


def test_relative_days() -> None:
    assert parse_smpp_time("000001000000000R", NOW) == NOW + 86400


def test_relative_hours_minutes_seconds() -> None:
    assert parse_smpp_time("000000023005000R", NOW) == NOW + 2 * 3600 + 30 * 60 + 5


def test_relative_years_and_months_are_365_and_30_days() -> None:
    assert parse_smpp_time("010200000000000R", NOW) == NOW + (365 + 60) * 86400


@pytest.mark.parametrize(
    "bad",
    [
        "26112310300000+",  # too short
        "2611231030000000+",  # too long
        "26112310300000a+",  # non-digit
        "261123103000000*",  # bad p
        "261123103000049+",  # offset over 48 quarters
        "261323103000000+",  # month 13
        "260230103000000+",  # 30 February
        "261123243000000+",  # hour 24
        "261123106000000+",  # minute 60
        "\uff12\uff161123103000000+",  # non-ASCII (fullwidth) digits
        " 61123103000000+",
    ],
)
def test_malformed_fields_raise(bad: str) -> None:
    with pytest.raises(SmppTimeError):
        parse_smpp_time(bad, NOW)


def test_smpp_time_error_is_a_value_error_with_a_message() -> None:
    with pytest.raises(ValueError, match="quarter hours"):
        parse_smpp_time("261123103000049+", NOW)


def test_format_absolute_is_utc_with_tenths() -> None:
    assert format_absolute(T0) == "261123103000000+"
    assert format_absolute(T0 + 0.75) == "261123103000700+"


def test_format_absolute_refuses_years_smpp_cannot_express() -> None:
    with pytest.raises(SmppTimeError):
        format_absolute(0.0)
    with pytest.raises(SmppTimeError):
        format_absolute(float("nan"))


def test_format_relative() -> None:
    assert format_relative(86400) == "000001000000000R"
    assert format_relative(90061.9) == "000001010101000R"
    assert format_relative(400 * 86400) == "010105000000000R"


def test_format_relative_clamps_negative_to_zero() -> None:
    assert format_relative(-5) == "000000000000000R"


def test_format_relative_refuses_what_does_not_fit() -> None:
    with pytest.raises(SmppTimeError):
        format_relative(100 * 365 * 86400)
    with pytest.raises(SmppTimeError):
        format_relative(float("inf"))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 99 * 365 * 86400 - 1))
def test_relative_round_trips(seconds: int) -> None:
    assert parse_smpp_time(format_relative(seconds), NOW) == NOW + seconds


@settings(max_examples=200, deadline=None)
@given(
    st.integers(
        int(datetime(2000, 1, 1, tzinfo=UTC).timestamp()),
        int(datetime(2099, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()),
    ),
    st.integers(0, 9),
)
def test_absolute_round_trips_to_the_tenth(seconds: int, tenths: int) -> None:
    ts = seconds + tenths / 10
    back = parse_smpp_time(format_absolute(ts), NOW)
    assert back is not None and abs(back - ts) < 1e-6


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=20))
def test_parse_raises_only_smpp_time_error(value: str) -> None:
    with contextlib.suppress(SmppTimeError):
        parse_smpp_time(value, NOW)
