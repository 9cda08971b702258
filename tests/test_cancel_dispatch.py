"""Rules of cancel and replace in the dispatcher, under virtual time on the real store: only a
message no part of which reached an operator can be cancelled or replaced; a cancel and the
dispatcher's submit never both win; a cancelled message owes one receipt (stat DELETED) and
stays cancelled after a restart; a failed commit changes nothing."""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

import pytest
import trio
import trio.testing

from gateway import metrics
from gateway.dispatcher import ChangeRefused
from gateway.intake import Replacement
from gateway.model import Message, PartState, State
from gateway.store import StoreError
from routing.smsc import SubmitResult
from smpp.constants import Status
from smpp.receipt import parse_receipt
from smpp.text import encode_text
from tests.dispatch_harness import HOUR, Harness, ScriptedSmsc, harness


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.02)


async def until(condition: object, timeout: float = 60) -> None:
    step = 0.01  # grows: each virtual step costs the autojump threshold in real time
    with trio.fail_after(timeout):
        while not condition():  # type: ignore[operator]
            await trio.sleep(step)
            step = min(step * 2, 60)


def scheduled(h: Harness, delay: float, **changes: object) -> Message:
    when = h.clock.now() + delay
    return dataclasses.replace(h.message(), state=State.SCHEDULED, not_before=when,
                               next_attempt_at=when, **changes)  # type: ignore[arg-type]


def transitions(state: State) -> float:
    """smsgw_message_transitions_total{from="SCHEDULED", to=state}"""
    return metrics.child(metrics.TRANSITIONS, State.SCHEDULED.value,  # type: ignore[attr-defined]
                         state.value)._value.get()


