"""Rules of the SMPP 3.4 PDU codec: round trips, byte equality with smpplib, error statuses.

smpplib is the independent reference: frames it builds must decode here, frames built here
must match its bytes exactly for the common PDUs.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
import smpplib.command_codes
import smpplib.consts
import smpplib.smpp

from smpp import pdu as m
from smpp.constants import (
    CommandId,
    MessageState,
    Status,
    Tag,
    is_delivery_receipt,
    status_description,
    status_name,
)
from smpp.pdu import (
    AlertNotification,
    BindReceiver,
    BindReceiverResp,
    BindTransceiver,
    BindTransceiverResp,
    BindTransmitter,
    BindTransmitterResp,
    CancelSm,
    CancelSmResp,
    DataSm,
    DataSmResp,
    DeliverSm,
    DeliverSmResp,
    DlDest,
    EnquireLink,
    EnquireLinkResp,
    FrameReader,
    FramingError,
    GenericNack,
    Outbind,
    Pdu,
    PduError,
    QuerySm,
    QuerySmResp,
    ReplaceSm,
    ReplaceSmResp,
    SmeDest,
    SubmitMulti,
    SubmitMultiResp,
    SubmitSm,
    SubmitSmResp,
    Unbind,
    UnbindResp,
    UnsuccessSme,
    decode,
    encode,
    is_response,
    set_tlv_int,
    set_tlv_str,
    tlv_int,
    tlv_str,
)

# --------------------------------------------------------------------------- helpers


class _Client:
    """The sequence source smpplib's PDU constructors insist on."""

    sequence = 0

    def next_sequence(self) -> int:
        return 1


def smpplib_frame(name: str, sequence: int, **fields: Any) -> bytes:
    ref = smpplib.smpp.make_pdu(name, client=_Client(), **fields)
    ref.sequence = sequence
    frame: bytes = ref.generate()
    return frame


def smpplib_parse(frame: bytes) -> Any:
    return smpplib.smpp.parse_pdu(frame, client=_Client())


def reframe(frame: bytes) -> bytes:
    """Rewrite command_length so a hand-edited frame is consistent again."""
    return struct.pack(">I", len(frame)) + frame[4:]


def header(command_id: int, sequence: int = 1, status: int = 0, body: bytes = b"") -> bytes:
    return struct.pack(">IIII", 16 + len(body), command_id, status, sequence) + body


def error_of(frame: bytes) -> PduError:
    with pytest.raises(PduError) as info:
        decode(frame)
    return info.value


SAMPLE_SUBMIT = SubmitSm(
    sequence=7,
    service_type="CMT",
    source_addr_ton=5,
    source_addr_npi=0,
    source_addr="ACME",
    dest_addr_ton=1,
    dest_addr_npi=1,
    destination_addr="33600000001",
    registered_delivery=1,
    data_coding=3,
    short_message="h\xe9llo".encode("latin-1"),
)

