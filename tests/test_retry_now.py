"""Rules of `smsgw message retry` in the dispatcher (retry_now), under virtual time: a parked
message is attempted at once (and parked again while its connectors are still down), one in
backoff is attempted now instead of at its next attempt, and one in flight or scheduled by
its sender is refused with the reason."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import trio
import trio.testing

from gateway.dispatcher import RetryRefused
from gateway.model import State
from routing.smsc import SubmitResult
from smpp.constants import Status
from tests.dispatch_harness import HOUR, ScriptedSmsc, harness


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.02)


async def until(condition: object, timeout: float = 60) -> None:
    with trio.fail_after(timeout):
        while not condition():  # type: ignore[operator]
            await trio.sleep(0.01)


async def test_a_parked_message_is_attempted_now_and_parked_again_while_still_down(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    smsc = ScriptedSmsc("opA", up=False)
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        msg = h.message()
        await h.submit(msg)
        await until(lambda: h.dispatcher.is_parked(msg.id))
        assert "attempted now" in h.dispatcher.retry_now(msg.id)
        await until(lambda: h.dispatcher.is_parked(msg.id))  # still down: parked again
        assert smsc.sent == []
        smsc.up = True  # up, but nobody was told (a connector that came back unnoticed)
        before = trio.current_time()
        h.dispatcher.retry_now(msg.id)
        await until(lambda: smsc.sent)
        assert smsc.sent[0][0] - before < 1 and not h.dispatcher.is_parked(msg.id)


async def test_a_message_in_backoff_is_attempted_now_not_at_its_next_attempt(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    throttled = True

    def answer(_pdu: object) -> SubmitResult:
        if throttled:
            return SubmitResult(None, Status.ESME_RTHROTTLED, temporary=True)
        return SubmitResult(f"op-{len(smsc.sent)}", 0)

    smsc = ScriptedSmsc("opA", answer=answer)
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        msg = h.message()
        await h.submit(msg)
        await until(lambda: h.dispatcher.live[msg.id].msg.attempts == 1
                    and h.dispatcher.live[msg.id].msg.state is State.QUEUED)
        with pytest.raises(RetryRefused, match="no unfinished message"):
            h.dispatcher.retry_now("f" * 32)
        throttled = False
        before = trio.current_time()
        assert "next attempt moved" in h.dispatcher.retry_now(msg.id)
        await until(lambda: len(smsc.sent) == 2)
        assert smsc.sent[1][0] - before < 1  # not the 5 s backoff
        await until(lambda: h.dispatcher.live[msg.id].msg.state is State.IN_FLIGHT)
        with pytest.raises(RetryRefused, match="in flight"):
            h.dispatcher.retry_now(msg.id)


async def test_a_message_scheduled_by_its_sender_is_not_sent_early(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    smsc = ScriptedSmsc("opA")
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        later = h.clock.now() + 2 * HOUR
        msg = dataclasses.replace(h.message(), state=State.SCHEDULED, not_before=later,
                                  next_attempt_at=later)
        await h.submit(msg)
        with pytest.raises(RetryRefused, match="scheduled by its sender"):
            h.dispatcher.retry_now(msg.id)
        await trio.sleep(HOUR)
        assert smsc.sent == []
