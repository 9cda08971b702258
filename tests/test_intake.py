"""Intake rules: which upstream submits are accepted, and the command_status of each refusal."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.intake import IntakeError, IntakePolicy, accept_multi, accept_submit
from gateway.model import State
from smpp.constants import Status, Tag
from smpp.pdu import DataSm, DlDest, SmeDest, SubmitMulti, SubmitSm

NOW = 1_790_000_000.0
DAY = 86400.0
POLICY = IntakePolicy(validity=DAY)


def submit(**fields: object) -> SubmitSm:
    base = SubmitSm(source_addr="ACME", source_addr_ton=5, destination_addr="33612345678",
                    dest_addr_ton=1, dest_addr_npi=1, short_message=b"hello",
                    registered_delivery=1)
    return dataclasses.replace(base, **fields)  # type: ignore[arg-type]


def refused(pdu: SubmitSm | DataSm, policy: IntakePolicy = POLICY) -> int:
    with pytest.raises(IntakeError) as err:
        accept_submit("acme", pdu, NOW, policy)
    return err.value.status


def test_default_validity_is_24h_from_acceptance() -> None:
    msg = accept_submit("acme", submit(), NOW, POLICY)
    assert msg.expires_at == NOW + DAY
    assert msg.state is State.QUEUED and msg.not_before == NOW


def test_shorter_upstream_validity_wins_and_longer_is_capped() -> None:
    short = accept_submit("acme", submit(validity_period="000000010000000R"), NOW, POLICY)
    assert short.expires_at == NOW + 3600
    long = accept_submit("acme", submit(validity_period="000003000000000R"), NOW, POLICY)
    assert long.expires_at == NOW + DAY


def test_account_validity_caps_the_default() -> None:
    msg = accept_submit("acme", submit(), NOW, IntakePolicy(DAY, max_validity=600))
    assert msg.expires_at == NOW + 600


def test_schedule_delivery_time_defers_the_message() -> None:
    msg = accept_submit("acme", submit(schedule_delivery_time="000000000500000R"), NOW, POLICY)
    assert msg.state is State.SCHEDULED and msg.not_before == NOW + 300


@pytest.mark.parametrize(("fields", "status"), [
    ({"destination_addr": ""}, Status.ESME_RINVDSTADR),
    ({"destination_addr": "33 6 12"}, Status.ESME_RINVDSTADR),
    ({"destination_addr": "1" * 21}, Status.ESME_RINVDSTADR),
    ({"dest_addr_ton": 9}, Status.ESME_RINVDSTTON),
    ({"dest_addr_npi": 7}, Status.ESME_RINVDSTNPI),
    ({"source_addr": "TwelveChars!"}, Status.ESME_RINVSRCADR),
    ({"source_addr_ton": 1, "source_addr": "ACME"}, Status.ESME_RINVSRCADR),
    ({"source_addr_ton": 8}, Status.ESME_RINVSRCTON),
    ({"registered_delivery": 3}, Status.ESME_RINVREGDLVFLG),
    ({"esm_class": 0x04}, Status.ESME_RINVESMCLASS),
    ({"priority_flag": 4}, Status.ESME_RINVPRTFLG),
    ({"validity_period": "garbage"}, Status.ESME_RINVEXPIRY),
    ({"schedule_delivery_time": "garbage"}, Status.ESME_RINVSCHED),
    ({"schedule_delivery_time": "000002000000000R"}, Status.ESME_RINVSCHED),  # after validity
    ({"esm_class": 0x40, "short_message": b"\x05\x00"}, Status.ESME_RINVESMCLASS),
    ({"data_coding": 8, "short_message": b"\x00A\x00"}, Status.ESME_RINVMSGLEN),
])
def test_invalid_submit_is_refused_with_the_matching_status(fields: dict[str, object],
                                                             status: int) -> None:
    assert refused(submit(**fields)) == status


def test_short_message_and_message_payload_together_are_refused() -> None:
    pdu = submit()
    pdu.tlvs[Tag.MESSAGE_PAYLOAD] = b"more"
    assert refused(pdu) == Status.ESME_RINVOPTPARAMVAL


def test_message_payload_is_the_body_when_short_message_is_empty() -> None:
    pdu = submit(short_message=b"")
    pdu.tlvs[Tag.MESSAGE_PAYLOAD] = b"x" * 500
    assert accept_submit("acme", pdu, NOW, POLICY).body == b"x" * 500


def test_oversize_message_is_refused_with_rinvmsglen() -> None:
    pdu = submit(short_message=b"")
    pdu.tlvs[Tag.MESSAGE_PAYLOAD] = b"x" * 40_000
    assert refused(pdu) == Status.ESME_RINVMSGLEN


def test_data_sm_takes_its_body_from_message_payload() -> None:
    pdu = DataSm(source_addr="ACME", source_addr_ton=5, destination_addr="33612345678",
                 dest_addr_ton=1, dest_addr_npi=1, registered_delivery=1)
    pdu.tlvs[Tag.MESSAGE_PAYLOAD] = b"data"
    msg = accept_submit("acme", pdu, NOW, POLICY)
    assert msg.body == b"data" and msg.expires_at == NOW + DAY


def test_submit_multi_sends_duplicates_once_and_lists_refused_destinations() -> None:
    pdu = SubmitMulti(source_addr="ACME", source_addr_ton=5, short_message=b"hi", dests=[
        SmeDest(1, 1, "33611111111"), SmeDest(1, 1, "+33611111111"),
        SmeDest(1, 1, "33622222222"), SmeDest(1, 1, "bad"), DlDest("friends")])
    result = accept_multi("acme", pdu, NOW, POLICY)
    assert [m.dest_addr for m in result.messages] == ["33611111111", "33622222222"]
    first, second = result.messages
    assert second.id == f"{first.id}:2"
    assert {(u[2], u[3]) for u in result.unsuccess} == {
        ("bad", Status.ESME_RINVDSTADR), ("friends", Status.ESME_RINVDLNAME)}


def test_submit_multi_without_any_valid_destination_is_refused() -> None:
    pdu = SubmitMulti(source_addr="ACME", source_addr_ton=5, dests=[SmeDest(1, 1, "x")])
    with pytest.raises(IntakeError) as err:
        accept_multi("acme", pdu, NOW, POLICY)
    assert err.value.status == Status.ESME_RINVDSTADR


@pytest.mark.parametrize(("fields", "field", "problem"), [
    ({"destination_addr": "+447700900123456789012"}, "destination address", "has 21 digits"),
    ({"destination_addr": "4477 0090 0123"}, "destination address", "at position 5"),
    ({"destination_addr": "+"}, "destination address", "is empty"),
    ({"source_addr_ton": 1, "source_addr": "44770090012x"}, "source address", "position 12"),
    ({"source_addr": "Shop 447700900123"}, "alphanumeric source address", "has 17 characters"),
    ({"source_addr": "Shop\n447700"}, "alphanumeric source address", "unprintable"),
])
def test_refusal_detail_names_the_field_and_problem_but_never_quotes_the_number(
        fields: dict[str, object], field: str, problem: str) -> None:
    with pytest.raises(IntakeError) as err:
        accept_submit("acme", submit(**fields), NOW, POLICY)
    detail = err.value.detail
    assert detail.startswith(field) and problem in detail
    assert "447700" not in detail and "0090" not in detail