ALL_SAMPLES: list[Pdu] = [
    GenericNack(sequence=1, status=Status.ESME_RINVCMDID),
    EnquireLink(sequence=2),
    EnquireLinkResp(sequence=2),
    Unbind(sequence=3),
    UnbindResp(sequence=3),
    BindTransmitter(sequence=4, system_id="sys", password="pw", system_type="X", addr_ton=1),
    BindReceiver(sequence=4, system_id="sys", password="pw", address_range="^336"),
    BindTransceiver(sequence=4, system_id="sys", password="pw", interface_version=0x33),
    BindTransmitterResp(sequence=4, system_id="smsc", tlvs={Tag.SC_INTERFACE_VERSION: b"\x34"}),
    BindReceiverResp(sequence=4, system_id="smsc"),
    BindTransceiverResp(sequence=4, system_id="smsc"),
    Outbind(sequence=5, system_id="smsc", password="pw"),
    SAMPLE_SUBMIT,
    SubmitSmResp(sequence=7, message_id="abc123"),
    DeliverSm(
        sequence=8,
        source_addr="33600000001",
        destination_addr="ACME",
        esm_class=0x04,
        short_message=b"id:abc123 sub:001 dlvrd:001 stat:DELIVRD err:000",
        tlvs={Tag.RECEIPTED_MESSAGE_ID: b"abc123\0", Tag.MESSAGE_STATE: b"\x02"},
    ),
    DeliverSmResp(sequence=8),
    SubmitMulti(
        sequence=9,
        source_addr="ACME",
        dests=[SmeDest(1, 1, "33600000001"), DlDest("friends"), SmeDest(0, 0, "")],
        esm_class=0x40,
        short_message=b"\x05\x00\x03\x01\x02\x01hi",
    ),
    SubmitMultiResp(
        sequence=9,
        message_id="m1",
        unsuccess=[UnsuccessSme(1, 1, "33600000002", Status.ESME_RINVDSTADR)],
    ),
    DataSm(sequence=10, source_addr="a", destination_addr="b", data_coding=8, tlvs={
        Tag.MESSAGE_PAYLOAD: "x".encode("utf-16-be") * 300,
    }),
    DataSmResp(sequence=10, message_id="d1"),
    QuerySm(sequence=11, message_id="abc", source_addr_ton=1, source_addr="336"),
    QuerySmResp(
        sequence=11,
        message_id="abc",
        final_date="240101120000000+",
        message_state=MessageState.DELIVERED,
        error_code=0,
    ),
    CancelSm(sequence=12, message_id="abc", source_addr="a", destination_addr="b"),
    CancelSmResp(sequence=12),
    ReplaceSm(sequence=13, message_id="abc", source_addr="a", short_message=b"new"),
    ReplaceSmResp(sequence=13),
    AlertNotification(sequence=14, source_addr="336", esme_addr="ACME", esme_addr_ton=5),
]


# --------------------------------------------------------------------------- constants


def test_command_ids_match_smpplib_table() -> None:
    assert {c.name.lower(): c.value for c in CommandId} == smpplib.command_codes.commands


def test_every_smpplib_status_code_has_a_member() -> None:
    expected = {
        name[len("SMPP_"):]: getattr(smpplib.consts, name)
        for name in dir(smpplib.consts)
        if name.startswith("SMPP_ESME_")
    }
    assert {s.name: s.value for s in Status} == expected


def test_every_smpplib_tlv_tag_has_a_member() -> None:
    assert {t.name.lower(): t.value for t in Tag} == smpplib.consts.OPTIONAL_PARAMS


def test_status_name_and_description() -> None:
    assert status_name(0x58) == "ESME_RTHROTTLED"
    assert status_name(0x12345) == "0x00012345"
    assert "Throttling" in status_description(Status.ESME_RTHROTTLED)
    assert status_description(0x12345) == "0x00012345"


def test_delivery_receipt_is_message_type_bits_0001() -> None:
    assert is_delivery_receipt(0x04)
    assert is_delivery_receipt(0x44)  # UDHI does not hide a receipt
    assert not is_delivery_receipt(0x00)
    assert not is_delivery_receipt(0x20)  # intermediate notification
    assert not is_delivery_receipt(0x08)  # SME delivery acknowledgement


def test_pdu_classes_cover_every_command_id() -> None:
    assert set(m.PDU_CLASSES) == set(CommandId)
    for command_id, cls in m.PDU_CLASSES.items():
        assert cls.command_id == command_id
        assert is_response(command_id) == bool(command_id & 0x80000000)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("sample", ALL_SAMPLES, ids=lambda p: type(p).__name__)
def test_every_pdu_type_round_trips(sample: Pdu) -> None:
    frame = encode(sample)
    assert struct.unpack(">I", frame[:4])[0] == len(frame)
    assert decode(frame) == sample
    assert encode(decode(frame)) == frame


@pytest.mark.parametrize("cls", list(m.PDU_CLASSES.values()), ids=lambda c: c.__name__)
def test_default_constructed_pdus_round_trip(cls: type[Pdu]) -> None:
    sample = cls(sequence=0x7FFFFFFF)
    assert decode(encode(sample)) == sample