async def test_a_scheduled_message_cancelled_is_never_sent_owes_one_deleted_receipt_and_stays(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    smsc = ScriptedSmsc("opA")
    before = transitions(State.CANCELLED)
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        msg = scheduled(h, HOUR)
        quiet = scheduled(h, HOUR, registered_delivery=0)
        await h.submit(msg)
        await h.submit(quiet)
        got = await h.dispatcher.cancel(msg.id, account="acme", by="smpp")
        await h.dispatcher.cancel(quiet.id, account="acme", by="http")
        assert got.state is State.CANCELLED and msg.id not in h.dispatcher.live
        assert h.dispatcher.unfinished_of("acme") == 0
        stored = await h.store.get_message(msg.id)
        assert stored is not None and stored.state is State.CANCELLED and stored.done_at
        [event] = [e for e in await h.store.events_of(msg.id) if e.kind == "cancelled"]
        assert (event.kind, event.from_state, event.to_state, event.detail) == (
            "cancelled", State.SCHEDULED, State.CANCELLED, {"by": "smpp"})
        [report] = h.reports  # the quiet one asked for no receipt
        receipt = parse_receipt(report.body)
        assert report.message_id == msg.id and report.state is State.CANCELLED
        assert receipt is not None and receipt.stat == "DELETED" and receipt.dlvrd == 0
        assert transitions(State.CANCELLED) == before + 2
        await trio.sleep(2 * HOUR)
        assert smsc.sent == []
    smsc = ScriptedSmsc("opA")
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        assert h.dispatcher.live == {}  # a restart does not bring it back
        stored = await h.store.get_message(msg.id)
        assert stored is not None and stored.state is State.CANCELLED
        assert (await h.store.stats())["CANCELLED"] == 2
        await trio.sleep(2 * HOUR)
        assert smsc.sent == []
        with pytest.raises(ChangeRefused, match="CANCELLED: too late") as refused:
            await h.dispatcher.cancel(msg.id, account="acme", by="smpp")
        assert refused.value.reason == "too_late" and refused.value.state is State.CANCELLED


async def test_a_message_waiting_for_a_connector_cancelled_is_not_sent_when_it_comes_up(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    smsc = ScriptedSmsc("opA", up=False)
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        msg = h.message()
        await h.submit(msg)
        await until(lambda: h.dispatcher.is_parked(msg.id))
        await h.dispatcher.cancel(msg.id, account=None, by="admin")
        assert not h.dispatcher.is_parked(msg.id)
        smsc.up = True
        other = h.message()
        await h.submit(other)  # the connector is up: the next message goes, not the cancelled
        await until(lambda: smsc.sent)
        await trio.sleep(HOUR)
        assert [pdu.short_message for _, pdu in smsc.sent] == [encode_text("hello")[1]]
        assert len(smsc.sent) == 1


async def test_unknown_other_accounts_in_flight_and_final_messages_are_refused(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    smsc = ScriptedSmsc("opA")
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        msg = h.message()
        await h.submit(msg)
        await h.wait_in_flight(msg, lambda: len(smsc.sent))
        with pytest.raises(ChangeRefused, match="IN_FLIGHT: handed to an operator") as late:
            await h.dispatcher.cancel(msg.id, account="acme", by="smpp")
        assert late.value.reason == "too_late" and late.value.state is State.IN_FLIGHT
        with pytest.raises(ChangeRefused) as late:
            await h.dispatcher.replace(msg.id, account="acme", by="smpp",
                                       plan=lambda m: pytest.fail("not asked"))
        assert late.value.reason == "too_late"
        waiting = scheduled(h, HOUR)
        await h.submit(waiting)
        # From here on virtual time stands still: a store read slower than the autojump
        # threshold (a busy machine) would otherwise jump the clock to its send time.
        clock.autojump_threshold = math.inf
        for account in ("other", "acme"):
            with pytest.raises(ChangeRefused) as unknown:
                await h.dispatcher.cancel(waiting.id if account == "other" else "f" * 32,
                                          account=account, by="http")
            assert unknown.value.reason == "unknown"
        assert waiting.id in h.dispatcher.live
        with pytest.raises(ValueError, match="source"):  # the caller's check refuses first
            await h.dispatcher.cancel(waiting.id, account="acme", by="smpp",
                                      check=lambda m: (_ for _ in ()).throw(ValueError("source")))
        assert h.dispatcher.live[waiting.id].msg.state is State.SCHEDULED


async def test_a_multipart_message_with_a_part_sent_cannot_be_cancelled_at_all(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    def answer(pdu: object) -> SubmitResult:
        if len(smsc.sent) == 2:  # the second of three parts: throttled, retried later
            return SubmitResult(None, Status.ESME_RTHROTTLED, temporary=True)
        return SubmitResult(f"op-{len(smsc.sent)}", 0)

    smsc = ScriptedSmsc("opA", answer=answer)
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        msg = h.message("x" * 400)  # three parts
        await h.submit(msg)
        await until(lambda: len(smsc.sent) == 3
                    and h.dispatcher.live[msg.id].msg.state is State.QUEUED)
        live = h.dispatcher.live[msg.id]
        assert [p.state for p in live.parts] == [PartState.SUBMITTED, PartState.PENDING,
                                                 PartState.SUBMITTED]
        with pytest.raises(ChangeRefused, match="QUEUED: handed to an operator"):
            await h.dispatcher.cancel(msg.id, account="acme", by="smpp")
        await until(lambda: len(smsc.sent) == 4)  # the rest goes as if nothing was asked
        assert h.dispatcher.live[msg.id].msg.state is State.IN_FLIGHT


async def test_cancel_and_submit_never_both_win(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    """Messages all due at T, the dispatcher limited to 3 in flight (so it submits them over
    several rounds while cancels arrive): cancels before T all win, after T all lose, and at
    T, in whatever order trio runs them, each message is either cancelled and never sent, or
    sent and its cancel answered too late."""
    smsc = ScriptedSmsc("opA")
    rng = random.Random(8)
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        h.dispatcher.max_in_flight = 3
        due = h.clock.now() + 60
        msgs = [scheduled(h, 60, dest_addr=f"3361{i:07d}") for i in range(60)]
        for m in msgs:
            await h.submit(m)
        outcome: dict[str, str] = {}

        async def cancel(m: Message, at: float, checkpoints: int) -> None:
            await trio.sleep_until(h.clock.to_trio(at))
            for _ in range(checkpoints):
                await trio.lowlevel.checkpoint()
            try:
                await h.dispatcher.cancel(m.id, account="acme", by="smpp")
            except ChangeRefused as exc:
                assert exc.reason == "too_late", exc
                outcome[m.id] = "too_late"
            else:
                outcome[m.id] = "cancelled"

        async with trio.open_nursery() as cancels:
            for i, m in enumerate(msgs):
                at = due - 1 if i < 5 else due + 1 if i >= 55 else due
                cancels.start_soon(cancel, m, at, rng.randrange(40))
        await trio.sleep(1)
        sent = {pdu.destination_addr for _, pdu in smsc.sent}
        assert len(sent) == len(smsc.sent)  # nothing sent twice
        for m in msgs:
            stored = await h.store.get_message(m.id)
            assert stored is not None
            if outcome[m.id] == "cancelled":
                assert m.dest_addr not in sent and stored.state is State.CANCELLED
            else:
                assert m.dest_addr in sent and stored.state is State.IN_FLIGHT
                assert [p.state for p in await h.store.get_parts(m.id)] == [
                    PartState.SUBMITTED]
        assert all(outcome[m.id] == "cancelled" for m in msgs[:5])
        assert all(outcome[m.id] == "too_late" for m in msgs[55:])
        assert len(h.reports) == sum(1 for v in outcome.values() if v == "cancelled")


async def test_a_cancel_the_store_cannot_take_changes_nothing_and_the_message_goes(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    smsc = ScriptedSmsc("opA")
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        msg = scheduled(h, HOUR)
        await h.submit(msg)
        real = h.store.save_messages_nowait

        def full(*args: object, **kwargs: object) -> object:
            raise StoreError("database or disk is full")

        h.store.save_messages_nowait = full  # type: ignore[assignment]
        with pytest.raises(StoreError):
            await h.dispatcher.cancel(msg.id, account="acme", by="http")
        h.store.save_messages_nowait = real  # type: ignore[method-assign]
        assert h.dispatcher.live[msg.id].msg.state is State.SCHEDULED and h.reports == []
        await until(lambda: smsc.sent, timeout=2 * HOUR)
        stored = await h.store.get_message(msg.id)
        assert stored is not None and stored.state is not State.CANCELLED


async def test_a_replaced_message_goes_with_its_new_text_and_schedule(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    smsc = ScriptedSmsc("opA")
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        msg = scheduled(h, 2 * HOUR)
        await h.submit(msg)
        soon = h.clock.now() + 60
        new_body = encode_text("new text")[1]
        got = await h.dispatcher.replace(
            msg.id, account="acme", by="smpp",
            plan=lambda m: Replacement(new_body, 0, m.expires_at, soon))
        assert got.state is State.SCHEDULED and got.not_before == soon
        stored = await h.store.get_message(msg.id)
        assert stored is not None and stored.body == new_body
        assert stored.registered_delivery == 0 and stored.next_attempt_at == soon
        [event] = [e for e in await h.store.events_of(msg.id) if e.kind == "replaced"]
        assert event.kind == "replaced" and event.detail == {
            "by": "smpp", "changed": ["text", "registered_delivery", "not_before"]}
        await until(lambda: smsc.sent, timeout=HOUR)
        assert smsc.sent[0][0] <= h.clock.to_trio(soon) + 1
        assert smsc.sent[0][1].short_message == new_body


async def test_a_replacement_after_a_refused_attempt_cuts_the_new_text_again(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    throttled = True

    def answer(_pdu: object) -> SubmitResult:
        if throttled:
            return SubmitResult(None, Status.ESME_RTHROTTLED, temporary=True)
        return SubmitResult(f"op-{len(smsc.sent)}", 0)

    smsc = ScriptedSmsc("opA", answer=answer)
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        msg = h.message("y" * 400)  # three parts, all refused
        await h.submit(msg)
        await until(lambda: len(smsc.sent) == 3
                    and h.dispatcher.live[msg.id].msg.state is State.QUEUED)
        await until(lambda: not h.dispatcher._saving)
        assert len(await h.store.get_parts(msg.id)) == 3
        short = encode_text("short now")[1]
        await h.dispatcher.replace(msg.id, account="acme", by="smpp",
                                   plan=lambda m: Replacement(short, 1, m.expires_at,
                                                              m.not_before))
        assert await h.store.get_parts(msg.id) == []
        throttled = False
        await until(lambda: len(smsc.sent) == 4, timeout=HOUR)  # one part, after the backoff
        assert smsc.sent[3][1].short_message == short
        await until(lambda: h.dispatcher.live[msg.id].msg.state is State.IN_FLIGHT)
        await until(lambda: not h.dispatcher._saving)
        assert [p.part_no for p in await h.store.get_parts(msg.id)] == [1]


async def test_a_replacement_plan_that_refuses_changes_nothing(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    smsc = ScriptedSmsc("opA")
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        msg = scheduled(h, HOUR)
        await h.submit(msg)

        def refuse(m: Message) -> Replacement:
            raise ValueError("bad text")

        with pytest.raises(ValueError):
            await h.dispatcher.replace(msg.id, account="acme", by="smpp", plan=refuse)
        live = h.dispatcher.live[msg.id]
        assert not live.held and live.msg.body == msg.body
        await until(lambda: smsc.sent, timeout=2 * HOUR)  # still goes at its time
