"""Rules protected by smpp.text: coding choice, lossless splitting, UDH/SAR bytes, decoding."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smpp.text import (
    DC_DEFAULT,
    DC_IA5,
    DC_LATIN1,
    DC_UCS2,
    Segment,
    TextEncodingError,
    alphabet,
    count_segments,
    decode_text,
    encode_text,
    is_gsm7,
    parse_udh,
    septet_length,
    split,
    units,
)

GSM_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM_EXT = "€[]{}^~\\|\f"


def join_parts(parts: list[Segment]) -> bytes:
    """Re-assemble what a handset would: strip each part's UDH, concatenate."""
    out = b""
    for seg in parts:
        if seg.udhi:
            _, body = parse_udh(seg.short_message)
            out += body
        else:
            out += seg.short_message
    return out


def body_of(seg: Segment) -> bytes:
    return parse_udh(seg.short_message)[1] if seg.udhi else seg.short_message


# --------------------------------------------------------------------------- encoding
def test_gsm0338_table_is_complete_and_extension_uses_escape() -> None:
    assert len(GSM_BASIC) == 127  # 128 code points minus ESC
    dc, body = encode_text(GSM_BASIC)
    assert dc == DC_DEFAULT and len(body) == 127 and 0x1B not in body
    dc, body = encode_text("€[]{}^~\\|")
    assert dc == DC_DEFAULT
    assert body == bytes.fromhex("1b651b3c1b3e1b281b291b141b3d1b2f1b40")


def test_auto_picks_gsm_for_default_alphabet_text() -> None:
    assert encode_text("Hello é à ñ Ç €")[0] == DC_DEFAULT


def test_auto_falls_back_to_ucs2_for_any_non_gsm_character() -> None:
    dc, body = encode_text("Leçon")  # small c-cedilla is not in GSM 03.38
    assert dc == DC_UCS2 and body == "Leçon".encode("utf-16-be")


def test_bare_escape_character_in_text_is_not_gsm() -> None:
    assert not is_gsm7("a\x1bb")
    assert encode_text("a\x1bb")[0] == DC_UCS2
    with pytest.raises(TextEncodingError):
        encode_text("a\x1bb", prefer="gsm7")


def test_emoji_is_encoded_as_a_surrogate_pair() -> None:
    dc, body = encode_text("😀")
    assert dc == DC_UCS2 and body == bytes.fromhex("d83dde00")


@pytest.mark.parametrize(
    ("prefer", "text", "dc"),
    [
        ("gsm7", "abc", DC_DEFAULT),
        ("latin1", "Leçon", DC_LATIN1),
        ("ucs2", "abc", DC_UCS2),
        ("ascii", "abc", DC_IA5),
    ],
)
def test_forced_coding_is_honoured(prefer: str, text: str, dc: int) -> None:
    got_dc, body = encode_text(text, prefer=prefer)
    assert got_dc == dc and decode_text(body, dc) == text


@pytest.mark.parametrize(
    ("prefer", "text"),
    [("gsm7", "Leçon"), ("latin1", "€"), ("ascii", "é"), ("ucs2", "\ud800"), ("klingon", "a")],
)
def test_forced_coding_that_cannot_represent_text_raises(prefer: str, text: str) -> None:
    with pytest.raises(TextEncodingError):
        encode_text(text, prefer=prefer)


def test_text_encoding_error_is_a_value_error() -> None:
    assert issubclass(TextEncodingError, ValueError)


# --------------------------------------------------------------------------- decoding
def test_decode_is_lenient_on_garbage() -> None:
    assert decode_text(b"A\x80B", DC_DEFAULT) == "A\ufffdB"
    assert decode_text(b"\x00a\x00", DC_UCS2) == "a\ufffd"  # odd length
    assert decode_text(b"\xd8\x3d\x00a", DC_UCS2) == "\ufffda"  # lone high surrogate
    assert decode_text(b"\xff", DC_IA5) == "\ufffd"


def test_decode_trailing_lone_escape_is_dropped() -> None:
    assert decode_text(b"abc\x1b", DC_DEFAULT) == "abc"


def test_decode_unknown_escape_shows_base_character() -> None:
    # TS 23.038: a code missing from the extension table displays the base-table character.
    assert decode_text(b"\x1bA", DC_DEFAULT) == "A"
    assert decode_text(b"\x1b\x1bA", DC_DEFAULT) == " A"  # ESC ESC: reserved, shown as space


def test_binary_decodes_one_character_per_octet() -> None:
    data = bytes(range(256))
    assert decode_text(data, 4).encode("latin-1") == data