@pytest.mark.parametrize("sample", ALL_SAMPLES, ids=lambda p: type(p).__name__)
def test_fast_paths_agree_with_table_path(sample: Pdu) -> None:
    frame = encode(sample)
    body = m._TABLE_ENCODERS[type(sample)](sample)
    if not isinstance(sample, GenericNack):
        assert frame[16:] == body
    decoded = m._TABLE_DECODERS[sample.command_id](frame, sample.status, sample.sequence)
    assert decoded == decode(frame)


def test_keyword_construction_with_defaults() -> None:
    sm = SubmitSm(destination_addr="33600000001", short_message=b"hi")
    assert sm.sequence == 0 and sm.status == 0 and sm.tlvs == {}
    assert sm.data_coding == 0 and sm.service_type == ""
    assert BindTransceiver().interface_version == 0x34


# --------------------------------------------------------------------------- smpplib bytes


def test_submit_sm_bytes_equal_smpplib() -> None:
    ref = smpplib_frame(
        "submit_sm",
        7,
        service_type="CMT",
        source_addr_ton=5,
        source_addr_npi=0,
        source_addr="ACME",
        dest_addr_ton=1,
        dest_addr_npi=1,
        destination_addr="33600000001",
        esm_class=0x40,
        protocol_id=0,
        priority_flag=1,
        schedule_delivery_time="",
        validity_period="000001000000000R",
        registered_delivery=1,
        replace_if_present_flag=0,
        data_coding=8,
        sm_default_msg_id=0,
        short_message=b"\x05\x00\x03\x2a\x02\x01\x00h\x00i",
        sar_msg_ref_num=0x1234,
        sar_total_segments=2,
        sar_segment_seqnum=1,
    )
    ours = SubmitSm(
        sequence=7,
        service_type="CMT",
        source_addr_ton=5,
        source_addr="ACME",
        dest_addr_ton=1,
        dest_addr_npi=1,
        destination_addr="33600000001",
        esm_class=0x40,
        priority_flag=1,
        validity_period="000001000000000R",
        registered_delivery=1,
        data_coding=8,
        short_message=b"\x05\x00\x03\x2a\x02\x01\x00h\x00i",
    )
    set_tlv_int(ours, Tag.SAR_MSG_REF_NUM, 0x1234)
    set_tlv_int(ours, Tag.SAR_TOTAL_SEGMENTS, 2)
    set_tlv_int(ours, Tag.SAR_SEGMENT_SEQNUM, 1)
    assert encode(ours) == ref


def test_deliver_sm_receipt_bytes_equal_smpplib() -> None:
    text = b"id:abc123 sub:001 dlvrd:001 submit date:2401011200 done date:2401011201 stat:DELIVRD"
    ref = smpplib_frame(
        "deliver_sm",
        0x10203,
        service_type="",
        source_addr_ton=1,
        source_addr_npi=1,
        source_addr="33600000001",
        dest_addr_ton=5,
        dest_addr_npi=0,
        destination_addr="ACME",
        esm_class=0x04,
        protocol_id=0,
        priority_flag=0,
        schedule_delivery_time="",
        validity_period="",
        registered_delivery=0,
        replace_if_present_flag=0,
        data_coding=0,
        sm_default_msg_id=0,
        short_message=text,
        network_error_code=b"\x03\x00\x01",
        message_state=2,
        receipted_message_id="abc123",
    )
    ours = DeliverSm(
        sequence=0x10203,
        source_addr_ton=1,
        source_addr_npi=1,
        source_addr="33600000001",
        dest_addr_ton=5,
        destination_addr="ACME",
        esm_class=0x04,
        short_message=text,
    )
    ours.tlvs[Tag.NETWORK_ERROR_CODE] = b"\x03\x00\x01"
    set_tlv_int(ours, Tag.MESSAGE_STATE, MessageState.DELIVERED)
    set_tlv_str(ours, Tag.RECEIPTED_MESSAGE_ID, "abc123")
    assert encode(ours) == ref


