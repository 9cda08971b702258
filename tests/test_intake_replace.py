"""Intake rules of a replace_sm (accept_replace): empty times keep the message's own, a new
validity is capped from the original acceptance, the new text gets a submit's checks in the
message's own encoding, and each refusal has its command_status."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.intake import IntakeError, IntakePolicy, accept_replace, accept_submit
from gateway.model import Message
from smpp.constants import Status
from smpp.pdu import ReplaceSm, SubmitSm

NOW = 1_790_000_000.0
DAY = 86400.0
POLICY = IntakePolicy(validity=DAY, max_parts=2)


def stored(**fields: object) -> Message:
    """A message accepted an hour ago, scheduled for an hour from now."""
    pdu = SubmitSm(source_addr="ACME", source_addr_ton=5, destination_addr="33612345678",
                   dest_addr_ton=1, dest_addr_npi=1, short_message=b"hello",
                   registered_delivery=1, schedule_delivery_time="000000020000000R")
    msg = accept_submit("acme", dataclasses.replace(pdu, **fields),  # type: ignore[arg-type]
                        NOW - 3600, POLICY)
    return msg


def replace(msg: Message, **fields: object) -> object:
    pdu = dataclasses.replace(ReplaceSm(message_id=msg.id, source_addr="ACME",
                                        short_message=b"new"), **fields)  # type: ignore[arg-type]
    return accept_replace(msg, pdu, NOW, POLICY)


def test_empty_times_keep_the_messages_own_and_the_rest_is_taken_as_given() -> None:
    msg = stored()
    new = replace(msg, registered_delivery=0)
    assert new == type(new)(b"new", 0, msg.expires_at, msg.not_before)  # type: ignore[call-arg]


def test_a_new_validity_is_capped_from_the_original_acceptance_and_relative_to_now() -> None:
    msg = stored()
    longer = replace(msg, validity_period="000002000000000R")  # two days from now
    assert longer.expires_at == msg.created_at + DAY  # type: ignore[attr-defined]
    shorter = replace(msg, validity_period="000000030000000R", schedule_delivery_time="")
    assert shorter.expires_at == NOW + 3 * 3600  # type: ignore[attr-defined]
    sooner = replace(msg, schedule_delivery_time="000000000100000R")
    assert sooner.not_before == NOW + 60  # type: ignore[attr-defined]


@pytest.mark.parametrize(("fields", "status"), [
    ({"registered_delivery": 3}, Status.ESME_RINVREGDLVFLG),
    ({"sm_default_msg_id": 1}, Status.ESME_RINVDFTMSGID),
    ({"validity_period": "000000000010000R"}, Status.ESME_RINVSCHED),  # before the schedule
    ({"validity_period": "200101000000000+"}, Status.ESME_RINVEXPIRY),  # in the past
    ({"validity_period": "garbage"}, Status.ESME_RINVEXPIRY),
    ({"schedule_delivery_time": "garbage"}, Status.ESME_RINVSCHED),
    ({"schedule_delivery_time": "000001000000000R"}, Status.ESME_RINVSCHED),  # after expiry
    ({"short_message": b"x" * 254 + b"y" * 100}, Status.ESME_RINVMSGLEN),  # 3 parts > 2
])
def test_a_bad_replacement_is_refused_with_its_status(fields: dict[str, object],
                                                      status: int) -> None:
    msg = stored()
    if fields.get("short_message"):
        msg.body = b"x"  # the length check does not depend on the old text
    with pytest.raises(IntakeError) as err:
        replace(msg, **fields)
    assert err.value.status == status


def test_the_new_text_is_checked_in_the_messages_own_encoding_and_header() -> None:
    ucs2 = stored(data_coding=8, short_message="hé".encode("utf-16-be"))
    with pytest.raises(IntakeError) as err:
        replace(ucs2, short_message=b"\x00h\x00")  # odd length: not UCS-2
    assert err.value.status == Status.ESME_RINVMSGLEN
    udh = stored(esm_class=0x40, short_message=b"\x05\x00\x03\x01\x02\x01hi")
    with pytest.raises(IntakeError) as err:
        replace(udh, short_message=b"\x20short")
    assert err.value.status == Status.ESME_RINVESMCLASS