@pytest.mark.parametrize(
    ("dc", "kind"),
    [
        (0, "gsm7"),
        (1, "ascii"),
        (2, "binary"),
        (3, "latin1"),
        (4, "binary"),
        (8, "ucs2"),
        (0x10, "gsm7"),
        (0x18, "ucs2"),
        (0x14, "binary"),
        (0x28, "binary"),
        (0xF0, "gsm7"),
        (0xF4, "binary"),
        (0xC8, "gsm7"),
        (0xE0, "ucs2"),
        (0x80, "binary"),
    ],
)
def test_data_coding_groups(dc: int, kind: str) -> None:
    assert alphabet(dc) == kind


# --------------------------------------------------------------------------- lengths
def test_euro_counts_as_two_septets() -> None:
    assert septet_length("€") == 2
    assert septet_length("a€b") == 4
    assert units("€") == 2


def test_units_counts_utf16_code_units_for_ucs2_text() -> None:
    assert units("ç") == 1
    assert units("😀") == 2
    assert units(b"\x00a\x00b", DC_UCS2) == 2


def test_septet_length_rejects_non_gsm_text() -> None:
    with pytest.raises(TextEncodingError):
        septet_length("ç")


# --------------------------------------------------------------------------- part counts
@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("ç" * 70, 1),
        ("ç" * 71, 2),
        ("ç" * 134, 2),
        ("ç" * 135, 3),
        ("€" * 80, 1),
        ("€" * 81, 2),
        ("", 1),
    ],
)
def test_part_count_thresholds(text: str, parts: int) -> None:
    assert count_segments(text)[1] == parts


def test_stop_mention_fits_in_one_part_up_to_144_characters() -> None:
    mention = " STOP au 36111 "[:16].ljust(16)
    assert count_segments("x" * 144 + mention) == (DC_DEFAULT, 1)
    assert count_segments("x" * 145 + mention) == (DC_DEFAULT, 2)


# --------------------------------------------------------------------------- splitting
def test_short_body_is_one_plain_segment() -> None:
    assert split(b"hello", DC_DEFAULT) == [Segment(b"hello")]
    assert split(b"", DC_DEFAULT) == [Segment(b"")]


def test_udh_bytes_exact_for_8bit_reference() -> None:
    parts = split(b"a" * 200, DC_DEFAULT, ref=0x42)
    assert [p.short_message[:6] for p in parts] == [
        bytes.fromhex("050003420201"),
        bytes.fromhex("050003420202"),
    ]
    assert all(p.udhi and p.sar is None and not p.payload for p in parts)
    assert len(body_of(parts[0])) == 153


def test_udh_bytes_exact_for_16bit_reference() -> None:
    parts = split(b"a" * 200, DC_DEFAULT, ref=0x1234, ref16=True)
    assert [p.short_message[:7] for p in parts] == [
        bytes.fromhex("06080412340201"),
        bytes.fromhex("06080412340202"),
    ]
    assert len(body_of(parts[0])) == 152


def test_sar_gives_tlv_values_and_no_udh() -> None:
    body = b"b" * 400
    parts = split(body, DC_DEFAULT, method="sar", ref=7)
    assert [p.sar for p in parts] == [(7, 3, 1), (7, 3, 2), (7, 3, 3)]
    assert not any(p.udhi for p in parts)
    assert b"".join(p.short_message for p in parts) == body
    assert max(len(p.short_message) for p in parts) == 153


def test_payload_method_keeps_body_whole() -> None:
    body = "ç".encode("utf-16-be") * 100
    assert split(body, DC_UCS2, method="payload") == [Segment(body, payload=True)]


def test_payload_method_not_used_when_body_fits() -> None:
    assert split(b"hi", DC_DEFAULT, method="payload") == [Segment(b"hi")]


def test_escape_sequence_is_never_split_across_parts() -> None:
    body = encode_text("a" * 152 + "€" + "b" * 10)[1]  # ESC lands on septet 153
    parts = split(body, DC_DEFAULT)
    first = body_of(parts[0])
    assert len(first) == 152 and first[-1] != 0x1B
    assert body_of(parts[1]).startswith(b"\x1be")
    assert join_parts(parts) == body


def test_surrogate_pair_is_never_split_across_parts() -> None:
    body = encode_text("a" * 66 + "😀" + "b" * 10)[1]  # pair would straddle octet 134
    parts = split(body, DC_UCS2)
    first = body_of(parts[0])
    assert len(first) == 132
    assert decode_text(first, DC_UCS2) == "a" * 66
    assert decode_text(body_of(parts[1]), DC_UCS2) == "😀" + "b" * 10


