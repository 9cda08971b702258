"""Operator receipts are answered OK only once their effect is stored, never dropped silently.

A receipt whose write fails is refused (temporary error) until stored, across a restart too;
one that matches no part under the SMSC's receipt_id_format is an orphan (stored, warned,
counted), not "late"; a receipt held for matching delays only its own deliver_sm_resp.
Virtual time over the real SQLite store, with scripted operator connections.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from prometheus_client import REGISTRY

from gateway.dispatcher import SAVE_RETRY_MIN
from gateway.inbound import Inbound
from gateway.model import Message, PartState, State
from gateway.store import Store, StoreError
from routing.sms import SmsChannel
from routing.smsc import Answer, SmscConnector, SubmitResult
from smpp.connection import Connection
from smpp.constants import CommandId, MessageState, Status, Tag
from smpp.pdu import BindTransceiver, DeliverSm, Pdu, SubmitSm, set_tlv_int, set_tlv_str
from smpp.receipt import parse_receipt
from smpp.session import Side
from tests.dispatch_harness import HOUR, Harness, ScriptedSmsc, fail_writes, harness


@pytest.fixture
def clock() -> trio.testing.MockClock:
    # Jumps only after 20 ms of real idleness, so SQLite's worker thread is not outrun.
    return trio.testing.MockClock(autojump_threshold=0.02)


def orphan_count(smsc: str) -> float:
    return REGISTRY.get_sample_value("smsgw_orphan_receipts_total", {"smsc": smsc}) or 0.0


def record_orphans(store: Store) -> list[tuple[str, str]]:
    """Spy on the store's orphan receipts (still stored): (connector, smsc_id) each."""
    real = store.record_orphan_receipt
    seen: list[tuple[str, str]] = []

    async def recording(connector: str, smsc_id: str, body: bytes, at: float) -> None:
        await real(connector, smsc_id, body, at)
        seen.append((connector, smsc_id))

    store.record_orphan_receipt = recording  # type: ignore[method-assign]
    return seen


async def submitted(h: Harness, smsc: ScriptedSmsc) -> Message:
    """A message accepted by the operator, its IN_FLIGHT state committed."""
    msg = h.message()
    await h.submit(msg)
    await h.wait_in_flight(msg, lambda: len(smsc.sent))
    with trio.fail_after(60):
        while (stored := await h.store.get_message(msg.id)) is None \
                or stored.state is not State.IN_FLIGHT:
            await trio.sleep(0.01)
    return msg


