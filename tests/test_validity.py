"""Validity and retry rules of the dispatcher, under virtual time (a 24 h expiry in ms).

The operator is a scripted connector; the store is the real SQLite store.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import trio
import trio.testing

from gateway.model import Message, PartState, State
from routing.smsc import RateLimiter, Submission, SubmitResult
from smpp.constants import Status
from smpp.pdu import SubmitSm
from smpp.receipt import parse_receipt
from smpp.smpptime import parse_smpp_time
from smpp.text import encode_text
from tests.dispatch_harness import DAY, HOUR, Harness, ScriptedSmsc, fail_writes, harness


@pytest.fixture
def clock() -> trio.testing.MockClock:
    # Jumps only after 20 ms of real idleness, so SQLite's worker thread is not outrun.
    return trio.testing.MockClock(autojump_threshold=0.02)


async def test_message_with_no_operator_up_expires_after_24h_and_is_never_sent(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    smsc = ScriptedSmsc("opA", up=False)
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        msg = h.message()
        start = h.clock.now()
        await h.submit(msg)
        final = await h.wait_final(msg.id)
        assert final.state is State.EXPIRED
        assert final.done_at is not None
        assert DAY <= final.done_at - start < DAY + 5
        assert smsc.sent == []
        [report] = h.reports
        receipt = parse_receipt(report.body)
        assert receipt is not None and receipt.stat == "EXPIRED" and receipt.id == msg.id


async def test_submitted_message_without_receipt_expires_at_its_deadline(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    smsc = ScriptedSmsc("opA")
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        msg = h.message()
        await h.submit(msg)
        final = await h.wait_final(msg.id)
        assert final.state is State.EXPIRED
        assert len(smsc.sent) == 1
        parts = await h.store.get_parts(msg.id)
        assert [p.state for p in parts] == [PartState.EXPIRED]


async def test_operator_submit_carries_the_remaining_validity(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    smsc = ScriptedSmsc("opA")
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        msg = h.message(validity=2 * HOUR)
        await h.submit(msg)
        with trio.fail_after(60):
            while not smsc.sent:
                await trio.sleep(0.01)
        _, pdu = smsc.sent[0]
        validity = parse_smpp_time(pdu.validity_period, h.clock.now())
        assert validity is not None
        assert abs(validity - msg.expires_at) <= 2


async def test_throttled_submit_is_retried_with_backoff_until_accepted(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    answers = iter([Status.ESME_RTHROTTLED, Status.ESME_RMSGQFUL, 0])

    def answer(_pdu: SubmitSm) -> SubmitResult:
        status = next(answers)
        return SubmitResult("id-1" if status == 0 else None, status, temporary=status != 0)

    smsc = ScriptedSmsc("opA", answer)
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        msg = h.message()
        await h.submit(msg)
        with trio.fail_after(HOUR):
            while len(smsc.sent) < 3:
                await trio.sleep(0.5)
        times = [t for t, _ in smsc.sent]
        assert times[1] - times[0] >= 5 - 0.01  # initial_delay
        assert times[2] - times[1] >= 10 - 0.01  # doubled
        live = h.dispatcher.live[msg.id]
        assert live.msg.state is State.IN_FLIGHT
        assert [p.smsc_id for p in live.parts] == ["id-1"]


async def test_permanent_error_is_final_and_reported_without_retry(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    smsc = ScriptedSmsc("opA", lambda _p: SubmitResult(None, Status.ESME_RINVDSTADR,
                                                        rejected=True))
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        msg = h.message()
        await h.submit(msg)
        final = await h.wait_final(msg.id, timeout=HOUR)
        assert final.state is State.REJECTED
        assert len(smsc.sent) == 1
        receipt = parse_receipt(h.reports[0].body)
        assert receipt is not None and receipt.stat == "REJECTD"


async def test_operator_down_fails_over_to_the_next_connector_of_the_route(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    down = ScriptedSmsc("opA", up=False)
    backup = ScriptedSmsc("opB")
    async with trio.open_nursery() as nursery, harness(
            tmp_path, {"opA": down, "opB": backup}, nursery) as h:
        msg = h.message()
        await h.submit(msg)
        with trio.fail_after(60):
            while not backup.sent:
                await trio.sleep(0.01)
        assert down.sent == []
        assert h.dispatcher.live[msg.id].msg.connector == "opB"


async def test_failure_only_receipt_request_gets_no_report_for_delivery(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    smsc = ScriptedSmsc("opA")
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        msg = h.message(registered_delivery=2)
        await h.submit(msg)
        with trio.fail_after(60):
            while not smsc.sent:
                await trio.sleep(0.01)
        await h.receipt("opA", "opA-1", "DELIVRD", 0, hold=1)
        final = await h.wait_final(msg.id, timeout=60)
        assert final.state is State.DELIVERED
        assert h.reports == []


async def test_long_message_is_delivered_only_when_every_part_is(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    smsc = ScriptedSmsc("opA")
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        msg = h.message("x" * 300)  # 2 GSM parts
        await h.submit(msg)
        with trio.fail_after(60):
            while len(smsc.sent) < 2:
                await trio.sleep(0.01)
        assert all(p.registered_delivery == 1 for _, p in smsc.sent)
        await h.receipt("opA", "opA-1", "DELIVRD", 0, hold=1)
        assert msg.id in h.dispatcher.live  # one part still unknown
        await h.receipt("opA", "opA-2", "UNDELIV", 1, hold=1)
        final = await h.wait_final(msg.id, timeout=60)
        assert final.state is State.UNDELIVERABLE
        parts = await h.store.get_parts(msg.id)
        assert [p.state for p in parts] == [PartState.DELIVERED, PartState.UNDELIVERABLE]
        receipt = parse_receipt(h.reports[0].body)
        assert receipt is not None and receipt.stat == "UNDELIV"


async def test_receipt_arriving_before_its_submit_resp_is_held_and_matched(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    gate = trio.Event()

    class SlowResp(ScriptedSmsc):
        def _send(self, item: Submission) -> None:
            self.sent.append((trio.current_time(), item.pdu))

            async def answer_later() -> None:
                await gate.wait()
                item.done(SubmitResult("early-1", 0))

            nursery.start_soon(answer_later)

    smsc = SlowResp("opA")
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        msg = h.message()
        await h.submit(msg)
        with trio.fail_after(60):
            while not smsc.sent:
                await trio.sleep(0.01)
        async with trio.open_nursery() as inner:
            inner.start_soon(functools.partial(h.receipt, "opA", "EARLY-1", "DELIVRD", 0,
                                               hold=10.0))
            await trio.sleep(1)
            gate.set()
        final = await h.wait_final(msg.id, timeout=60)
        assert final.state is State.DELIVERED


async def test_message_that_cannot_be_split_is_rejected_not_retried_forever(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    smsc = ScriptedSmsc("opA")
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        msg = h.message()
        msg.data_coding, msg.body = 8, b"\x00A" * 200 + b"\x00"  # odd-length UCS-2
        await h.submit(msg)
        final = await h.wait_final(msg.id, timeout=HOUR)
        assert final.state is State.REJECTED
        assert final.error == Status.ESME_RINVMSGLEN
        assert smsc.sent == []


async def test_receipts_read_together_are_applied_in_one_commit(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    smsc = ScriptedSmsc("opA")
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        long, short = h.message("y" * 300), h.message("short")
        await h.submit(long)
        with trio.fail_after(60):
            while len(smsc.sent) < 2:
                await trio.sleep(0.01)
        await h.submit(short)
        with trio.fail_after(60):
            while len(smsc.sent) < 3 or h.dispatcher.live[short.id].msg.state \
                        is not State.IN_FLIGHT:
                await trio.sleep(0.01)
        await trio.sleep(1)  # let the "submitted" writes commit
        commits = h.store.commits
        answers: dict[int, bool] = {}
        await h.receipts("opA", [("opA-1", "DELIVRD", 0, b""), ("OPA-2", "DELIVRD", 0, b""),
                                 ("opA-3", "UNDELIV", 1, b"")], answers.__setitem__, hold=1)
        assert answers == {0: True, 1: True, 2: True}
        assert h.store.commits == commits + 1
        stored_long, stored_short = (await h.store.get_message(long.id),
                                     await h.store.get_message(short.id))
        assert stored_long is not None and stored_long.state is State.DELIVERED
        assert stored_short is not None and stored_short.state is State.UNDELIVERABLE
        assert len(h.reports) == 2


async def _two_submitted(h: Harness, smsc: ScriptedSmsc) -> tuple[Message, Message]:
    """Two messages accepted by the operator (its ids come from the test's iterator)."""
    a, b = h.message("a"), h.message("b")
    await h.submit(a)
    await h.submit(b)
    with trio.fail_after(60):
        while len(smsc.sent) < 2 or b.state is not State.IN_FLIGHT:
            await trio.sleep(0.01)
    return a, b


async def test_auto_id_format_does_not_cross_match_before_the_smsc_is_seen_converting(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    ids = iter(["1000", "4096"])
    smsc = ScriptedSmsc("opA", lambda _p: SubmitResult(next(ids), 0))
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        a, b = await _two_submitted(h, smsc)
        await h.receipt("opA", "4096", "DELIVRD", 0, hold=1)
        final_b = await h.wait_final(b.id, timeout=60)
        assert final_b.state is State.DELIVERED
        # a duplicate of B's receipt must not finish A (whose id "1000" is 4096 in hex)
        await h.receipt("opA", "4096", "UNDELIV", 1, hold=1)
        assert a.id in h.dispatcher.live and not a.state.final


async def test_auto_id_format_learns_an_smsc_that_writes_ids_in_decimal(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    ids = iter(["1f", "20"])
    smsc = ScriptedSmsc("opA", lambda _p: SubmitResult(next(ids), 0))
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        a, b = await _two_submitted(h, smsc)
        await h.receipt("opA", "31", "DELIVRD", 0, hold=2)  # held, then learnt
        assert (await h.wait_final(a.id, timeout=60)).state is State.DELIVERED
        start = trio.current_time()
        await h.receipt("opA", "32", "DELIVRD", 0, hold=2)
        assert trio.current_time() == start  # matched at once now
        assert (await h.wait_final(b.id, timeout=60)).state is State.DELIVERED


async def test_submit_held_back_by_the_rate_limit_past_its_deadline_expires_unsent(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    smsc = ScriptedSmsc("opA")
    smsc.limiter = RateLimiter(1.0)  # one submit per second
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        msgs = [h.message(f"m{i}", validity=1.5) for i in range(3)]
        for msg in msgs:
            await h.submit(msg)
        finals = [await h.wait_final(msg.id, timeout=HOUR) for msg in msgs]
        # slots at 0 s and 1 s are inside the 1.5 s validity, the one at 2 s is not
        assert len(smsc.sent) == 2
        assert [f.state for f in finals] == [State.EXPIRED] * 3  # no receipt came
        sent_ids = {pdu.short_message for _, pdu in smsc.sent}
        assert encode_text("m2")[1] not in sent_ids
        assert all(t < 1.5 for t, _ in smsc.sent)


async def test_receipt_whose_write_fails_is_written_again_and_reported_once_stored(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    smsc = ScriptedSmsc("opA")
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        msg = h.message()
        await h.submit(msg)
        await h.wait_in_flight(msg, lambda: len(smsc.sent))
        refusals = fail_writes(h.store, 2)  # the receipt's write, then the first retry
        # not stored: the operator is told (a temporary error) and will send it again
        assert not await h.receipt("opA", "opA-1", "DELIVRD", 0, hold=1)
        assert h.reports == []  # nothing reported while the final state is not stored
        final = await h.wait_final(msg.id, timeout=HOUR)
        assert refusals == [2]
        assert final.state is State.DELIVERED
        assert len(h.reports) == 1
        # the operator's second copy is recognised as late, not applied twice
        assert await h.receipt("opA", "opA-1", "DELIVRD", 0, hold=1)
        assert len(h.reports) == 1
