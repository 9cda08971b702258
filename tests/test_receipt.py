"""Rules protected by smpp.receipt: our receipt format, lenient parsing, id correlation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smpp.receipt import (
    STAT_TO_STATE,
    STATE_TO_STAT,
    Receipt,
    format_receipt,
    id_variants,
    message_state,
    parse_receipt,
)

SUBMIT = datetime(2026, 11, 23, 10, 30, tzinfo=UTC)
DONE = datetime(2026, 11, 23, 10, 31, tzinfo=UTC)


# --------------------------------------------------------------------------- format
def test_format_is_exact_for_a_known_receipt() -> None:
    r = Receipt(
        id="1234567890",
        sub=1,
        dlvrd=1,
        submit_date=SUBMIT,
        done_date=DONE,
        stat="DELIVRD",
        err="0",
        text="Your code is 123456, valid 5 minutes",
    )
    assert format_receipt(r) == (
        b"id:1234567890 sub:001 dlvrd:001 submit date:2611231030 done date:2611231031"
        b" stat:DELIVRD err:000 text:Your code is 123456,"
    )


def test_format_converts_aware_dates_to_utc() -> None:
    paris = timezone(timedelta(hours=1))
    r = Receipt(id="x", submit_date=SUBMIT.astimezone(paris), done_date=DONE, stat="EXPIRED")
    assert b"submit date:2611231030 " in format_receipt(r)


@pytest.mark.parametrize("start", [
    datetime(2026, 11, 23, 10, 30, 59, 999_999, tzinfo=UTC),  # minute boundary
    datetime(2026, 12, 31, 23, 59, 30, tzinfo=UTC),  # day, month and year roll over
    datetime(2028, 2, 28, 23, 59, 59, tzinfo=UTC),  # leap day next
])
def test_format_dates_stay_exact_when_formatted_minutes_are_reused(start: datetime) -> None:
    # Dates are formatted once per minute and reused: every second of a two-minute span, in
    # UTC and in another zone, must still read as strftime writes it.
    paris = timezone(timedelta(hours=1))
    for seconds in range(0, 120, 7):
        when = start + timedelta(seconds=seconds)
        for shown in (when, when.astimezone(paris)):
            text = format_receipt(Receipt(id="x", submit_date=shown, done_date=shown,
                                          stat="DELIVRD"))
            stamp = when.strftime("%y%m%d%H%M").encode()
            assert b"submit date:" + stamp + b" done date:" + stamp in text


def test_format_is_ascii_even_for_non_ascii_text() -> None:
    r = Receipt(id="x", submit_date=SUBMIT, done_date=DONE, stat="DELIVRD", text="Leçon €\nok")
    assert format_receipt(r).endswith(b"text:Le?on ? ok")


def test_format_requires_dates() -> None:
    with pytest.raises(ValueError):
        format_receipt(Receipt(id="x", stat="DELIVRD", done_date=DONE))


# --------------------------------------------------------------------------- parse
def test_parse_canonical_receipt() -> None:
    r = parse_receipt(
        b"id:1234567890 sub:001 dlvrd:001 submit date:2611231030 done date:2611231031"
        b" stat:DELIVRD err:000 text:Hello"
    )
    assert r == Receipt(
        id="1234567890",
        sub=1,
        dlvrd=1,
        submit_date=SUBMIT,
        done_date=DONE,
        stat="DELIVRD",
        err="000",
        text="Hello",
    )


@pytest.mark.parametrize(
    ("raw", "msg_id", "stat", "err"),
    [
        # lower/upper/mixed-case keys
        (
            "ID:42 SUB:001 DLVRD:001 SUBMIT DATE:2611231030 DONE DATE:2611231031 STAT:DELIVRD "
            "ERR:000 TEXT:hi",
            "42",
            "DELIVRD",
            "000",
        ),
        (
            "Id:42 Sub:001 Dlvrd:001 Submit date:2611231030 Done date:2611231031 Stat:UNDELIV "
            "Err:001 Text:hi",
            "42",
            "UNDELIV",
            "001",
        ),
        # underscores / no space in date keys, dates with seconds
        (
            "id:a1b2c3 submit_date:261123103000 done_date:261123103100 stat:EXPIRED err:0",
            "a1b2c3",
            "EXPIRED",
            "0",
        ),
        (
            "id:a1b2c3 submitdate:2611231030 donedate:2611231031 stat:DELIVRD",
            "a1b2c3",
            "DELIVRD",
            "000",
        ),
        # missing text, multiple spaces, trailing NULs and CR/LF
        ("id:7  sub:001   dlvrd:000  stat:REJECTD   err:0x0B\x00\x00\r\n", "7", "REJECTD", "0x0B"),
        # hex id kept as given, alphanumeric error code
        ("id:5A3F10B2 stat:ACCEPTED err:E12", "5A3F10B2", "ACCEPTD", "E12"),
        # long-form status words
        ("id:9 stat:DELIVERED", "9", "DELIVRD", "000"),
        ("id:9 stat:UNDELIVERABLE", "9", "UNDELIV", "000"),
        ("id:9 stat:undelivered", "9", "UNDELIV", "000"),
        ("id:9 stat:Rejected", "9", "REJECTD", "000"),
        # unknown extra keys ignored, wherever they are
        (
            "id:9 imsi:208011234567890 stat:DELIVRD mccmnc:20801 err:000 text:",
            "9",
            "DELIVRD",
            "000",
        ),
        # space after colon
        ("id: 77 stat: DELIVRD err: 000", "77", "DELIVRD", "000"),
    ],
)
def test_parse_real_world_variants(raw: str, msg_id: str, stat: str, err: str) -> None:
    r = parse_receipt(raw)
    assert r is not None
    assert (r.id, r.stat, r.err) == (msg_id, stat, err)


def test_parse_dates_with_seconds() -> None:
    r = parse_receipt("id:1 submit date:261123103015 done date:261123103159 stat:DELIVRD")
    assert r is not None
    assert r.submit_date == SUBMIT.replace(second=15)
    assert r.done_date == DONE.replace(second=59)


def test_text_containing_stat_does_not_override_the_real_stat() -> None:
    r = parse_receipt(
        b"id:1 sub:001 dlvrd:001 submit date:2611231030 done date:2611231031 stat:DELIVRD"
        b" err:000 text:stat:UNDELIV err:999 id:2"
    )
    assert r is not None
    assert (r.id, r.stat, r.err) == ("1", "DELIVRD", "000")
    assert r.text == "stat:UNDELIV err:999 id:2"


def test_missing_optional_fields_take_defaults() -> None:
    r = parse_receipt("id:1 stat:DELIVRD")
    assert r == Receipt(id="1", stat="DELIVRD")


def test_bad_dates_and_counts_are_tolerated() -> None:
    r = parse_receipt("id:1 sub:xx dlvrd: submit date:2613991030 done date:abc stat:DELIVRD")
    assert r is not None
    assert (r.sub, r.dlvrd, r.submit_date, r.done_date) == (1, 0, None, None)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        b"",
        "hello world",
        "id:1",
        "stat:DELIVRD",
        "id: stat:DELIVRD",
        "id:1 stat:",
        "text:id:1 stat:DELIVRD",
        b"\x00\x00\x00",
        b"\xff\xfe\x00id",
        "id:::: stat::::",
    ],
)
def test_garbage_is_not_a_receipt(raw: str | bytes) -> None:
    assert parse_receipt(raw) is None


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200)))
def test_parse_never_raises(raw: bytes | str) -> None:
    result = parse_receipt(raw)
    assert result is None or isinstance(result, Receipt)


stat_words = st.sampled_from(sorted(STAT_TO_STATE))
ids = st.from_regex(r"[0-9a-fA-F][0-9a-fA-F_-]{0,35}", fullmatch=True)
minutes = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2099, 12, 31, 23, 59),
    timezones=st.just(UTC),
).map(lambda d: d.replace(second=0, microsecond=0))


@settings(max_examples=200, deadline=None)
@given(
    ids,
    st.integers(0, 999),
    st.integers(0, 999),
    minutes,
    minutes,
    stat_words,
    st.text(alphabet="0123456789ABCDEF", min_size=1, max_size=3),
    st.text(max_size=40),
)
def test_format_then_parse_is_identity(
    msg_id: str,
    sub: int,
    dlvrd: int,
    submit: datetime,
    done: datetime,
    stat: str,
    err: str,
    text: str,
) -> None:
    r = Receipt(
        id=msg_id,
        sub=sub,
        dlvrd=dlvrd,
        submit_date=submit,
        done_date=done,
        stat=stat,
        err=err,
        text=text,
    )
    back = parse_receipt(format_receipt(r))
    assert back is not None
    assert (back.id, back.sub, back.dlvrd, back.stat, back.err) == (
        msg_id,
        sub,
        dlvrd,
        stat,
        err.zfill(3),
    )
    assert (back.submit_date, back.done_date) == (submit, done)


# --------------------------------------------------------------------------- states
def test_stat_words_map_to_message_states_and_back() -> None:
    assert STAT_TO_STATE == {
        "ENROUTE": 1,
        "DELIVRD": 2,
        "EXPIRED": 3,
        "DELETED": 4,
        "UNDELIV": 5,
        "ACCEPTD": 6,
        "UNKNOWN": 7,
        "REJECTD": 8,
    }
    assert all(STATE_TO_STAT[v] == k for k, v in STAT_TO_STATE.items())
    assert message_state("delivered") == 2
    assert message_state("whatever") == 7
    assert message_state("5") == 5


# --------------------------------------------------------------------------- correlation
def test_hex_id_variants_include_decimal() -> None:
    v = id_variants("5A3F10B2")
    assert v[0] == "5A3F10B2"
    assert "5a3f10b2" in v and "1514082482" in v


def test_decimal_id_variants_include_hex_both_cases() -> None:
    v = id_variants("1514082482")
    assert {"5a3f10b2", "5A3F10B2"} <= set(v)


def test_zero_padded_id_keeps_padding_in_converted_forms() -> None:
    v = id_variants("0000012345")
    assert {"12345", "3039", "0000003039", "0000074565", "74565"} <= set(v)


def test_id_variants_are_deterministic_and_unique() -> None:
    for sid in ("5A3F10B2", "0012", "abc-def", "  42\x00"):
        v = id_variants(sid)
        assert v == id_variants(sid)
        assert len(v) == len(set(v))
    assert id_variants("") == []


def test_receipt_id_correlates_with_submit_response_id() -> None:
    # submit_sm_resp said hex, the receipt says decimal (or the other way round)
    assert set(id_variants("5a3f10b2")) & set(id_variants("1514082482"))
