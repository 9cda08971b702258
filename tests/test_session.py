"""The SMPP session state machine: legality per bind state, transitions, malformed input."""

from __future__ import annotations

import struct

import pytest

from smpp.constants import CommandId, Status
from smpp.pdu import (
    BindReceiver,
    BindTransceiver,
    BindTransmitter,
    DeliverSm,
    EnquireLink,
    GenericNack,
    SubmitSm,
    SubmitSmResp,
    Unbind,
    decode,
    encode,
)
from smpp.session import (
    BindState,
    ProtocolViolation,
    RequestReceived,
    ResponseReceived,
    Session,
    SessionError,
    Side,
    UnexpectedResponse,
)


def _bound_pair(bind: type[BindTransmitter] | type[BindReceiver] | type[BindTransceiver]
                ) -> tuple[Session, Session]:
    esme, smsc = Session(Side.ESME), Session(Side.SMSC)
    esme.send(bind(system_id="a", password="b"))
    [req] = smsc.receive_data(esme.data_to_send())
    assert isinstance(req, RequestReceived)
    smsc.send(req.pdu.response(system_id="gw"))
    [resp] = esme.receive_data(smsc.data_to_send())
    assert isinstance(resp, ResponseReceived)
    return esme, smsc


@pytest.mark.parametrize(("bind", "state"), [
    (BindTransmitter, BindState.BOUND_TX),
    (BindReceiver, BindState.BOUND_RX),
    (BindTransceiver, BindState.BOUND_TRX),
])
def test_successful_bind_moves_both_sides_to_the_same_bound_state(bind, state) -> None:  # type: ignore[no-untyped-def]
    esme, smsc = _bound_pair(bind)
    assert esme.state is state
    assert smsc.state is state


def test_failed_bind_leaves_the_session_open() -> None:
    esme, smsc = Session(Side.ESME), Session(Side.SMSC)
    esme.send(BindTransceiver(system_id="a", password="wrong"))
    [req] = smsc.receive_data(esme.data_to_send())
    assert isinstance(req, RequestReceived)
    smsc.send(req.pdu.response(status=Status.ESME_RINVPASWD))
    [resp] = esme.receive_data(smsc.data_to_send())
    assert isinstance(resp, ResponseReceived)
    assert resp.response.status == Status.ESME_RINVPASWD
    assert esme.state is BindState.OPEN and smsc.state is BindState.OPEN


def test_submit_before_bind_closes_the_connection_without_an_answer() -> None:
    smsc = Session(Side.SMSC)
    frame = encode(SubmitSm(sequence=7, destination_addr="336"))
    [event] = smsc.receive_data(frame + encode(EnquireLink(sequence=8)))
    assert isinstance(event, ProtocolViolation) and event.fatal
    assert smsc.data_to_send() == b""  # an unauthenticated peer gets nothing written for it
    assert smsc.state is BindState.CLOSED


@pytest.mark.parametrize("side", [Side.SMSC, Side.ESME])
def test_only_a_few_pdus_are_answered_before_bind(side: Side) -> None:
    session = Session(side, prebind_limit=8)
    events = session.receive_data(b"".join(encode(EnquireLink(sequence=i))
                                           for i in range(1, 21)))
    assert [type(e) for e in events] == [RequestReceived] * 8 + [ProtocolViolation]
    assert isinstance(events[-1], ProtocolViolation) and events[-1].fatal
    assert session.state is BindState.CLOSED
    assert session.next_event() is None


def test_frames_longer_than_a_bind_are_fatal_before_bind_and_allowed_after() -> None:
    smsc = Session(Side.SMSC, prebind_max_pdu_size=1024, max_pdu_size=65536)
    big = encode(SubmitSm(sequence=2, destination_addr="1", short_message=b"x" * 200,
                          tlvs={0x0424: b"y" * 2000}))
    [event] = smsc.receive_data(big[:20])  # the header alone is enough to refuse it
    assert isinstance(event, ProtocolViolation) and event.fatal
    _esme, smsc = _bound_pair(BindTransceiver)
    [event] = smsc.receive_data(big)
    assert isinstance(event, RequestReceived)


def test_bind_goes_through_binding_and_a_second_bind_meanwhile_is_already_bound() -> None:
    esme, smsc = Session(Side.ESME), Session(Side.SMSC)
    esme.send(BindTransceiver(system_id="a", password="b"))
    assert esme.state is BindState.BINDING
    [req] = smsc.receive_data(esme.data_to_send())
    assert isinstance(req, RequestReceived) and smsc.state is BindState.BINDING
    [again] = smsc.receive_data(encode(BindTransmitter(sequence=9, system_id="a")))
    assert isinstance(again, ProtocolViolation) and not again.fatal
    assert decode(smsc.data_to_send()).status == Status.ESME_RALYBND
    assert smsc.state is BindState.BINDING


