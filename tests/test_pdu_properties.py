"""Property tests of the PDU codec: exact round trips, no crash on hostile bytes, framing.

Hypothesis generates the PDUs, the garbage and the chunkings; each property is one rule a
peer on the other end of a TCP connection relies on.
"""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from smpp import pdu as m
from smpp.constants import CommandId
from smpp.pdu import (
    TLV_SIZES,
    DataSm,
    DeliverSm,
    DlDest,
    EnquireLink,
    FrameReader,
    Pdu,
    PduError,
    SmeDest,
    SubmitMulti,
    SubmitMultiResp,
    SubmitSm,
    SubmitSmResp,
    UnsuccessSme,
    decode,
    encode,
)

PROPERTY = settings(max_examples=200, deadline=None)

u8 = st.integers(0, 255)
u32 = st.integers(0, 0xFFFFFFFF)
cstr = st.text(st.characters(min_codepoint=1, max_codepoint=255), max_size=24)
short_message = st.binary(max_size=255)
unsized_tag = st.integers(0, 0xFFFF).filter(lambda tag: tag not in TLV_SIZES)
sized_tlv = st.sampled_from(sorted(TLV_SIZES)).flatmap(
    lambda tag: st.tuples(st.just(tag), st.binary(min_size=TLV_SIZES[tag], max_size=TLV_SIZES[tag]))
)
tlvs = st.builds(
    lambda free, sized: {**free, **dict(sized)},
    st.dictionaries(unsized_tag, st.binary(max_size=40), max_size=4),
    st.lists(sized_tlv, max_size=3),
)


def short_message_pdus(cls: type[SubmitSm] | type[DeliverSm]) -> st.SearchStrategy[Pdu]:
    return st.builds(
        cls,
        sequence=u32,
        status=u32,
        tlvs=tlvs,
        service_type=cstr,
        source_addr_ton=u8,
        source_addr_npi=u8,
        source_addr=cstr,
        dest_addr_ton=u8,
        dest_addr_npi=u8,
        destination_addr=cstr,
        esm_class=u8,
        protocol_id=u8,
        priority_flag=u8,
        schedule_delivery_time=cstr,
        validity_period=cstr,
        registered_delivery=u8,
        replace_if_present_flag=u8,
        data_coding=u8,
        sm_default_msg_id=u8,
        short_message=short_message,
    )


dests = st.lists(
    st.one_of(st.builds(SmeDest, u8, u8, cstr), st.builds(DlDest, cstr)), max_size=8
)
submit_multi = st.builds(
    SubmitMulti,
    sequence=u32,
    status=u32,
    tlvs=tlvs,
    service_type=cstr,
    source_addr_ton=u8,
    source_addr_npi=u8,
    source_addr=cstr,
    dests=dests,
    esm_class=u8,
    protocol_id=u8,
    priority_flag=u8,
    schedule_delivery_time=cstr,
    validity_period=cstr,
    registered_delivery=u8,
    replace_if_present_flag=u8,
    data_coding=u8,
    sm_default_msg_id=u8,
    short_message=short_message,
)
submit_multi_resp = st.builds(
    SubmitMultiResp,
    sequence=u32,
    status=u32,
    tlvs=tlvs,
    message_id=cstr,
    unsuccess=st.lists(st.builds(UnsuccessSme, u8, u8, cstr, u32), max_size=5),
)
data_sm = st.builds(
    DataSm,
    sequence=u32,
    status=u32,
    tlvs=tlvs,
    service_type=cstr,
    source_addr_ton=u8,
    source_addr_npi=u8,
    source_addr=cstr,
    dest_addr_ton=u8,
    dest_addr_npi=u8,
    destination_addr=cstr,
    esm_class=u8,
    registered_delivery=u8,
    data_coding=u8,
)
submit_sm_resp = st.builds(SubmitSmResp, sequence=u32, status=u32, tlvs=tlvs, message_id=cstr)

any_pdu = st.one_of(
    short_message_pdus(SubmitSm),
    short_message_pdus(DeliverSm),
    submit_multi,
    submit_multi_resp,
    data_sm,
    submit_sm_resp,
)


@PROPERTY
@given(any_pdu)
def test_random_pdus_round_trip_exactly(sample: Pdu) -> None:
    frame = encode(sample)
    assert len(frame) == struct.unpack(">I", frame[:4])[0]
    assert decode(frame) == sample
    assert encode(decode(frame)) == frame


@PROPERTY
@given(st.one_of(short_message_pdus(SubmitSm), short_message_pdus(DeliverSm), submit_sm_resp))
def test_fast_paths_match_table_path(sample: Pdu) -> None:
    frame = encode(sample)
    assert frame[16:] == m._TABLE_ENCODERS[type(sample)](sample)
    table = m._TABLE_DECODERS[sample.command_id](frame, sample.status, sample.sequence)
    assert table == decode(frame)


def _decode_or_pdu_error(frame: bytes) -> None:
    try:
        result = decode(frame)
    except PduError as exc:
        assert exc.status != 0
        assert isinstance(exc.detail, str)
    else:
        assert isinstance(result, Pdu)


@PROPERTY
@given(st.binary(max_size=300))
def test_decode_of_arbitrary_bytes_raises_only_pdu_error(junk: bytes) -> None:
    _decode_or_pdu_error(junk)


@PROPERTY
@given(st.sampled_from(sorted(CommandId)), u32, u32, st.binary(max_size=200))
def test_decode_of_arbitrary_bodies_raises_only_pdu_error(
    command_id: int, status: int, sequence: int, body: bytes
) -> None:
    _decode_or_pdu_error(struct.pack(">IIII", 16 + len(body), command_id, status, sequence) + body)


@PROPERTY
@given(any_pdu, st.data())
def test_decode_of_mutated_frames_raises_only_pdu_error(sample: Pdu, data: st.DataObject) -> None:
    frame = bytearray(encode(sample))
    for _ in range(data.draw(st.integers(1, 4))):
        where = data.draw(st.integers(0, len(frame) - 1))
        frame[where] = data.draw(u8)
    cut = data.draw(st.integers(16, len(frame)))
    mutated = bytes(frame[:cut])
    if data.draw(st.booleans()):
        mutated = struct.pack(">I", len(mutated)) + mutated[4:]
    _decode_or_pdu_error(mutated)


# The chunking is what varies here, not the PDU content: a fixed pool of frame sizes.
FRAME_POOL = [
    encode(EnquireLink(sequence=1)),
    encode(SubmitSmResp(sequence=2, message_id="abc")),
    encode(SubmitSm(sequence=3, destination_addr="33600000001", short_message=b"x" * 160)),
    encode(DataSm(sequence=4, tlvs={0x0424: b"y" * 1000})),
    encode(SubmitSmResp(sequence=5, status=0x58)),
]


@PROPERTY
@given(st.lists(st.sampled_from(FRAME_POOL), min_size=1, max_size=8), st.data())
def test_frame_reader_over_random_chunkings_yields_same_frames(
    frames: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    reader = FrameReader()
    got: list[bytes] = []
    start = 0
    for end in [*cuts, len(stream)]:
        reader.feed(stream[start:end])
        start = end
        got.extend(reader.frames())
    assert got == frames
    assert reader.buffered == 0
