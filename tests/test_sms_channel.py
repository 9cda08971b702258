"""The SMS channel (routing/sms.py) over the project's SMSC simulator on 127.0.0.1: the Channel
protocol's promises for SMPP (segments, TON/NPI policy, validity from the deadline, submit
answers as SendResults, receipts and MO as channel-neutral events)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from gateway.config import SimulatorConfig, SmscConfig
from gateway.model import Message, PartState, new_message_id
from gateway.simulator import SmscSimulator
from routing.channel import (
    SMS,
    Answered,
    Channel,
    MobileOriginated,
    ProviderReceipt,
    Revoked,
    SendResult,
    Unsendable,
)
from routing.sms import Parked, SmsChannel, receipt_keys
from routing.smsc import Answer, SmscConnector, SubmitResult, classify
from smpp.constants import Status
from smpp.pdu import Pdu
from smpp.smpptime import parse_smpp_time
from smpp.text import encode_text

HOUR = 3600.0


@pytest.fixture
def clock() -> trio.testing.MockClock:
    # virtual time; the threshold lets the sockets' I/O (127.0.0.1) happen between jumps
    return trio.testing.MockClock(autojump_threshold=0.02)


class Sink:
    """A ChannelEvents that records what the channel hands it and answers as told."""

    def __init__(self) -> None:
        self.got: list[ProviderReceipt] = []
        self.mo: list[MobileOriginated] = []
        self.stored = True
        self.changed = trio.Event()

    async def receipts(self, channel: Channel, receipts: Sequence[ProviderReceipt],
                       answered: Answered, parked: Parked | None = None) -> None:
        for i, receipt in enumerate(receipts):
            self.got.append(receipt)
            answered(i, self.stored)
        self.changed.set()

    async def mobile_originated(self, channel: Channel, messages: Sequence[MobileOriginated],
                                answered: Answered) -> None:
        for i, mo in enumerate(messages):
            self.mo.append(mo)
            answered(i, self.stored)
        self.changed.set()

    async def wait(self, ready: Any) -> None:
        with trio.fail_after(60):
            while not ready():
                self.changed = trio.Event()
                await self.changed.wait()


async def _unattached(_c: SmscConnector, pdus: list[Pdu], answer: Answer) -> None:
    raise AssertionError("the channel attaches itself to its connector")


@asynccontextmanager
async def sms_channel(sim: dict[str, Any] | None = None, **smsc: Any
                      ) -> AsyncIterator[tuple[SmsChannel, SmscSimulator, Sink]]:
    simulator = SmscSimulator(SimulatorConfig(**{"port": 0, "control_port": 0, "seed": 7,
                                                 "receipt_delay": 1.0, **(sim or {})}))
    sink = Sink()
    async with trio.open_nursery() as nursery:
        await nursery.start(simulator.serve)
        connector = SmscConnector(SmscConfig(name="opA", host="127.0.0.1", port=simulator.port,
                                             system_id="sim", password="simpass", **smsc),
                                  _unattached)
        channel = SmsChannel(connector, sink)
        await nursery.start(connector.run)
        with trio.fail_after(30):
            while not channel.is_up():
                await channel.wait_changed()
        yield channel, simulator, sink
        nursery.cancel_scope.cancel()


def message(text: str = "hello", **fields: Any) -> Message:
    now = trio.current_time()
    dc, body = encode_text(text)
    values: dict[str, Any] = {
        "id": new_message_id(), "account": "acme", "source_addr": "ACME", "source_ton": 5,
        "source_npi": 0, "dest_addr": "+33612345678", "dest_ton": 1, "dest_npi": 1,
        "data_coding": dc, "esm_class": 0, "protocol_id": 0, "priority": 0,
        "registered_delivery": 1, "body": body, "created_at": now, "expires_at": now + HOUR,
        "not_before": now, **fields}
    return Message(**values)


async def send_all(channel: SmsChannel, msg: Message, deadline: float) -> list[SendResult]:
    """Prepare and submit every unit; their SendResults in unit order."""
    units = channel.prepare(msg)
    results: dict[int, SendResult] = {}
    done = trio.Event()

    def record(number: int, result: SendResult) -> None:
        results[number] = result
        if len(results) == len(units):
            done.set()

    for unit in units:
        channel.submit_nowait(msg, unit, deadline, lambda r, n=unit.number: record(n, r))
    with trio.fail_after(60):
        await done.wait()
    return [results[n] for n in sorted(results)]


async def test_the_sms_channel_is_a_channel_of_kind_sms() -> None:
    async with sms_channel() as (channel, _sim, _sink):
        assert isinstance(channel, Channel)
        assert channel.kind == SMS and channel.name == "opA"
        assert channel.capacity == 10  # one bind, window 10


async def test_a_long_text_goes_as_concatenated_segments_each_acknowledged_with_its_id(
        clock: trio.testing.MockClock) -> None:
    async with sms_channel() as (channel, sim, _sink):
        msg = message("x" * 400)  # GSM: 3 segments of at most 153 characters
        results = await send_all(channel, msg, trio.current_time() + HOUR)
        assert [r.ok for r in results] == [True, True, True]
        assert [r.provider_id for r in results] == [s.message_id for s in sim.submitted]
        concat = [s.concat for s in sim.submitted]
        assert [c[1:] for c in concat if c] == [(3, 1), (3, 2), (3, 3)]
        assert len({c[0] for c in concat if c}) == 1  # one reference for the three
        assert "".join(s.text or "" for s in sim.submitted) == "x" * 400


async def test_the_smsc_ton_npi_policy_overrides_the_upstreams_where_configured(
        clock: trio.testing.MockClock) -> None:
    async with sms_channel(source_ton=1, source_npi=1) as (channel, sim, _sink):
        await send_all(channel, message(), trio.current_time() + HOUR)
        [record] = sim.submitted
        assert (record.source_ton, record.source_npi) == (1, 1)  # configured
        assert (record.dest_ton, record.dest_npi) == (1, 1)  # the upstream's, kept
        assert record.destination_addr == "33612345678"  # no '+' on the wire
        assert record.registered_delivery == 1  # always: receipts drive the final state


async def test_the_validity_period_is_what_is_left_until_the_deadline(
        clock: trio.testing.MockClock) -> None:
    async with sms_channel() as (channel, sim, _sink):
        await send_all(channel, message(), trio.current_time() + 2 * HOUR)
        [record] = sim.submitted
        left = parse_smpp_time(record.validity_period, 0.0)
        assert left is not None and 2 * HOUR - 5 <= left <= 2 * HOUR


async def test_a_unit_whose_deadline_passed_is_not_sent_and_says_expired(
        clock: trio.testing.MockClock) -> None:
    async with sms_channel() as (channel, sim, _sink):
        [result] = await send_all(channel, message(), trio.current_time() - 1)
        assert result.expired and not result.ok and not sim.submitted


async def test_a_message_too_long_for_the_smsc_is_unsendable_with_invalid_length() -> None:
    async with sms_channel() as (channel, _sim, _sink):
        with pytest.raises(Unsendable) as refused:
            channel.prepare(message("x" * 153 * 256))  # 256 parts: more than 8-bit UDH takes
        assert refused.value.status == Status.ESME_RINVMSGLEN


@pytest.mark.parametrize("failure, status", [("throttle", Status.ESME_RTHROTTLED),
                                             ("error", Status.ESME_RSYSERR)])
async def test_throttling_and_system_errors_are_temporary(
        failure: str, status: int, clock: trio.testing.MockClock) -> None:
    async with sms_channel({failure: 1.0}) as (channel, _sim, _sink):
        [result] = await send_all(channel, message(), trio.current_time() + HOUR)
        assert not result.ok and result.temporary and result.status == status
        assert not result.rejected and not result.not_capable


@pytest.mark.parametrize("status, rejected", [(Status.ESME_RINVDSTADR, True),
                                              (Status.ESME_RSUBMITFAIL, False)])
def test_permanent_refusals_say_whether_the_message_is_at_fault(status: int,
                                                                 rejected: bool) -> None:
    from routing.sms import send_result

    result = send_result(classify(status, None))
    assert not result.ok and not result.temporary and result.rejected is rejected
    assert result.status == status


def test_a_submit_result_is_the_send_result_of_its_unit_field_for_field() -> None:
    from routing.sms import send_result

    accepted = classify(Status.ESME_ROK, "0A1B")
    assert send_result(accepted) is accepted  # handed on as it is, no copy per submit
    assert isinstance(accepted, SendResult) and accepted.ok
    assert (accepted.provider_id, accepted.smsc_id, accepted.status) == ("0A1B", "0A1B", 0)
    late = SubmitResult(None, Status.ESME_RINVEXPIRY, detail="validity over", expired=True)
    assert not late.ok and late.expired and late.detail == "validity over"
    assert not (late.temporary or late.rejected or late.not_capable)
    assert SubmitResult("x", 0) == SubmitResult("x", 0) != SubmitResult("y", 0)


async def test_receipts_become_provider_receipts_with_the_outcome_of_their_stat(
        clock: trio.testing.MockClock) -> None:
    async with sms_channel({"delivered": 0.0, "undeliverable": 1.0}) as (channel, _sim, sink):
        [sent] = await send_all(channel, message(), trio.current_time() + HOUR)
        await sink.wait(lambda: sink.got)
        [receipt] = sink.got
        assert receipt.provider_id == sent.provider_id
        assert (receipt.outcome, receipt.word) == (PartState.UNDELIVERABLE, "UNDELIV")
        assert receipt.raw.startswith(b"id:")


async def test_a_delivered_receipt_is_delivered(clock: trio.testing.MockClock) -> None:
    async with sms_channel() as (channel, _sim, sink):
        [sent] = await send_all(channel, message(), trio.current_time() + HOUR)
        await sink.wait(lambda: sink.got)
        assert [(r.provider_id, r.outcome) for r in sink.got] == [
            (sent.provider_id, PartState.DELIVERED)]


async def test_a_receipt_not_stored_is_refused_so_the_smsc_sends_it_again(
        clock: trio.testing.MockClock) -> None:
    async with sms_channel() as (channel, _sim, sink):
        sink.stored = False
        await send_all(channel, message(), trio.current_time() + HOUR)
        await sink.wait(lambda: len(sink.got) >= 2)  # refused, then offered again
        assert sink.got[0] == sink.got[1]
        sink.stored = True


async def test_mo_become_mobile_originated_messages(clock: trio.testing.MockClock) -> None:
    async with sms_channel() as (_channel, sim, sink):
        await sim.inject_mo("+33699999999", "36111", "STOP")
        await sink.wait(lambda: sink.mo)
        [mo] = sink.mo
        assert (mo.sender, mo.recipient, mo.body, mo.data_coding) == (
            "33699999999", "36111", encode_text("STOP")[1], 0)
        assert (mo.sender_ton, mo.sender_npi) == (1, 1)


async def test_sms_cannot_be_revoked() -> None:
    async with sms_channel() as (channel, _sim, _sink):
        assert await channel.revoke(message(), "abc") is Revoked.UNSUPPORTED


def test_receipt_ids_match_in_the_spellings_the_smsc_is_configured_for() -> None:
    assert receipt_keys("1F", "hex") == ["1f", "31"]
    assert receipt_keys("0031", "as-is") == ["31"]
    assert "1f" in receipt_keys("31", "auto")