def test_ucs2_parts_have_even_length() -> None:
    body = encode_text("ç" * 300)[1]
    for ref16 in (False, True):
        assert all(len(body_of(p)) % 2 == 0 for p in split(body, DC_UCS2, ref16=ref16))


def test_8bit_capacity() -> None:
    assert [len(body_of(p)) for p in split(bytes(300), 4)] == [134, 134, 32]
    assert [len(body_of(p)) for p in split(bytes(300), 4, ref16=True)] == [133, 133, 34]
    assert len(split(bytes(140), 2)) == 1 and len(split(bytes(141), 3)) == 2


def test_max_single_raises_the_one_part_limit() -> None:
    assert split(b"a" * 200, DC_DEFAULT, max_single=254) == [Segment(b"a" * 200)]


def test_smaller_max_single_also_caps_each_part() -> None:
    parts = split(b"a" * 100, DC_DEFAULT, max_single=40)
    assert [len(body_of(p)) for p in parts] == [40, 40, 20]
    with pytest.raises(TextEncodingError):
        split(b"a" * 100, DC_DEFAULT, max_single=3)


def test_more_than_255_parts_is_refused() -> None:
    assert len(split(b"a" * 153 * 255, DC_DEFAULT)) == 255
    with pytest.raises(TextEncodingError):
        split(b"a" * (153 * 255 + 1), DC_DEFAULT)


def test_reference_out_of_range_is_refused() -> None:
    with pytest.raises(TextEncodingError):
        split(b"a" * 200, DC_DEFAULT, ref=256)
    with pytest.raises(TextEncodingError):
        split(b"a" * 200, DC_DEFAULT, ref=-1)
    with pytest.raises(TextEncodingError):
        split(b"a" * 200, DC_DEFAULT, ref=0x10000, ref16=True)


def test_odd_ucs2_body_cannot_be_split() -> None:
    with pytest.raises(TextEncodingError):
        split(b"\x00" * 201, DC_UCS2)


# --------------------------------------------------------------------------- parse_udh
def test_parse_udh_inverts_split() -> None:
    for ref16 in (False, True):
        parts = split(b"x" * 400, DC_DEFAULT, ref=200, ref16=ref16)
        assert [parse_udh(p.short_message)[0] for p in parts] == [
            (200, 3, 1),
            (200, 3, 2),
            (200, 3, 3),
        ]


def test_parse_udh_skips_other_information_elements() -> None:
    # port addressing (IEI 0x05) before the concatenation IE
    sm = bytes.fromhex("0b0504158200000003aa0301") + b"hi"
    assert parse_udh(sm) == ((0xAA, 3, 1), b"hi")
    assert parse_udh(bytes.fromhex("06050415820000") + b"x") == (None, b"x")
    assert parse_udh(bytes.fromhex("00") + b"x") == (None, b"x")


def test_parse_udh_ignores_concat_ie_with_bad_sequence() -> None:
    assert parse_udh(bytes.fromhex("050003010203") + b"x") == (None, b"x")  # seq > total
    assert parse_udh(bytes.fromhex("050003010000") + b"x") == (None, b"x")  # total 0


@pytest.mark.parametrize(
    "sm",
    [
        b"",
        bytes.fromhex("05000301"),
        bytes.fromhex("0300"),
        bytes.fromhex("03000501"),
        bytes.fromhex("0400020102"),
        bytes.fromhex("050803010201"),
    ],
)
def test_parse_udh_rejects_malformed_headers(sm: bytes) -> None:
    with pytest.raises(TextEncodingError):
        parse_udh(sm)


# --------------------------------------------------------------------------- properties
GSM_ALPHABET = GSM_BASIC + GSM_EXT
gsm_text = st.text(alphabet=GSM_ALPHABET, max_size=1200)
any_text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=700) | st.lists(
    st.sampled_from([*GSM_ALPHABET, "😀", "👍🏽", "ç", "中"]), max_size=500
).map("".join)


def capacity(dc: int, ref16: bool) -> int:
    return {DC_DEFAULT: (153, 152), DC_UCS2: (134, 132)}.get(dc, (134, 133))[ref16]