async def test_receipt_not_stored_is_refused_until_stored_even_across_a_restart(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    smsc = ScriptedSmsc("opA")
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        msg = await submitted(h, smsc)
        fail_writes(h.store, math.inf)  # disk full from now on
        assert not await h.receipt("opA", "opA-1", "DELIVRD", 0, hold=1)
        # the operator's resend: its outcome is still not stored, so not OK either
        assert not await h.receipt("opA", "opA-1", "DELIVRD", 0, hold=1)
        assert h.reports == []
        # then the process dies (SIGKILL): the store never took the outcome
    restarted = ScriptedSmsc("opA")
    async with trio.open_nursery() as nursery, harness(
            tmp_path, {"opA": restarted}, nursery) as h:
        stored = await h.store.get_message(msg.id)
        assert stored is not None and stored.state is State.IN_FLIGHT
        orphans = record_orphans(h.store)
        assert await h.receipt("opA", "opA-1", "DELIVRD", 0, hold=1)
        final = await h.wait_final(msg.id, timeout=60)
        assert final.state is State.DELIVERED  # not EXPIRED a day later
        assert [p.state for p in await h.store.get_parts(msg.id)] == [PartState.DELIVERED]
        [report] = h.reports
        receipt = parse_receipt(report.body)
        assert receipt is not None and receipt.id == msg.id and receipt.stat == "DELIVRD"
        assert restarted.sent == []  # not submitted again
        # one more copy now: late (its outcome is stored), answered OK, not an orphan
        assert await h.receipt("opA", "opA-1", "DELIVRD", 0, hold=1)
        assert orphans == [] and len(h.reports) == 1


async def test_copy_of_a_receipt_waits_for_the_write_of_its_outcome_and_is_then_answered_ok(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    smsc = ScriptedSmsc("opA")
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        msg = await submitted(h, smsc)
        fail_writes(h.store, 1)  # the receipt's write fails; its retry will succeed
        assert not await h.receipt("opA", "opA-1", "DELIVRD", 0, hold=1)
        start = trio.current_time()
        assert await h.receipt("opA", "opA-1", "DELIVRD", 0, hold=5)
        assert SAVE_RETRY_MIN <= trio.current_time() - start < 5  # answered at the retry
        stored = await h.store.get_message(msg.id)
        assert stored is not None and stored.state is State.DELIVERED
        assert len(h.reports) == 1


@pytest.mark.parametrize(("fmt", "submit_id", "receipt_id"), [
    ("as-is", "1f", "31"),  # the SMSC answers hex and writes decimal in its receipts
    ("hex", "1f", "31"),  # configured the wrong way round
    ("decimal", "31", "1f"),
])
async def test_receipt_matching_only_in_a_spelling_its_id_format_excludes_is_an_orphan(
        tmp_path: Path, clock: trio.testing.MockClock, fmt: str, submit_id: str,
        receipt_id: str) -> None:
    smsc = ScriptedSmsc("opA", lambda _p: SubmitResult(submit_id, 0))
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        msg = await submitted(h, smsc)
        orphans = record_orphans(h.store)
        before = orphan_count("opA")
        assert await h.receipt("opA", receipt_id, "DELIVRD", 0, hold=1,
                                             id_format=fmt)
        assert orphans == [("opA", receipt_id)]  # stored as an orphan, not "late"
        assert orphan_count("opA") == before + 1
        assert msg.id in h.dispatcher.live
        assert [p.state for p in await h.store.get_parts(msg.id)] == [PartState.SUBMITTED]


def _receipt_pdu(smsc_id: str, stat: MessageState = MessageState.DELIVERED) -> DeliverSm:
    pdu = DeliverSm(esm_class=0x04, source_addr="33612345678", destination_addr="ACME",
                    short_message=f"id:{smsc_id} sub:001 dlvrd:001 submit date:2601011200 "
                                  "done date:2601011201 stat:DELIVRD err:000 text:".encode())
    set_tlv_str(pdu, Tag.RECEIPTED_MESSAGE_ID, smsc_id)
    set_tlv_int(pdu, Tag.MESSAGE_STATE, stat, 1)
    return pdu


def _mo_pdu() -> DeliverSm:
    return DeliverSm(esm_class=0, source_addr="33612345678", destination_addr="36111",
                     short_message=b"STOP")


async def _bind_ok(conn: Connection, pdu: Pdu) -> None:
    if isinstance(pdu, BindTransceiver):
        conn.respond(pdu.response(system_id="smsc"))


async def _operator_link(nursery: trio.Nursery, connector: SmscConnector) -> Connection:
    """The connector's deliver_sm handling on one side of an in-memory stream; the returned
    operator side sends deliver_sm to it."""
    ours, theirs = trio.testing.memory_stream_pair()
    gateway = Connection(ours, Side.ESME, enquire_link_interval=1e9)
    operator = Connection(theirs, Side.SMSC, enquire_link_interval=1e9, response_timeout=1e9)
    nursery.start_soon(operator.run, _bind_ok)
    nursery.start_soon(functools.partial(
        gateway.run, connector._handle_request, batch_handler=connector._handle_deliveries,
        batch_commands=frozenset({CommandId.DELIVER_SM, CommandId.DATA_SM})))
    resp = await gateway.request(BindTransceiver(system_id="gw", password="pw"))
    assert resp.status == 0
    return operator


def _send_in_one_read(operator: Connection, pdus: dict[str, Pdu]
                      ) -> dict[str, tuple[float, int]]:
    """Queue the deliver_sm back to back (they go out in one write, so they are read
    together); each answer lands in the result as (trio time, command_status)."""
    answers: dict[str, tuple[float, int]] = {}

    def on_answer(label: str, resp: Pdu | None, error: Exception | None) -> None:
        assert resp is not None, error
        answers[label] = (trio.current_time(), resp.status)

    for label, pdu in pdus.items():
        operator.send_request(pdu, lambda r, e, label=label: on_answer(label, r, e))
    return answers


async def test_receipt_held_for_matching_delays_only_its_own_answer(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    smsc = ScriptedSmsc("opA", receipt_hold=3.0)
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        inbound = Inbound(h.dispatcher, h.store, h.clock, {"36111": "acme"},
                          h.reports.append)
        SmsChannel(smsc, inbound)  # the channel reads the operator's deliveries for it
        msg = await submitted(h, smsc)
        operator = await _operator_link(nursery, smsc)
        before = orphan_count("opA")
        start = trio.current_time()
        answers = _send_in_one_read(operator, {
            "unknown": _receipt_pdu("ZZ999"), "mo": _mo_pdu(),
            "known": _receipt_pdu("opA-1"), "unreadable": DeliverSm(
                esm_class=0x04, short_message=b"garbage")})
        with trio.fail_after(60):
            while len(answers) < 4:
                await trio.sleep(0.01)
        for label in ("mo", "known", "unreadable"):
            at, status = answers[label]
            assert status == Status.ESME_ROK and at - start < 1, label
        at, status = answers["unknown"]
        assert status == Status.ESME_ROK and at - start >= 3  # held, then an orphan
        assert orphan_count("opA") == before + 2  # the unknown and the unreadable one
        assert (await h.wait_final(msg.id, timeout=60)).state is State.DELIVERED
        assert sorted(r.kind.value for r in h.reports) == ["MO", "RECEIPT"]


async def test_failing_deliver_handler_leaves_a_temporary_error_for_what_it_did_not_answer(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    async def answers_one_then_fails(_c: SmscConnector, pdus: list[Pdu],
                                     answer: Answer) -> None:
        answer(pdus[0], Status.ESME_ROK)
        answer(pdus[0], Status.ESME_RSYSERR)  # a second answer to one PDU is ignored
        raise RuntimeError("bug")

    smsc = ScriptedSmsc("opA", on_deliver=answers_one_then_fails)
    async with trio.open_nursery() as nursery:
        operator = await _operator_link(nursery, smsc)
        answers = _send_in_one_read(operator, {"first": _mo_pdu(), "second": _mo_pdu(),
                                               "third": _receipt_pdu("x1")})
        with trio.fail_after(60):
            while len(answers) < 3:
                await trio.sleep(0.01)
        await trio.sleep(1)  # a duplicate answer would have come by now
        assert {k: s for k, (_, s) in answers.items()} == {
            "first": Status.ESME_ROK, "second": Status.ESME_RX_T_APPN,
            "third": Status.ESME_RX_T_APPN}
        assert not operator.session.outstanding
        nursery.cancel_scope.cancel()


def _first(answers: dict[int, int], pdu: Pdu, status: int) -> None:
    answers.setdefault(id(pdu), status)


async def test_mo_the_store_cannot_take_is_refused_while_its_read_companions_are_answered(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    smsc = ScriptedSmsc("opA")
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        inbound = Inbound(h.dispatcher, h.store, h.clock, {"36111": "acme"},
                          h.reports.append)
        msg = await submitted(h, smsc)

        async def disk_full(*_args: Any) -> None:
            raise StoreError("database or disk is full")

        h.store.add_reports = disk_full  # type: ignore[method-assign]
        mo, receipt = _mo_pdu(), _receipt_pdu("opA-1")
        answers: dict[int, int] = {}
        await SmsChannel(smsc, inbound).on_deliver(smsc, [mo, receipt],
                                                   functools.partial(_first, answers))
        assert answers == {id(mo): Status.ESME_RX_T_APPN, id(receipt): Status.ESME_ROK}
        assert (await h.wait_final(msg.id, timeout=HOUR)).state is State.DELIVERED
        assert [r.kind.value for r in h.reports] == ["RECEIPT"]


async def _operator_pair(nursery: trio.Nursery, smsc: ScriptedSmsc,
                         incoming_window: int) -> tuple[Connection, Connection]:
    """The gateway's bind to an operator (window `incoming_window`) and the operator's end."""
    ours, theirs = trio.testing.memory_stream_pair()
    gateway = Connection(ours, Side.ESME, enquire_link_interval=math.inf,
                         incoming_window=incoming_window, response_timeout=5.0)
    operator = Connection(theirs, Side.SMSC, enquire_link_interval=math.inf,
                          response_timeout=math.inf, window=100)
    async def operator_answers(conn: Connection, pdu: Pdu) -> None:
        if isinstance(pdu, SubmitSm):
            conn.respond(pdu.response(message_id="op-1"))
        else:
            await _bind_ok(conn, pdu)

    nursery.start_soon(operator.run, operator_answers)
    nursery.start_soon(functools.partial(
        gateway.run, smsc._handle_request, batch_handler=smsc._handle_deliveries,
        batch_commands=frozenset({CommandId.DELIVER_SM, CommandId.DATA_SM})))
    assert (await gateway.request(BindTransceiver(system_id="gw", password="pw"))).status == 0
    return gateway, operator


async def test_receipts_held_for_matching_do_not_stop_the_bind_reading_responses(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    """The rule: a receipt held until its submit_sm_resp is read must not keep that very
    response (or any other) unread: held receipts leave the bind's incoming window."""
    smsc = ScriptedSmsc("opA", receipt_hold=10.0)
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        inbound = Inbound(h.dispatcher, h.store, h.clock, {}, h.reports.append)
        SmsChannel(smsc, inbound)  # the channel reads the operator's deliveries for it
        gateway, operator = await _operator_pair(nursery, smsc, incoming_window=5)
        for i in range(20):  # receipts for ids nobody knows yet: all held
            operator.send_request(_receipt_pdu(f"{1000 + i}"), lambda _r, _e: None)
        await trio.sleep(1.0)
        start = trio.current_time()
        resp = await gateway.request(SubmitSm(destination_addr="33612345678"), timeout=5.0)
        assert resp.status == 0 and trio.current_time() - start < 5.0  # not after the hold
        assert h.dispatcher._held_count == 20  # all 20 read and held, past the window of 5
        nursery.cancel_scope.cancel()


async def test_receipts_beyond_the_hold_limit_get_a_temporary_error(
        tmp_path: Path, clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.dispatcher.MAX_HELD_RECEIPTS", 3)
    smsc = ScriptedSmsc("opA", receipt_hold=10.0)
    answers: list[int] = []
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        inbound = Inbound(h.dispatcher, h.store, h.clock, {}, h.reports.append)
        SmsChannel(smsc, inbound)  # the channel reads the operator's deliveries for it
        _gateway, operator = await _operator_pair(nursery, smsc, incoming_window=100)
        for i in range(5):
            operator.send_request(_receipt_pdu(f"{2000 + i}"),
                                  lambda r, _e: answers.append(r.status if r else -1))
        await trio.sleep(1.0)
        assert answers == [Status.ESME_RX_T_APPN] * 2  # 3 held, the other two refused for now
        await trio.sleep(10.0)
        assert sorted(answers) == [0, 0, 0, Status.ESME_RX_T_APPN, Status.ESME_RX_T_APPN]
        nursery.cancel_scope.cancel()


async def test_deliveries_slow_for_another_reason_than_a_hold_still_count_in_the_window(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    """The rule: only receipts held for matching leave the incoming window; deliveries waiting
    on a slow store keep counting, so a stalled store stops the reading (backpressure)."""
    async def stalled_store(_c: SmscConnector, _pdus: list[Pdu], _answer: Answer) -> None:
        await trio.sleep_forever()

    smsc = ScriptedSmsc("opA", on_deliver=stalled_store)
    async with trio.open_nursery() as nursery:
        gateway, operator = await _operator_pair(nursery, smsc, incoming_window=5)
        for i in range(50):
            operator.send_request(_receipt_pdu(f"{3000 + i}"), lambda _r, _e: None)
        await trio.sleep(30)
        assert gateway.unanswered == 5 and not gateway._deferred
        assert gateway.session.pending_input > 0  # the rest waits unread
        nursery.cancel_scope.cancel()