def test_bind_transceiver_bytes_equal_smpplib() -> None:
    ref = smpplib_frame(
        "bind_transceiver",
        1,
        system_id="smsgw",
        password="secret",
        system_type="VMA",
        addr_ton=1,
        addr_npi=1,
        address_range="^336",
    )
    ours = BindTransceiver(
        sequence=1,
        system_id="smsgw",
        password="secret",
        system_type="VMA",
        addr_ton=1,
        addr_npi=1,
        address_range="^336",
    )
    assert encode(ours) == ref


def test_submit_sm_resp_bytes_equal_smpplib() -> None:
    ref = smpplib_frame("submit_sm_resp", 99, message_id="5f3c0a1b-77")
    assert encode(SubmitSmResp(sequence=99, message_id="5f3c0a1b-77")) == ref


def test_enquire_link_bytes_equal_smpplib() -> None:
    assert encode(EnquireLink(sequence=42)) == smpplib_frame("enquire_link", 42)
    assert encode(EnquireLinkResp(sequence=42)) == smpplib_frame("enquire_link_resp", 42)


def test_frames_built_by_smpplib_decode() -> None:
    frame = smpplib_frame(
        "submit_sm",
        3,
        service_type="",
        source_addr_ton=5,
        source_addr_npi=0,
        source_addr="ACME",
        dest_addr_ton=1,
        dest_addr_npi=1,
        destination_addr="33612345678",
        esm_class=0,
        protocol_id=0,
        priority_flag=0,
        schedule_delivery_time="",
        validity_period="",
        registered_delivery=1,
        replace_if_present_flag=0,
        data_coding=0,
        sm_default_msg_id=0,
        short_message=b"hello",
        user_message_reference=77,
    )
    sm = decode(frame)
    assert isinstance(sm, SubmitSm)
    assert (sm.sequence, sm.source_addr, sm.destination_addr) == (3, "ACME", "33612345678")
    assert (sm.source_addr_ton, sm.dest_addr_ton, sm.registered_delivery) == (5, 1, 1)
    assert sm.short_message == b"hello"
    assert tlv_int(sm, Tag.USER_MESSAGE_REFERENCE) == 77

    bind = decode(smpplib_frame("bind_transmitter", 1, system_id="a", password="b"))
    assert isinstance(bind, BindTransmitter)
    assert (bind.system_id, bind.password, bind.interface_version) == ("a", "b", 0x34)

    resp = decode(smpplib_frame("submit_sm_resp", 3, message_id="xyz"))
    assert resp == SubmitSmResp(sequence=3, message_id="xyz")

    nack = decode(smpplib_frame("generic_nack", 4, status=Status.ESME_RINVCMDLEN))
    assert nack == GenericNack(sequence=4, status=Status.ESME_RINVCMDLEN)

    query = decode(smpplib_frame("query_sm", 5, message_id="m", source_addr="336"))
    assert isinstance(query, QuerySm) and query.message_id == "m"

    alert = decode(
        smpplib_frame(
            "alert_notification", 6, source_addr="336", esme_addr="ACME", esme_addr_ton=5
        )
    )
    assert isinstance(alert, AlertNotification)
    assert (alert.source_addr, alert.esme_addr, alert.esme_addr_ton) == ("336", "ACME", 5)


def test_smpplib_parses_our_frames() -> None:
    parsed = smpplib_parse(encode(SAMPLE_SUBMIT))
    assert parsed.command == "submit_sm" and parsed.sequence == 7
    assert parsed.destination_addr == b"33600000001"
    assert parsed.short_message == SAMPLE_SUBMIT.short_message
    parsed = smpplib_parse(encode(DeliverSmResp(sequence=8, message_id="")))
    assert parsed.command == "deliver_sm_resp" and parsed.sequence == 8


# --------------------------------------------------------------------------- TLVs


def test_unknown_tlv_preserved_byte_for_byte() -> None:
    vendor = struct.pack(">HH", 0x1400, 5) + b"\x00\xffab\x00"
    empty = struct.pack(">HH", 0x1401, 0)
    frame = reframe(encode(SAMPLE_SUBMIT) + vendor + empty)
    sm = decode(frame)
    assert list(sm.tlvs) == [0x1400, 0x1401]
    assert sm.tlvs[0x1400] == b"\x00\xffab\x00" and sm.tlvs[0x1401] == b""
    assert encode(sm) == frame