def test_unbind_before_bind_is_answered_and_closes() -> None:
    smsc = Session(Side.SMSC)
    [req] = smsc.receive_data(encode(Unbind(sequence=3)))
    assert isinstance(req, RequestReceived) and smsc.state is BindState.UNBINDING
    smsc.send(req.pdu.response())
    assert smsc.state is BindState.CLOSED


def test_generic_nack_to_a_bind_leaves_the_session_open_but_not_to_an_enquire_link() -> None:
    esme = Session(Side.ESME)
    probe = esme.send(EnquireLink())
    bind = esme.send(BindTransceiver(system_id="a", password="b"))
    esme.data_to_send()
    [nack] = esme.receive_data(encode(GenericNack(sequence=probe, status=Status.ESME_RSYSERR)))
    assert isinstance(nack, ResponseReceived) and esme.state is BindState.BINDING
    [nack] = esme.receive_data(encode(GenericNack(sequence=bind, status=Status.ESME_RSYSERR)))
    assert isinstance(nack, ResponseReceived) and esme.state is BindState.OPEN


def test_generic_nack_is_a_failure_even_with_status_zero() -> None:
    """A peer that nacks with command_status 0 has still not taken the PDU: no bind, and the
    answer handed up is an error (else a nacked submit_sm would count as accepted by the
    operator, a nacked receipt as delivered upstream)."""
    esme = Session(Side.ESME)
    bind = esme.send(BindTransceiver(system_id="a", password="b"))
    esme.data_to_send()
    [nack] = esme.receive_data(encode(GenericNack(sequence=bind, status=0)))
    assert isinstance(nack, ResponseReceived) and nack.response.status == Status.ESME_RSYSERR
    assert esme.state is BindState.OPEN
    esme, smsc = _bound_pair(BindTransceiver)
    submit = esme.send(SubmitSm(destination_addr="33612345678", short_message=b"hi"))
    deliver = smsc.send(DeliverSm(destination_addr="ACME", short_message=b"id:1 stat:DELIVRD"))
    esme.data_to_send()
    smsc.data_to_send()
    [nack] = esme.receive_data(encode(GenericNack(sequence=submit, status=0)))
    assert isinstance(nack, ResponseReceived) and nack.response.status == Status.ESME_RSYSERR
    [nack] = smsc.receive_data(encode(GenericNack(sequence=deliver, status=0)))
    assert isinstance(nack, ResponseReceived) and nack.response.status == Status.ESME_RSYSERR
    assert esme.state is smsc.state is BindState.BOUND_TRX


def test_malformed_pdu_before_bind_is_fatal_but_a_malformed_bind_is_answered() -> None:
    smsc = Session(Side.SMSC)
    [event] = smsc.receive_data(struct.pack(">IIII", 16, 0x000000AB, 0, 42))
    assert isinstance(event, ProtocolViolation) and event.fatal
    assert smsc.data_to_send() == b""
    smsc = Session(Side.SMSC)
    broken = struct.pack(">IIII", 17, CommandId.BIND_TRANSCEIVER, 0, 5) + b"a"  # no NUL
    [event] = smsc.receive_data(broken)
    assert isinstance(event, ProtocolViolation) and not event.fatal
    answer = decode(smsc.data_to_send())
    assert answer.command_id == CommandId.BIND_TRANSCEIVER_RESP and answer.status != 0


def test_queued_octets_are_counted_until_taken() -> None:
    esme, _ = _bound_pair(BindTransceiver)
    esme.send(SubmitSm(destination_addr="1"))
    esme.send(SubmitSm(destination_addr="2"))
    queued = esme.buffered
    assert queued > 32
    assert len(esme.data_to_send()) == queued and esme.buffered == 0


def test_submit_on_a_receiver_bind_is_refused() -> None:
    _, smsc = _bound_pair(BindReceiver)
    [event] = smsc.receive_data(encode(SubmitSm(sequence=3)))
    assert isinstance(event, ProtocolViolation)
    assert decode(smsc.data_to_send()).status == Status.ESME_RINVBNDSTS


def test_deliver_sm_from_an_esme_is_refused() -> None:
    _, smsc = _bound_pair(BindTransceiver)
    [event] = smsc.receive_data(encode(DeliverSm(sequence=3)))
    assert isinstance(event, ProtocolViolation)
    assert decode(smsc.data_to_send()).status == Status.ESME_RINVBNDSTS


def test_second_bind_on_a_bound_session_gets_already_bound() -> None:
    _, smsc = _bound_pair(BindTransceiver)
    smsc.receive_data(encode(BindTransceiver(sequence=9, system_id="a")))
    answer = decode(smsc.data_to_send())
    assert answer.status == Status.ESME_RALYBND


def test_we_cannot_send_a_request_the_state_forbids() -> None:
    esme = Session(Side.ESME)
    with pytest.raises(SessionError):
        esme.send(SubmitSm(destination_addr="1"))


