"""The dispatcher follows its Routing, under virtual time: circuit breakers fed by the attempts'
outcomes (a half-open breaker admits its probes only), the [retry] backoff with its jitter up
to the deadline, sender throughput limits, and quality routers fed by the receipts.

The operators are scripted connectors; the store is the real SQLite store.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import trio
import trio.testing

from gateway import history
from gateway.model import Message, State
from gateway.routing_setup import Routing
from routing.backoff import Backoff
from routing.breaker import BreakerOptions, Breakers, BreakerState
from routing.core import PrefixRoute, PrefixRouter, Router
from routing.limits import SenderLimit, SenderLimiter
from routing.quality import QualityOptions, QualityTracker
from routing.routers import PolicyChain, QualityRouter, Target
from routing.smsc import SubmitResult
from smpp.constants import Status
from smpp.pdu import SubmitSm
from tests.dispatch_harness import HOUR, Harness, ScriptedSmsc, harness


@pytest.fixture
def clock() -> trio.testing.MockClock:
    # Jumps only after 20 ms of real idleness, so SQLite's worker thread is not outrun.
    return trio.testing.MockClock(autojump_threshold=0.02)


def make_routing(names: Sequence[str], *, routers: Sequence[Router] | None = None,
                 breaker: BreakerOptions | None = None, limits: Sequence[SenderLimit] = (),
                 backoff: Backoff | None = None,
                 trackers: Sequence[QualityTracker] = ()) -> Routing:
    """A Routing as build_routing makes it (no breaker trips unless `breaker` says so)."""
    breakers = Breakers(names, breaker or BreakerOptions(failures=1000))
    backoff = backoff or Backoff(initial=5, cap=300, multiplier=2)
    chain = PolicyChain(routers or [PrefixRouter([PrefixRoute("default", (), tuple(names))])],
                        breakers=breakers)
    return Routing(chain, breakers, SenderLimiter(limits), backoff, tuple(trackers))


def failing(_pdu: SubmitSm) -> SubmitResult:
    return SubmitResult(None, Status.ESME_RSYSERR, temporary=True, detail="system error")


async def submit_all(h: Harness, msgs: Sequence[Message]) -> None:
    """Commit the messages in one store call, then hand them over: all due at once."""
    await h.store.add_messages(list(msgs), [history.accepted(m, "smpp") for m in msgs])
    for msg in msgs:
        h.dispatcher.enqueue(msg)


async def until(condition: Callable[[], bool]) -> None:
    """Poll with growing virtual steps (each step costs the autojump threshold in real time)."""
    step = 0.01
    with trio.fail_after(HOUR):
        while not condition():
            await trio.sleep(step)
            step = min(step * 2, 1.0)


async def wait_sent(smsc: ScriptedSmsc, count: int) -> None:
    await until(lambda: len(smsc.sent) >= count)


# -- circuit breakers ----------------------------------------------------------------------------
async def test_failures_open_the_breaker_and_a_half_open_breaker_admits_one_probe_only(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    """Rule: consecutive temporary failures open a connector's breaker and it is skipped
    (traffic goes to the next connector); after the cool-down one probe is admitted, the other
    messages meanwhile go elsewhere; the probe's success closes it and traffic comes back."""
    healthy = [False]

    def answer_a(_pdu: SubmitSm) -> SubmitResult:
        return SubmitResult(f"a-{len(a.sent)}", 0) if healthy[0] else failing(_pdu)

    a, b = ScriptedSmsc("opA", answer_a), ScriptedSmsc("opB")
    routing = make_routing(["opA", "opB"], breaker=BreakerOptions(failures=2, cooldown=60))
    async with trio.open_nursery() as nursery, harness(
            tmp_path, {"opA": a, "opB": b}, nursery, routing=routing) as h:
        breaker = routing.breakers["opA"]
        for n in range(3):  # one after the other, each until it is in flight on B
            msg = h.message()
            await h.submit(msg)
            await wait_sent(b, n + 1)
        assert len(a.sent) == 2, "the third message skipped A: its breaker is open"
        assert breaker.state(h.clock.now()) is BreakerState.OPEN
        healthy[0] = True
        await trio.sleep(60)  # the cool-down
        assert breaker.state(h.clock.now()) is BreakerState.HALF_OPEN
        await submit_all(h, [h.message() for _ in range(3)])  # due together
        await wait_sent(b, 5)
        assert len(a.sent) == 3, "half-open: one probe to A, the other two to B"
        await until(lambda: breaker.state(h.clock.now()) is BreakerState.CLOSED)
        msg = h.message()
        await h.submit(msg)
        await wait_sent(a, 4)
        assert h.dispatcher.live[msg.id].msg.connector == "opA", "closed: traffic back on A"