def test_tlv_order_is_preserved() -> None:
    sm = SubmitSm(tlvs={0x1500: b"a", Tag.SAR_MSG_REF_NUM: b"\x00\x01", 0x0005: b"\x01"})
    assert list(decode(encode(sm)).tlvs) == [0x1500, Tag.SAR_MSG_REF_NUM, 0x0005]


def test_tlv_helpers() -> None:
    sm = SubmitSm()
    assert tlv_int(sm, Tag.SAR_MSG_REF_NUM) is None
    assert tlv_int(sm, Tag.SAR_MSG_REF_NUM, 0) == 0
    set_tlv_int(sm, Tag.SAR_MSG_REF_NUM, 0xBEEF)
    set_tlv_int(sm, Tag.NETWORK_ERROR_CODE, 0x030001)
    set_tlv_int(sm, 0x1400, 7, 4)
    assert sm.tlvs[Tag.SAR_MSG_REF_NUM] == b"\xbe\xef"
    assert sm.tlvs[Tag.NETWORK_ERROR_CODE] == b"\x03\x00\x01"
    assert sm.tlvs[0x1400] == b"\x00\x00\x00\x07"
    assert tlv_int(sm, 0x1400) == 7
    with pytest.raises(ValueError):
        set_tlv_int(sm, 0x1401, 1)  # no known size, none given
    set_tlv_str(sm, Tag.RECEIPTED_MESSAGE_ID, "abc")
    set_tlv_str(sm, Tag.ADDITIONAL_STATUS_INFO_TEXT, "raw", nul=False)
    assert sm.tlvs[Tag.RECEIPTED_MESSAGE_ID] == b"abc\0"
    assert sm.tlvs[Tag.ADDITIONAL_STATUS_INFO_TEXT] == b"raw"
    assert tlv_str(sm, Tag.RECEIPTED_MESSAGE_ID) == "abc"
    assert tlv_str(sm, Tag.ADDITIONAL_STATUS_INFO_TEXT) == "raw"
    assert tlv_str(sm, Tag.CALLBACK_NUM) is None
    back = decode(encode(sm))
    assert tlv_int(back, Tag.SAR_MSG_REF_NUM) == 0xBEEF
    assert tlv_str(back, Tag.RECEIPTED_MESSAGE_ID) == "abc"


# --------------------------------------------------------------------------- responses


def test_request_response_keeps_sequence_and_type() -> None:
    resp = SAMPLE_SUBMIT.response(message_id="x")
    assert resp == SubmitSmResp(sequence=7, message_id="x")
    assert DeliverSm(sequence=3).response() == DeliverSmResp(sequence=3)
    assert EnquireLink(sequence=4).response() == EnquireLinkResp(sequence=4)
    assert BindTransceiver(sequence=5).response(Status.ESME_RBINDFAIL) == BindTransceiverResp(
        sequence=5, status=Status.ESME_RBINDFAIL
    )
    assert BindReceiver(sequence=1).response(system_id="s") == BindReceiverResp(1, 0, {}, "s")
    assert BindTransmitter(sequence=1).response_class is BindTransmitterResp
    for request in ALL_SAMPLES:
        if request.response_class is not None:
            reply = request.response(Status.ESME_RSYSERR)
            assert type(reply) is request.response_class
            assert reply.command_id == request.command_id | 0x80000000
            assert (reply.sequence, reply.status) == (request.sequence, Status.ESME_RSYSERR)


@pytest.mark.parametrize(
    "pdu", [Outbind(), AlertNotification(), GenericNack(), SubmitSmResp(), UnbindResp()]
)
def test_pdus_without_response_refuse_to_build_one(pdu: Pdu) -> None:
    assert pdu.response_class is None
    with pytest.raises(TypeError):
        pdu.response()


def test_error_response_still_carries_its_body() -> None:
    frame = encode(SubmitSmResp(sequence=1, status=Status.ESME_RTHROTTLED, message_id="x"))
    assert frame[16:] == b"x\0"