def test_sequence_numbers_increase_and_responses_match_requests() -> None:
    esme, smsc = _bound_pair(BindTransceiver)
    seqs = [esme.send(SubmitSm(destination_addr=str(i))) for i in range(3)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    events = smsc.receive_data(esme.data_to_send())
    for ev in reversed(events):  # answer out of order
        assert isinstance(ev, RequestReceived)
        smsc.send(ev.pdu.response(message_id=f"id{ev.pdu.sequence}"))
    answers = esme.receive_data(smsc.data_to_send())
    assert all(isinstance(a, ResponseReceived) for a in answers)
    for a in answers:
        assert isinstance(a, ResponseReceived)
        assert isinstance(a.response, SubmitSmResp)
        assert a.response.message_id == f"id{a.request.sequence}"
    assert not esme.outstanding


def test_sequence_wraps_below_the_31_bit_limit() -> None:
    esme = Session(Side.ESME)
    esme._next_seq = 0x7FFFFFFF
    assert esme.next_sequence() == 0x7FFFFFFF
    assert esme.next_sequence() == 1


def test_response_without_request_is_reported_not_fatal() -> None:
    esme, _ = _bound_pair(BindTransceiver)
    [event] = esme.receive_data(encode(SubmitSmResp(sequence=999, message_id="x")))
    assert isinstance(event, UnexpectedResponse)
    assert esme.bound


def test_generic_nack_answers_the_outstanding_request() -> None:
    esme, _ = _bound_pair(BindTransceiver)
    seq = esme.send(SubmitSm(destination_addr="1"))
    [event] = esme.receive_data(encode(GenericNack(sequence=seq, status=Status.ESME_RINVCMDLEN)))
    assert isinstance(event, ResponseReceived)
    assert event.response.status == Status.ESME_RINVCMDLEN


def test_unknown_command_id_gets_generic_nack_and_session_survives() -> None:
    _, smsc = _bound_pair(BindTransceiver)
    frame = struct.pack(">IIII", 16, 0x000000AB, 0, 42)
    [event] = smsc.receive_data(frame + encode(EnquireLink(sequence=43)))[:1]
    assert isinstance(event, ProtocolViolation) and not event.fatal
    nack = decode(smsc.data_to_send())
    assert nack.command_id == CommandId.GENERIC_NACK
    assert nack.status == Status.ESME_RINVCMDID and nack.sequence == 42
    assert smsc.bound


def test_truncated_submit_gets_submit_sm_resp_error_and_the_next_pdu_still_parses() -> None:
    _, smsc = _bound_pair(BindTransceiver)
    good = encode(SubmitSm(sequence=5, destination_addr="33600000000", short_message=b"hi"))
    body = good[16:]
    broken = struct.pack(">IIII", 16 + 4, CommandId.SUBMIT_SM, 0, 4) + body[:4]
    events = smsc.receive_data(broken + good)
    assert isinstance(events[0], ProtocolViolation) and not events[0].fatal
    assert isinstance(events[1], RequestReceived)
    answer = decode(smsc.data_to_send())
    assert answer.command_id == CommandId.SUBMIT_SM_RESP
    assert answer.sequence == 4 and answer.status == Status.ESME_RINVCMDLEN


def test_malformed_tlv_stream_is_answered_with_the_tlv_error_status() -> None:
    _, smsc = _bound_pair(BindTransceiver)
    good = encode(SubmitSm(sequence=6, destination_addr="33600000000", short_message=b"hi"))
    broken = good + b"\x04\x24\x00"  # a TLV header cut short
    broken = struct.pack(">I", len(broken)) + broken[4:]
    [event] = smsc.receive_data(broken)
    assert isinstance(event, ProtocolViolation)
    answer = decode(smsc.data_to_send())
    assert answer.command_id == CommandId.SUBMIT_SM_RESP
    assert answer.status == Status.ESME_RINVOPTPARSTREAM


@pytest.mark.parametrize("length", [0, 8, 15, 10_000_000])
def test_impossible_command_length_is_fatal(length: int) -> None:
    _, smsc = _bound_pair(BindTransceiver)
    [event] = smsc.receive_data(struct.pack(">IIII", length, CommandId.SUBMIT_SM, 0, 1))
    assert isinstance(event, ProtocolViolation) and event.fatal
    assert decode(smsc.data_to_send()).command_id == CommandId.GENERIC_NACK
    assert smsc.state is BindState.CLOSED


def test_unbind_then_unbind_resp_closes_both_sides() -> None:
    esme, smsc = _bound_pair(BindTransmitter)
    esme.send(Unbind())
    assert esme.state is BindState.UNBINDING
    [req] = smsc.receive_data(esme.data_to_send())
    assert isinstance(req, RequestReceived)
    smsc.send(req.pdu.response())
    assert smsc.state is BindState.CLOSED
    esme.receive_data(smsc.data_to_send())
    assert esme.state is BindState.CLOSED


def test_enquire_link_is_legal_before_bind() -> None:
    smsc = Session(Side.SMSC)
    [event] = smsc.receive_data(encode(EnquireLink(sequence=1)))
    assert isinstance(event, RequestReceived)