async def test_a_message_waiting_only_for_an_open_breaker_goes_when_its_cooldown_ends(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    """Rule: a connector whose breaker is open is skipped like a down one; a message with no
    other connector waits and is attempted (the probe) once the cool-down has passed, not at
    its expiry."""
    healthy = [False]
    a = ScriptedSmsc("opA", lambda pdu: SubmitResult("a-ok", 0) if healthy[0] else failing(pdu))
    routing = make_routing(["opA"], breaker=BreakerOptions(failures=1, cooldown=100))
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": a}, nursery,
                                                      routing=routing) as h:
        msg = h.message()
        await h.submit(msg)
        await wait_sent(a, 1)
        healthy[0] = True  # the retry (5 s later) finds the breaker open: it waits
        await wait_sent(a, 2)
        times = [t for t, _ in a.sent]
        assert 100 - 0.01 <= times[1] - times[0] < 100 + 1
        assert routing.breakers["opA"].state(h.clock.now()) is BreakerState.CLOSED


async def test_refusals_caused_by_the_message_do_not_open_the_breaker(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    """Rule: a permanent refusal caused by the message itself (REJECTED: a bad address) is
    not the connector's failure; other permanent refusals and temporary ones are."""
    a = ScriptedSmsc("opA", lambda pdu: SubmitResult(None, Status.ESME_RINVDSTADR,
                                                      rejected=True))
    routing = make_routing(["opA"], breaker=BreakerOptions(failures=2, cooldown=60))
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": a}, nursery,
                                                      routing=routing) as h:
        for _ in range(4):
            msg = h.message()
            await h.submit(msg)
            assert (await h.wait_final(msg.id)).state is State.REJECTED
        breaker = routing.breakers["opA"]
        assert breaker.state(h.clock.now()) is BreakerState.CLOSED
        assert breaker.consecutive_failures == 0
        a.answer = lambda pdu: SubmitResult(None, Status.ESME_RSUBMITFAIL)  # not its fault
        for _ in range(2):
            msg = h.message()
            await h.submit(msg)
            assert (await h.wait_final(msg.id)).state is State.UNDELIVERABLE
        assert breaker.state(h.clock.now()) is BreakerState.OPEN


# -- retries up to the deadline -------------------------------------------------------------------
async def test_temporary_errors_retry_with_growing_jittered_delays_then_expire_with_one_receipt(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    """Rule: a temporary error is retried after the [retry] backoff (here "equal" jitter:
    between half and all of 5, 10, 20... s) until the validity ends; no attempt starts after
    it; at the deadline the message is EXPIRED and the upstream gets exactly one receipt."""
    a = ScriptedSmsc("opA", failing)
    routing = make_routing(["opA"], backoff=Backoff(initial=5, cap=300, multiplier=2,
                                                    jitter="equal"))
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": a}, nursery,
                                                      routing=routing) as h:
        h.dispatcher.rng = random.Random(11)
        msg = h.message(validity=200)
        await h.submit(msg)
        final = await h.wait_final(msg.id)
        await trio.sleep(1000)  # nothing else happens after the deadline
        deadline = h.clock.to_trio(msg.expires_at)
        times = [t for t, _ in a.sent]
        assert all(t < deadline for t in times)
        delays = [b - a for a, b in itertools.pairwise(times)]
        assert len(delays) >= 4
        for n, delay in enumerate(delays):
            base = 5 * 2 ** n
            assert base / 2 - 0.01 <= delay <= base + 0.01, (n, delays)
        assert delays == sorted(delays)
        assert any(abs(d - 5 * 2 ** n) > 0.05 for n, d in enumerate(delays)), "jitter applied"
        # the next retry would have started after the deadline
        assert times[-1] + (5 * 2 ** len(delays)) / 2 >= deadline - 0.01
        assert final.state is State.EXPIRED and final.attempts == len(times)
        assert final.done_at is not None and abs(final.done_at - msg.expires_at) < 0.01
        assert [r.state for r in h.reports if r.message_id == msg.id] == [State.EXPIRED]