def test_generic_nack_is_header_only() -> None:
    frame = encode(GenericNack(sequence=1, status=3, tlvs={0x1400: b"ignored"}))
    assert frame == header(CommandId.GENERIC_NACK, 1, 3)


@pytest.mark.parametrize(
    "cls",
    [SubmitSmResp, DeliverSmResp, DataSmResp, BindTransceiverResp, QuerySmResp, SubmitMultiResp],
)
def test_empty_body_error_responses_decode(cls: type[Pdu]) -> None:
    got = decode(header(cls.command_id, 12, Status.ESME_RTHROTTLED))
    assert got == cls(sequence=12, status=Status.ESME_RTHROTTLED)


def test_empty_body_success_response_is_malformed() -> None:
    err = error_of(header(CommandId.SUBMIT_SM_RESP, 12, 0))
    assert err.status == Status.ESME_RINVCMDLEN


# --------------------------------------------------------------------------- malformed input


def test_unknown_command_id_is_rinvcmdid() -> None:
    err = error_of(header(0x00000099, 77))
    assert (err.status, err.command_id, err.sequence) == (Status.ESME_RINVCMDID, 0x99, 77)
    assert "0x00000099" in err.detail


def test_command_length_mismatch_is_rinvcmdlen() -> None:
    frame = encode(SAMPLE_SUBMIT)
    err = error_of(frame + b"\0")
    assert (err.status, err.command_id, err.sequence) == (Status.ESME_RINVCMDLEN, 4, 7)
    assert error_of(frame[:-1]).status == Status.ESME_RINVCMDLEN
    assert error_of(frame[:10]).status == Status.ESME_RINVCMDLEN


def test_truncated_c_string_is_rinvcmdlen() -> None:
    err = error_of(header(CommandId.SUBMIT_SM, 5, 0, b"\0\x01\x01ACME"))
    assert (err.status, err.sequence) == (Status.ESME_RINVCMDLEN, 5)
    assert "source_addr" in err.detail
    err = error_of(header(CommandId.BIND_TRANSCEIVER, 5, 0, b"sys\0pw"))
    assert err.status == Status.ESME_RINVCMDLEN


def test_every_truncation_of_submit_sm_is_rinvcmdlen() -> None:
    frame = encode(SAMPLE_SUBMIT)
    for cut in range(17, len(frame)):
        assert error_of(reframe(frame[:cut])).status == Status.ESME_RINVCMDLEN, cut


def test_sm_length_overrun_is_rinvcmdlen() -> None:
    frame = bytearray(encode(SubmitSm(sequence=2, short_message=b"abc")))
    frame[-4] = 4  # sm_length says 4, only 3 octets follow
    err = error_of(bytes(frame))
    assert err.status == Status.ESME_RINVCMDLEN and "sm_length" in err.detail
    frame = bytearray(encode(ReplaceSm(sequence=2, short_message=b"abc")))
    frame[-4] = 200
    assert error_of(bytes(frame)).status == Status.ESME_RINVCMDLEN


def test_truncated_tlv_header_is_rinvoptparstream() -> None:
    for pdu in (SAMPLE_SUBMIT, SubmitSmResp(sequence=1, message_id="a"), EnquireLink(), QuerySm()):
        err = error_of(reframe(encode(pdu) + b"\x02\x0c\x00"))
        assert err.status == Status.ESME_RINVOPTPARSTREAM


def test_tlv_length_overrun_is_rinvoptparstream() -> None:
    bad = struct.pack(">HH", 0x1400, 10) + b"short"
    err = error_of(reframe(encode(SAMPLE_SUBMIT) + bad))
    assert (err.status, err.sequence) == (Status.ESME_RINVOPTPARSTREAM, 7)


def test_known_tlv_with_wrong_size_is_rinvparlen() -> None:
    bad = struct.pack(">HH", Tag.SAR_MSG_REF_NUM, 1) + b"\x01"
    assert error_of(reframe(encode(SAMPLE_SUBMIT) + bad)).status == Status.ESME_RINVPARLEN