@settings(max_examples=200, deadline=None)
@given(any_text, st.booleans(), st.integers(0, 255))
def test_split_round_trips_any_text(text: str, ref16: bool, ref: int) -> None:
    dc, body = encode_text(text)
    parts = split(body, dc, ref=ref, ref16=ref16)
    assert join_parts(parts) == body
    assert decode_text(join_parts(parts), dc) == text
    if len(parts) > 1:
        cap = capacity(dc, ref16)
        for seq, part in enumerate(parts, 1):
            payload = body_of(part)
            assert 0 < len(payload) <= cap
            assert parse_udh(part.short_message)[0] == (ref, len(parts), seq)
            assert len(part.short_message) <= 140


@settings(max_examples=200, deadline=None)
@given(gsm_text)
def test_gsm_parts_never_end_with_a_lone_escape(text: str) -> None:
    dc, body = encode_text(text)
    assert dc == DC_DEFAULT
    for part in split(body, dc, method="sar"):
        sm = part.short_message
        run = len(sm) - len(sm.rstrip(b"\x1b"))
        assert run % 2 == 0  # ESC ESC pairs are whole; an odd run ends in a cut escape


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["a", "😀", "👍🏽", "中"]), max_size=300).map("".join))
def test_ucs2_parts_never_end_with_a_high_surrogate(text: str) -> None:
    dc, body = encode_text(text, prefer="ucs2")
    for part in split(body, dc, method="sar"):
        sm = part.short_message
        assert len(sm) % 2 == 0
        if sm:
            assert not 0xD8 <= sm[-2] <= 0xDB
        assert "\ufffd" not in decode_text(sm, dc)  # every part decodes on its own


@settings(max_examples=200, deadline=None)
@given(gsm_text)
def test_gsm_parts_each_decode_to_a_slice_of_the_text(text: str) -> None:
    dc, body = encode_text(text)
    parts = split(body, dc)
    assert "".join(decode_text(body_of(p), dc) for p in parts) == text


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_decode_never_raises(data: bytes) -> None:
    for dc in (0, 1, 2, 3, 4, 8, 0x18, 0xF0, 0xF4):
        assert isinstance(decode_text(data, dc), str)


# --------------------------------------------------------------------------- hardening
def test_sar_reference_above_255_uses_the_16bit_capacity() -> None:
    parts = split(b"a" * 400, DC_DEFAULT, method="sar", ref=300)
    assert [len(p.short_message) for p in parts] == [152, 152, 96]
    assert parts[0].sar == (300, 3, 1)


def test_ucs2_parts_stay_even_with_an_odd_max_single() -> None:
    body = encode_text("ç" * 40)[1]
    parts = split(body, DC_UCS2, max_single=41, method="sar")
    assert all(len(p.short_message) % 2 == 0 for p in parts)
    assert b"".join(p.short_message for p in parts) == body


def test_cyrillic_and_hebrew_codings_decode() -> None:
    assert decode_text("Привет".encode("iso8859_5"), 6) == "Привет"
    assert decode_text("שלום".encode("iso8859_8"), 7) == "שלום"
    assert decode_text(b"\xff", 7) == "\ufffd"


septets = st.lists(st.sampled_from([0x1B, 0x1B, 0x41, 0x65, 0x0A, 0x00, 0x7F]), max_size=800)


@settings(max_examples=200, deadline=None)
@given(septets, st.booleans())
def test_raw_septets_with_escape_runs_split_on_pair_boundaries(raw: list[int], ref16: bool) -> None:
    body = bytes(raw)
    parts = split(body, DC_DEFAULT, ref16=ref16)
    assert join_parts(parts) == body
    if len(parts) > 1:
        for part in parts[:-1]:
            chunk = body_of(part)
            assert len(chunk) <= capacity(DC_DEFAULT, ref16)
            run = len(chunk) - len(chunk.rstrip(b"\x1b"))
            assert run % 2 == 0


code_units = st.lists(
    st.sampled_from([0x0041, 0xD83D, 0xDE00, 0xDBFF, 0xDC00, 0x4E2D]), max_size=400
)


@settings(max_examples=200, deadline=None)
@given(code_units)
def test_raw_ucs2_never_separates_a_surrogate_pair(raw: list[int]) -> None:
    body = b"".join(u.to_bytes(2, "big") for u in raw)
    parts = split(body, DC_UCS2)
    assert join_parts(parts) == body
    chunks = [body_of(p) for p in parts]
    for left, right in itertools.pairwise(chunks):
        assert len(left) % 2 == 0 and len(left) <= 134
        ends_high = 0xD8 <= left[-2] <= 0xDB
        starts_low = 0xDC <= right[0] <= 0xDF
        assert not (ends_high and starts_low)