# -- sender limits --------------------------------------------------------------------------------
async def test_a_limited_sender_goes_at_its_rate_and_another_sender_is_not_slowed(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    """Rule: a sender limited to 1 message/s on a connector goes out at that rate (its
    messages wait: no error, no attempt counted), while another sender's messages on the
    same connector all go at once."""
    a = ScriptedSmsc("opA")
    routing = make_routing(["opA"], limits=[SenderLimit("ACME", 1.0, 1, "opA")])
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": a}, nursery,
                                                      routing=routing) as h:
        limited = [h.message() for _ in range(6)]
        free = [dataclasses.replace(h.message(), source_addr="OTHER") for _ in range(6)]
        start = trio.current_time()
        await submit_all(h, limited + free)
        await wait_sent(a, 12)
        acme = sorted(t - start for t, pdu in a.sent if pdu.source_addr == "ACME")
        other = [t - start for t, pdu in a.sent if pdu.source_addr == "OTHER"]
        assert len(acme) == len(other) == 6
        assert max(other) < 0.5, "the other sender is not slowed"
        gaps = [y - x for x, y in itertools.pairwise(acme)]
        assert all(0.99 <= g <= 1.5 for g in gaps), gaps
        assert 5 - 0.01 <= acme[-1] - acme[0] < 6
        for msg in limited:
            live = h.dispatcher.live[msg.id].msg
            assert live.state is State.IN_FLIGHT and live.attempts == 1 and live.error == 0


# -- quality --------------------------------------------------------------------------------------
async def test_receipts_feed_the_quality_router_which_shifts_traffic_from_a_degraded_smsc(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    """Rule: every final receipt is fed to the quality trackers (delivered or not, with its
    latency); a quality router then sends less traffic to the SMSC whose delivery ratio for
    the destination dropped (here A delivers 1 message in 5, B all of them)."""
    a, b = ScriptedSmsc("opA"), ScriptedSmsc("opB")
    # A week's window: a store write slower than the autojump threshold (a busy machine)
    # may jump the virtual clock to a far timer; no receipt must fall out of the window.
    tracker = QualityTracker(QualityOptions(window=7 * 24 * HOUR, floor=0.05, prior=2.0))
    router = QualityRouter("quality", [Target("sms", "opA"), Target("sms", "opB")], tracker,
                           rng=random.Random(5))
    routing = make_routing(["opA", "opB"], routers=[router], trackers=[tracker])
    async with trio.open_nursery() as nursery, harness(
            tmp_path, {"opA": a, "opB": b}, nursery, routing=routing) as h:
        through: list[str] = []
        for _ in range(80):
            msg = h.message()
            await h.submit(msg)
            await h.wait_in_flight(msg, lambda: True)
            live = h.dispatcher.live[msg.id]
            connector = live.msg.connector or ""
            through.append(connector)
            delivered = connector == "opB" or through.count("opA") % 5 == 0
            await trio.sleep(3)  # the receipt's latency
            assert await h.receipt(connector, live.parts[0].smsc_id or "",
                                   "DELIVRD" if delivered else "UNDELIV", 0 if delivered else 1,
                                   hold=1)
            await h.wait_final(msg.id)
        now = h.clock.now()
        assert tracker.counts("opB", "33612345678", now) == (through.count("opB"),) * 2
        assert tracker.score("opA", "33612345678", now) < 0.5
        early, late = through[:20].count("opA") / 20, through[-30:].count("opA") / 30
        assert early >= 0.3, through[:20]
        assert late <= 0.25 and late < early, through


async def test_a_message_that_expires_without_a_receipt_counts_against_its_connector(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    """Rule: an SMSC that takes messages and never sends their receipts loses quality: a
    submitted part whose message expires without a receipt is fed to the trackers as not
    delivered."""
    a = ScriptedSmsc("opA")
    tracker = QualityTracker(QualityOptions(window=HOUR, floor=0.05, prior=2.0))
    routing = make_routing(["opA"], trackers=[tracker])
    async with trio.open_nursery() as nursery, harness(
            tmp_path, {"opA": a}, nursery, routing=routing) as h:
        msg = h.message(validity=60)
        await h.submit(msg)
        await h.wait_final(msg.id)
        assert h.dispatcher.live.get(msg.id) is None
        assert tracker.counts("opA", "33612345678", h.clock.now()) == (0, 1)  # 0 of 1