def test_unknown_submit_multi_dest_flag_is_rinvdestflag() -> None:
    body = b"\0\0\0ACME\0" + b"\x01" + b"\x03x\0" + b"\0" * 14
    err = error_of(header(CommandId.SUBMIT_MULTI, 1, 0, body))
    assert err.status == Status.ESME_RINVDESTFLAG


def test_decode_accepts_bytearray_and_memoryview() -> None:
    frame = encode(SAMPLE_SUBMIT)
    assert decode(bytearray(frame)) == SAMPLE_SUBMIT
    assert decode(memoryview(frame)) == SAMPLE_SUBMIT


def test_pdu_error_str_names_status_and_header() -> None:
    text = str(error_of(header(0x99, 77)))
    assert "ESME_RINVCMDID" in text and "sequence=77" in text


# --------------------------------------------------------------------------- encode errors


@pytest.mark.parametrize(
    "bad",
    [
        SubmitSm(destination_addr="336\x00"),
        SubmitSm(short_message=b"x" * 256),
        SubmitSm(dest_addr_ton=256),
        SubmitSm(esm_class=-1),
        SubmitSm(source_addr="\u20ac"),
        SubmitSmResp(message_id="a\0b"),
        BindTransceiver(password="pw\0"),
        BindTransceiver(addr_ton=300),
        SubmitMulti(dests=[SmeDest(1, 1, "a\0")]),
        SubmitMultiResp(unsuccess=[UnsuccessSme(error=-1)]),
        SubmitSm(tlvs={0x1400: b"x" * 70000}),
        SubmitSm(sequence=1 << 32),
    ],
)
def test_unencodable_fields_raise_pdu_error(bad: Pdu) -> None:
    with pytest.raises(PduError) as info:
        encode(bad)
    assert info.value.status == Status.ESME_RSYSERR
    assert info.value.command_id == bad.command_id


# --------------------------------------------------------------------------- framing


def test_frame_reader_reassembles_one_byte_chunks() -> None:
    frames = [encode(p) for p in ALL_SAMPLES]
    stream = b"".join(frames)
    reader = FrameReader()
    got: list[bytes] = []
    for i in range(len(stream)):
        reader.feed(stream[i : i + 1])
        while (frame := reader.next_frame()) is not None:
            got.append(frame)
    assert got == frames
    assert reader.buffered == 0


def test_frame_reader_returns_many_frames_from_one_chunk() -> None:
    frames = [encode(EnquireLink(sequence=i)) for i in range(1000)]
    reader = FrameReader()
    reader.feed(b"".join(frames) + frames[0][:5])
    assert list(reader.frames()) == frames
    assert reader.next_frame() is None
    assert reader.buffered == 5
    reader.feed(frames[0][5:])
    assert reader.next_frame() == frames[0]


def test_frame_reader_waits_for_a_complete_frame() -> None:
    frame = encode(SAMPLE_SUBMIT)
    reader = FrameReader()
    reader.feed(frame[:3])
    assert reader.next_frame() is None
    reader.feed(frame[3:-1])
    assert reader.next_frame() is None
    reader.feed(frame[-1:])
    assert reader.next_frame() == frame
    assert reader.next_frame() is None


def test_frame_reader_rejects_length_below_header() -> None:
    reader = FrameReader()
    reader.feed(struct.pack(">IIII", 15, CommandId.ENQUIRE_LINK, 0, 9))
    with pytest.raises(FramingError) as info:
        reader.next_frame()
    assert info.value.status == Status.ESME_RINVCMDLEN
    assert (info.value.command_id, info.value.sequence) == (CommandId.ENQUIRE_LINK, 9)


def test_frame_reader_rejects_length_above_max() -> None:
    reader = FrameReader(max_length=1024)
    reader.feed(struct.pack(">I", 1025))
    with pytest.raises(FramingError):
        reader.next_frame()
    reader = FrameReader(max_length=1024)
    reader.feed(struct.pack(">I", 1024) + b"\0" * 1020)
    assert reader.next_frame() is not None
    assert isinstance(FramingError(0, "x"), PduError)
