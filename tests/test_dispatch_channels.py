"""The dispatcher speaks only the Channel protocol: it follows the plan's attempts (channel,
connector, timeout), starts one only on a channel that is up, moves on at once when a channel
cannot reach the recipient, and revokes an attempt that has no outcome within its timeout
before the next one (none when the revoke finds it delivered).

Virtual time over the real SQLite store; an RCS-like scripted channel next to a scripted SMSC.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import trio
import trio.testing

from gateway.dispatcher import ATTEMPT_DEADLINE_MARGIN
from gateway.model import Message, PartState, State
from routing.channel import RCS, Revoked, SendDone, SendResult, Unit
from routing.core import Attempt, RoutePlan, RoutingContext
from tests.dispatch_harness import HOUR, ScriptedSmsc, harness
from tests.stack import running_stack

NOT_CAPABLE = 0x0B  # as the RCS channel would report "no RCS phone" (an SMPP-like status)


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.02)


class ScriptedChannel:
    """A non-SMS channel whose answers the test decides (one unit per message)."""

    kind = RCS

    def __init__(self, name: str, *, up: bool = True,
                 answer: Callable[[Message], SendResult] | None = None,
                 revoked: Revoked = Revoked.REVOKED) -> None:
        self.name = name
        self.up = up
        self.answer = answer or (lambda msg: SendResult(f"{name}-{len(self.sent)}"))
        self.revoked_answer = revoked
        self.sent: list[tuple[float, Message, float]] = []
        self.revoked: list[tuple[float, str]] = []

    def is_up(self) -> bool:
        return self.up

    @property
    def capacity(self) -> int:
        return 10

    async def wait_changed(self) -> None:
        await trio.sleep_forever()

    def prepare(self, message: Message) -> Sequence[Unit]:
        return [Unit(1, message.body)]

    def submit_nowait(self, message: Message, unit: Unit, deadline: float,
                      done: SendDone) -> None:
        self.sent.append((trio.current_time(), message, deadline))
        done(self.answer(message))

    async def revoke(self, message: Message, provider_id: str) -> Revoked:
        self.revoked.append((trio.current_time(), provider_id))
        return self.revoked_answer


class Plan:
    """A router giving every message the same plan."""

    def __init__(self, *attempts: Attempt) -> None:
        self.route = RoutePlan(attempts, "test")

    def plan(self, message: Message, context: RoutingContext) -> RoutePlan | None:
        return self.route


RCS_THEN_SMS = Plan(Attempt(RCS, "rbm", timeout=60.0), Attempt("sms", "opA"))


async def test_an_attempt_without_outcome_within_its_timeout_is_revoked_then_the_next_goes(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    rbm, smsc = ScriptedChannel("rbm"), ScriptedSmsc("opA")
    async with trio.open_nursery() as nursery, harness(
            tmp_path, {"opA": smsc}, nursery, others={"rbm": rbm}, router=RCS_THEN_SMS) as h:
        msg = h.message()
        await h.submit(msg)
        with trio.fail_after(HOUR):
            while not smsc.sent:
                await trio.sleep(1)
        [(sent_at, _, deadline)] = rbm.sent
        # the channel gets its timeout and the time to revoke it, not the whole validity
        assert deadline == sent_at + 60.0 + ATTEMPT_DEADLINE_MARGIN < h.clock.to_trio(
            msg.expires_at)
        [(revoked_at, provider_id)] = rbm.revoked
        assert provider_id == "rbm-1" and 60 <= revoked_at - sent_at < 62
        assert smsc.sent[0][0] >= revoked_at  # the SMS only after the revoke
        assert await h.receipt("opA", "opA-1", "DELIVRD", 0, hold=1)
        final = await h.wait_final(msg.id)
        events = await h.store.events_of(msg.id)
    assert final.state is State.DELIVERED and final.connector == "opA"
    assert [e.kind for e in events] == ["accepted", "attempt", "timeout", "attempt", "submitted",
                                        "receipt"]
    assert events[2].detail["revoked"] == ["revoked"]
    assert [r.kind.value for r in h.reports] == ["RECEIPT"]


async def test_a_revoke_that_finds_the_message_delivered_ends_it_without_another_attempt(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    rbm, smsc = ScriptedChannel("rbm", revoked=Revoked.DELIVERED), ScriptedSmsc("opA")
    async with trio.open_nursery() as nursery, harness(
            tmp_path, {"opA": smsc}, nursery, others={"rbm": rbm}, router=RCS_THEN_SMS) as h:
        msg = h.message()
        await h.submit(msg)
        final = await h.wait_final(msg.id)
        await trio.sleep(HOUR)
        parts = await h.store.get_parts(msg.id)
    assert final.state is State.DELIVERED and final.connector == "rbm"
    assert [p.state for p in parts] == [PartState.DELIVERED]
    assert len(rbm.revoked) == 1 and not smsc.sent  # never both
    assert [r.kind.value for r in h.reports] == ["RECEIPT"]


async def test_a_channel_that_cannot_reach_the_recipient_hands_over_at_once(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    rbm = ScriptedChannel("rbm", answer=lambda _m: SendResult(
        None, NOT_CAPABLE, not_capable=True, detail="no RCS phone"))
    smsc = ScriptedSmsc("opA")
    async with trio.open_nursery() as nursery, harness(
            tmp_path, {"opA": smsc}, nursery, others={"rbm": rbm}, router=RCS_THEN_SMS) as h:
        msg = h.message()
        await h.submit(msg)
        with trio.fail_after(HOUR):
            while not smsc.sent:
                await trio.sleep(0.01)
        assert smsc.sent[0][0] - rbm.sent[0][0] < 1  # no backoff, no timeout waited
        assert await h.receipt("opA", "opA-1", "DELIVRD", 0, hold=1)
        final = await h.wait_final(msg.id)
        events = await h.store.events_of(msg.id)
    assert final.state is State.DELIVERED and not rbm.revoked
    assert [e.kind for e in events if e.kind != "submitted"] == [
        "accepted", "attempt", "not_capable", "attempt", "receipt"]
    assert final.error == 0  # the recipient was reached: no error in its receipt


async def test_when_no_channel_of_the_plan_can_reach_the_recipient_it_is_undeliverable(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    incapable = ScriptedChannel("rbm", answer=lambda _m: SendResult(
        None, NOT_CAPABLE, not_capable=True))
    async with trio.open_nursery() as nursery, harness(
            tmp_path, {}, nursery, others={"rbm": incapable},
            router=Plan(Attempt(RCS, "rbm"))) as h:
        msg = h.message()
        await h.submit(msg)
        final = await h.wait_final(msg.id, timeout=60)
    assert final.state is State.UNDELIVERABLE and final.error == NOT_CAPABLE
    assert len(incapable.sent) == 1


async def test_an_attempt_starts_only_on_a_channel_that_is_up(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    rbm, smsc = ScriptedChannel("rbm", up=False), ScriptedSmsc("opA")
    async with trio.open_nursery() as nursery, harness(
            tmp_path, {"opA": smsc}, nursery, others={"rbm": rbm}, router=RCS_THEN_SMS) as h:
        msg = h.message()
        await h.submit(msg)
        with trio.fail_after(60):
            while not smsc.sent:
                await trio.sleep(0.01)
        assert await h.receipt("opA", "opA-1", "DELIVRD", 0, hold=1)
        assert (await h.wait_final(msg.id)).state is State.DELIVERED
    assert not rbm.sent


async def test_an_attempt_of_another_kind_than_its_connector_is_not_followed(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    """A plan naming connector "rbm" as SMS must not send SMS-planned traffic over RCS."""
    rbm, smsc = ScriptedChannel("rbm"), ScriptedSmsc("opA")
    async with trio.open_nursery() as nursery, harness(
            tmp_path, {"opA": smsc}, nursery, others={"rbm": rbm},
            router=Plan(Attempt("sms", "rbm"), Attempt("sms", "opA"))) as h:
        msg = h.message()
        await h.submit(msg)
        with trio.fail_after(60):
            while not smsc.sent:
                await trio.sleep(0.01)
    assert not rbm.sent


async def test_an_attempt_that_cannot_be_withdrawn_still_fails_over_with_its_risk_recorded(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    rbm, smsc = ScriptedChannel("rbm", revoked=Revoked.UNSUPPORTED), ScriptedSmsc("opA")
    async with trio.open_nursery() as nursery, harness(
            tmp_path, {"opA": smsc}, nursery, others={"rbm": rbm}, router=RCS_THEN_SMS) as h:
        msg = h.message()
        await h.submit(msg)
        with trio.fail_after(HOUR):
            while not smsc.sent:
                await trio.sleep(1)
        assert await h.receipt("opA", "opA-1", "DELIVRD", 0, hold=1)
        await h.wait_final(msg.id)
        [timeout] = [e for e in await h.store.events_of(msg.id) if e.kind == "timeout"]
    assert timeout.detail["revoked"] == ["unsupported"]
    assert timeout.detail["duplicate_risk"] == "not every unit could be withdrawn"


async def test_after_a_restart_an_rcs_attempt_waiting_for_its_outcome_still_falls_back(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    """Rule: the RCS wait survives a restart: a message whose RCS attempt was in flight is
    given its timeout again when the gateway starts, then revoked and sent as SMS (not left
    waiting until its validity ends)."""
    first_rbm = ScriptedChannel("rbm")
    async with trio.open_nursery() as nursery, harness(
            tmp_path, {"opA": ScriptedSmsc("opA")}, nursery, others={"rbm": first_rbm},
            router=RCS_THEN_SMS) as h:
        msg = h.message()
        await h.submit(msg)
        with trio.fail_after(HOUR):  # stored in flight, its RCS unit taken
            while [p.state for p in await h.store.get_parts(msg.id)] != [PartState.SUBMITTED]:
                await trio.sleep(1)
    rbm, smsc = ScriptedChannel("rbm"), ScriptedSmsc("opA")
    async with trio.open_nursery() as nursery, harness(
            tmp_path, {"opA": smsc}, nursery, others={"rbm": rbm}, router=RCS_THEN_SMS) as h:
        started = trio.current_time()
        with trio.fail_after(HOUR):
            while not smsc.sent:
                await trio.sleep(1)
        assert rbm.sent == []  # RCS is not sent again
        assert [provider_id for _, provider_id in rbm.revoked] == ["rbm-1"]
        assert 60.0 <= smsc.sent[0][0] - started < 120.0  # after the wait, not the validity


async def test_the_in_flight_limit_follows_the_channels_the_dispatcher_speaks_to(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    """Rule: the number of messages with units unanswered at once is sized from the channels
    (twice what they can have unanswered, at least 64), also those given after the dispatcher
    was made (the daemon's) and those a reload adds or removes."""
    big = ScriptedSmsc("opA", window=50, binds=4)  # capacity 200
    async with trio.open_nursery() as nursery, harness(
            tmp_path, {"opA": big}, nursery) as h:
        assert h.dispatcher.max_in_flight == 400
        h.dispatcher.add_channel(ScriptedChannel("rbm"))  # capacity 10
        assert h.dispatcher.max_in_flight == 420
        h.dispatcher.remove_channel("opA")
        assert h.dispatcher.max_in_flight == 64


async def test_the_daemons_dispatcher_is_sized_from_the_smscs_it_was_given_after(
        tmp_path: Path) -> None:
    async with running_stack(tmp_path) as (gw, _sim):  # one SMSC: 2 binds x window 50
        assert gw.dispatcher.max_in_flight == 2 * 100
