"""The trio connection adapter's timers and window, over in-memory streams in virtual time."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import cast

import pytest
import trio
import trio.testing

from routing.smsc import RateLimiter
from smpp.connection import (
    OUTPUT_LIMIT,
    RECEIVE_SIZE,
    Connection,
    ConnectionClosed,
    ResponseTimeout,
    Turns,
    WindowFull,
)
from smpp.pdu import (
    BindTransceiver,
    DeliverSm,
    EnquireLink,
    FrameReader,
    Pdu,
    SubmitSm,
    Unbind,
    decode,
    encode,
)
from smpp.session import BindState, Side
from smpp.timers import TimerHandle, Timers


async def wait_until(condition: Callable[[], bool], timeout: float = 100.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def _bind_ok(conn: Connection, pdu: Pdu) -> None:
    if isinstance(pdu, BindTransceiver):
        conn.respond(pdu.response(system_id="smsc"))


async def _pair(nursery: trio.Nursery, *, smsc_handler=_bind_ok,  # type: ignore[no-untyped-def]
                **esme_kwargs: object) -> tuple[Connection, Connection]:
    a, b = trio.testing.memory_stream_pair()
    esme = Connection(a, Side.ESME, **esme_kwargs)  # type: ignore[arg-type]
    smsc = Connection(b, Side.SMSC, enquire_link_interval=1e9)
    nursery.start_soon(smsc.run, smsc_handler)

    async def esme_handler(_c: Connection, _p: Pdu) -> None:
        return None

    nursery.start_soon(esme.run, esme_handler)
    resp = await esme.request(BindTransceiver(system_id="a", password="b"))
    assert resp.status == 0 and esme.state is BindState.BOUND_TRX
    return esme, smsc


async def test_request_without_answer_times_out_after_response_timeout(
        clock: trio.testing.MockClock) -> None:
    async def silent(conn: Connection, pdu: Pdu) -> None:
        await _bind_ok(conn, pdu)  # answers binds, never submits

    async with trio.open_nursery() as nursery:
        esme, _ = await _pair(nursery, smsc_handler=silent, response_timeout=7.0)
        start = trio.current_time()
        with pytest.raises(ResponseTimeout):
            await esme.request(SubmitSm(destination_addr="1"))
        assert 7.0 <= trio.current_time() - start <= 8.0
        assert not esme.session.outstanding
        nursery.cancel_scope.cancel()


async def test_window_caps_outstanding_requests(clock: trio.testing.MockClock) -> None:
    release = trio.Event()
    peak = 0

    async def slow(conn: Connection, pdu: Pdu) -> None:
        nonlocal peak
        if isinstance(pdu, SubmitSm):
            peak = max(peak, len(conn.session.outstanding) + 1)
            await release.wait()
            conn.respond(pdu.response(message_id="x"))
        else:
            await _bind_ok(conn, pdu)

    async with trio.open_nursery() as nursery:
        esme, _ = await _pair(nursery, smsc_handler=slow, window=3, response_timeout=100)
        done = 0

        async def one() -> None:
            nonlocal done
            await esme.request(SubmitSm(destination_addr="1"))
            done += 1

        for _ in range(10):
            nursery.start_soon(one)
        await trio.sleep(1)
        assert len(esme.session.outstanding) == 3
        release.set()
        with trio.fail_after(10):
            while done < 10:
                await trio.sleep(0.1)
        nursery.cancel_scope.cancel()


async def test_send_request_reports_each_outcome_once_through_its_callback(
        clock: trio.testing.MockClock) -> None:
    answered: list[SubmitSm] = []

    async def answer_some(conn: Connection, pdu: Pdu) -> None:
        if isinstance(pdu, SubmitSm):
            answered.append(pdu)
            if pdu.destination_addr == "1":
                conn.respond(pdu.response(message_id="m1"))
        else:
            await _bind_ok(conn, pdu)

    outcomes: list[tuple[str, str | None, str | None]] = []

    def record(tag: str) -> Callable[[Pdu | None, Exception | None], None]:
        def done(resp: Pdu | None, exc: Exception | None) -> None:
            outcomes.append((tag, getattr(resp, "message_id", None),
                             type(exc).__name__ if exc else None))
        return done

    async with trio.open_nursery() as nursery:
        esme, _ = await _pair(nursery, smsc_handler=answer_some, window=2, response_timeout=5)
        esme.send_request(SubmitSm(destination_addr="1"), record("answered"))
        esme.send_request(SubmitSm(destination_addr="2"), record("silent"))
        assert outcomes == []  # never called from inside send_request
        with pytest.raises(WindowFull):
            esme.send_request(SubmitSm(destination_addr="3"), record("refused"))
        await trio.sleep(1)
        assert outcomes == [("answered", "m1", None)]
        assert esme.free_slots() == 1
        await trio.sleep(5)
        assert outcomes[1] == ("silent", None, "ResponseTimeout")
        assert esme.free_slots() == 2 and not esme.session.outstanding
        esme.send_request(SubmitSm(destination_addr="4"), record("closed"))
        await esme.aclose()
        assert outcomes[2] == ("closed", None, "ConnectionClosed")
        with pytest.raises(ConnectionClosed):
            esme.send_request(SubmitSm(destination_addr="5"), record("late"))
        assert len(outcomes) == 3 and len(answered) >= 2
        nursery.cancel_scope.cancel()


async def test_idle_link_is_probed_and_a_dead_peer_closes_the_connection(
        clock: trio.testing.MockClock) -> None:
    a, b = trio.testing.memory_stream_pair()
    esme = Connection(a, Side.ESME, enquire_link_interval=30, response_timeout=10)

    async def nothing(_c: Connection, _p: Pdu) -> None:
        return None

    async with trio.open_nursery() as nursery:
        nursery.start_soon(esme.run, nothing)
        # the peer answers the bind, then reads what we send but never answers
        nursery.start_soon(esme.request, BindTransceiver(system_id="a", password="b"))
        bind = decode(await b.receive_some(1000))
        await b.send_all(encode(bind.response(system_id="smsc")))
        await wait_until(lambda: esme.session.bound)
        bound_at = trio.current_time()
        seen = b""
        with trio.fail_after(100):
            while b"\x00\x00\x00\x15" not in seen:  # enquire_link's command id
                seen += await b.receive_some(100)
        probe_at = trio.current_time()
        assert probe_at - bound_at == pytest.approx(30, abs=0.05)
        with trio.fail_after(100):
            while not esme.closed:
                await trio.sleep(1)
        assert trio.current_time() - probe_at <= 12
        nursery.cancel_scope.cancel()


async def test_peer_silent_beyond_inactivity_timeout_is_disconnected(
        clock: trio.testing.MockClock) -> None:
    a, _b = trio.testing.memory_stream_pair()
    smsc = Connection(a, Side.SMSC, inactivity_timeout=120, enquire_link_interval=1e9)

    async def nothing(_c: Connection, _p: Pdu) -> None:
        return None

    with trio.fail_after(1000):
        await smsc.run(nothing)
    assert smsc.closed
    assert trio.current_time() == pytest.approx(120)


async def test_requests_on_a_closed_connection_fail_fast(clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        esme, smsc = await _pair(nursery)
        await smsc.aclose()
        with trio.fail_after(5), pytest.raises((ConnectionClosed, ResponseTimeout)):
            await esme.request(SubmitSm(destination_addr="1"))
        nursery.cancel_scope.cancel()


async def test_rate_limiter_spaces_submits_evenly(clock: trio.testing.MockClock) -> None:
    limiter = RateLimiter(50)
    start = trio.current_time()
    for _ in range(101):
        await limiter.acquire()
    assert trio.current_time() - start == pytest.approx(2.0)
    limiter.pause(1.0)
    before = trio.current_time()
    await limiter.acquire()
    assert trio.current_time() - before == pytest.approx(1.0)


async def test_an_unlimited_rate_is_limited_only_while_a_pause_lasts(
        clock: trio.testing.MockClock) -> None:
    limiter = RateLimiter(0)
    assert not limiter.limited()
    limiter.pause(1.0)  # e.g. the SMSC said ESME_RTHROTTLED
    assert limiter.limited()
    await trio.sleep(1.5)
    assert not limiter.limited()
    assert RateLimiter(10).limited()  # a rate: acquire() may always have to wait


def test_turns_go_round_the_pool_skipping_connections_that_cannot_take_a_request() -> None:
    class Fake:
        def __init__(self, name: str, slots: int = 1, closed: bool = False,
                     bound: bool = True) -> None:
            self.name, self.slots, self.closed = name, slots, closed
            self.session = type("S", (), {"bound": bound})()

        def free_slots(self) -> int:
            return self.slots

    a, full, gone, unbound, b = (Fake("a"), Fake("full", slots=0), Fake("gone", closed=True),
                                 Fake("unbound", bound=False), Fake("b"))
    pool = cast(list[Connection], [a, full, gone, unbound, b])
    turns = Turns()
    assert [cast(Fake, turns.pick(pool)).name for _ in range(4)] == ["a", "b", "a", "b"]
    # asking whether one could take a request takes no turn
    assert turns.can_pick(pool) and cast(Fake, turns.pick(pool)).name == "a"
    a.slots = b.slots = 0
    assert turns.pick(pool) is None and turns.pick([]) is None
    assert not turns.can_pick(pool) and not turns.can_pick([])


async def _peer_binds(peer: trio.abc.Stream) -> None:
    await peer.send_all(encode(BindTransceiver(sequence=1, system_id="a", password="b")))


async def test_a_peer_that_never_reads_is_held_to_a_bounded_output_then_cut_off(
        clock: trio.testing.MockClock) -> None:
    """The rule: what we owe a peer that stops reading stays bounded (we stop reading it
    too), and a write that makes no progress for write_timeout closes the connection."""
    ours, peer = trio.testing.lockstep_stream_pair()  # a send blocks until the peer reads
    smsc = Connection(ours, Side.SMSC, write_timeout=20, enquire_link_interval=math.inf)
    most_queued = 0
    sent = 0

    async def flood() -> None:  # enquire_link after enquire_link, never reading an answer
        nonlocal sent
        probe = encode(EnquireLink(sequence=2))
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while True:
                await peer.send_all(probe * 64)
                sent += 64

    async def watch() -> None:
        nonlocal most_queued
        while not smsc.closed:
            most_queued = max(most_queued, smsc.session.buffered + smsc._writing)
            await trio.sleep(0.5)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(smsc.run, _bind_ok)
        await _peer_binds(peer)
        nursery.start_soon(flood)
        nursery.start_soon(watch)
        with trio.fail_after(100):
            while not smsc.closed:
                await trio.sleep(1)
        closed_at = trio.current_time()
        nursery.cancel_scope.cancel()
    assert most_queued <= OUTPUT_LIMIT + RECEIVE_SIZE  # at most one read's answers beyond
    assert sent * 16 < OUTPUT_LIMIT + 2 * RECEIVE_SIZE  # it could not make us read more
    assert 20 <= closed_at <= 21


async def test_a_slow_reader_making_progress_is_not_cut_off(
        clock: trio.testing.MockClock) -> None:
    ours, peer = trio.testing.lockstep_stream_pair()
    smsc = Connection(ours, Side.SMSC, write_timeout=10, enquire_link_interval=math.inf)
    received = 0

    async def trickle() -> None:  # 4 KiB every 2 s: a write chunk (16 KiB) every 8 s < 10 s
        nonlocal received
        while True:
            await trio.sleep(2)
            received += len(await peer.receive_some(4096))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(smsc.run, _bind_ok)
        await _peer_binds(peer)
        for seq in range(2, 2 + 40 * 64, 64):
            await peer.send_all(b"".join(encode(EnquireLink(sequence=s))
                                         for s in range(seq, seq + 64)))
        nursery.start_soon(trickle)
        await trio.sleep(60)
        assert not smsc.closed and received > 16 * 64
        nursery.cancel_scope.cancel()


async def test_requests_beyond_the_incoming_window_wait_in_the_peers_socket(
        clock: trio.testing.MockClock) -> None:
    """The rule: at most incoming_window requests of a peer are unanswered at once; the
    rest are not even decoded until some are answered."""
    handed: list[SubmitSm] = []

    async def hold(conn: Connection, pdu: Pdu) -> None:
        if isinstance(pdu, SubmitSm):
            handed.append(pdu)
        else:
            await _bind_ok(conn, pdu)

    ours, peer = trio.testing.memory_stream_pair()
    smsc = Connection(ours, Side.SMSC, incoming_window=5, enquire_link_interval=math.inf)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(smsc.run, hold)
        await _peer_binds(peer)
        assert decode(await peer.receive_some(1000)).status == 0  # bound
        await peer.send_all(b"".join(encode(SubmitSm(sequence=s, destination_addr="1"))
                                     for s in range(2, 52)))
        await trio.sleep(1)
        assert len(handed) == 5 and smsc.unanswered == 5
        smsc.respond(handed[0].response(message_id="m"))
        smsc.respond(handed[1].response(message_id="m"))
        await trio.sleep(1)
        assert len(handed) == 7
        for pdu in handed[2:]:
            smsc.respond(pdu.response(message_id="m"))
        await trio.sleep(1)
        assert len(handed) == 12
        nursery.cancel_scope.cancel()


async def test_a_connection_that_does_not_bind_in_time_is_closed(
        clock: trio.testing.MockClock) -> None:
    ours, _peer = trio.testing.memory_stream_pair()
    smsc = Connection(ours, Side.SMSC, bind_timeout=30, enquire_link_interval=math.inf)
    with trio.fail_after(100):
        await smsc.run(_bind_ok)
    assert trio.current_time() == pytest.approx(30)


async def test_an_idle_bound_connection_wakes_only_for_its_keepalive(
        clock: trio.testing.MockClock) -> None:
    """The rule: no periodic timer per connection; an idle bound link costs two timer
    firings per enquire_link interval (its probe, the probe's deadline), nothing else."""
    fired: list[float] = []

    class CountingTimers(Timers):
        def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
            def counted() -> None:
                fired.append(trio.current_time())
                callback()
            return super().call_at(when, counted)

    timers = CountingTimers()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timers.run)
        esme, _smsc = await _pair(nursery, enquire_link_interval=30, response_timeout=10,
                                  timers=timers)
        start = trio.current_time()
        await trio.sleep(300)
        assert not esme.closed
        idle = [t for t in fired if t > start]
        assert abs(len(idle) - 2 * 300 // 30) <= 1  # (a 1 s sweeper alone fired 300 times)
        assert len(timers) == 1  # one live entry for the connection
        nursery.cancel_scope.cancel()


async def test_a_stalled_write_is_still_cut_when_inactivity_closes_the_link(
        clock: trio.testing.MockClock) -> None:
    """The rule: leaving on inactivity keeps the other deadlines: a write that cannot go out
    (the unbind included) still closes the connection after write_timeout."""
    ours, peer = trio.testing.lockstep_stream_pair()  # a send blocks until the peer reads
    conn = Connection(ours, Side.SMSC, inactivity_timeout=10, write_timeout=30,
                      response_timeout=100, enquire_link_interval=math.inf)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.run, _bind_ok)
        await _peer_binds(peer)
        await peer.receive_some(1000)  # the bind_resp; then the peer neither reads nor sends
        await trio.sleep(5)
        big = DeliverSm(source_addr="1", destination_addr="2")
        big.tlvs[0x0424] = b"x" * 2000  # too big for the lockstep stream: the write stalls
        conn.send_request(big, lambda _r, _e: None)
        with trio.fail_after(100):
            while not conn.closed:
                await trio.sleep(1)
        assert trio.current_time() <= 10 + 30 + 1
        nursery.cancel_scope.cancel()


async def _slow_submits(conn: Connection, pdu: Pdu) -> None:
    """Binds answered at once, each submit 2 s later (as after its store commit)."""
    if isinstance(pdu, SubmitSm):
        await trio.sleep(2)
        conn.respond(pdu.response(message_id="m1"))
    else:
        await _bind_ok(conn, pdu)


async def test_an_unbind_is_answered_after_the_requests_sent_before_it(
        clock: trio.testing.MockClock) -> None:
    """The rule: an unbind does not cancel what the peer asked before it: its submits are
    answered (they may be stored already), then the unbind_resp."""
    ours, peer = trio.testing.memory_stream_pair()
    smsc = Connection(ours, Side.SMSC, enquire_link_interval=math.inf)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(smsc.run, _slow_submits)
        await _peer_binds(peer)
        answers: list[Pdu] = [decode(await peer.receive_some(1000))]  # bound
        await peer.send_all(encode(SubmitSm(sequence=2, destination_addr="1"))
                            + encode(Unbind(sequence=3)))
        reader = FrameReader()
        with trio.fail_after(20):
            while len(answers) < 3:
                data = await peer.receive_some(4096)
                assert data, f"closed before answering, after {answers}"
                reader.feed(data)
                answers += [decode(f) for f in reader.frames()]
        assert [a.command_id.name for a in answers] == [
            "BIND_TRANSCEIVER_RESP", "SUBMIT_SM_RESP", "UNBIND_RESP"]
        nursery.cancel_scope.cancel()


class _CountingStream(trio.abc.Stream):
    """A stream that records what each send_all call carried."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.sends: list[bytes] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sends.append(bytes(data))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize("coalesce", [True, False])
async def test_coalesce_false_writes_every_pdu_in_a_send_of_its_own(
        clock: trio.testing.MockClock, coalesce: bool) -> None:
    a, b = trio.testing.memory_stream_pair()
    counted = _CountingStream(a)
    esme = Connection(counted, Side.ESME, coalesce=coalesce)
    smsc = Connection(b, Side.SMSC, enquire_link_interval=1e9)

    async def answer(conn: Connection, pdu: Pdu) -> None:
        if isinstance(pdu, SubmitSm):
            conn.respond(pdu.response(message_id="x"))
        else:
            await _bind_ok(conn, pdu)

    async def ignore(_c: Connection, _p: Pdu) -> None:
        return None

    async with trio.open_nursery() as nursery:
        nursery.start_soon(smsc.run, answer)
        nursery.start_soon(esme.run, ignore)
        await esme.request(BindTransceiver(system_id="a", password="b"))
        counted.sends.clear()
        answers: list[Pdu | None] = []
        for _ in range(5):  # queued in one go: a coalescing writer sends them together
            esme.send_request(SubmitSm(destination_addr="1"), lambda r, _e: answers.append(r))
        await wait_until(lambda: len(answers) == 5)
        nursery.cancel_scope.cancel()
    assert all(r is not None and r.status == 0 for r in answers)
    if coalesce:
        assert len(counted.sends) == 1
    else:
        assert len(counted.sends) == 5
        assert all(int.from_bytes(d[:4], "big") == len(d) for d in counted.sends)
async def test_our_unbind_still_answers_what_the_peer_asked_before_it(
        clock: trio.testing.MockClock) -> None:
    """The rule, for our own unbind (a graceful shutdown): a peer that answers the unbind at
    once still gets the answers to its requests sent before it (a submit waiting for its
    commit, acknowledged when stored), then the connection closes."""
    ours, peer = trio.testing.memory_stream_pair()
    smsc = Connection(ours, Side.SMSC, enquire_link_interval=math.inf)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(smsc.run, _slow_submits)
        await _peer_binds(peer)
        reader = FrameReader()
        received: list[Pdu] = []

        async def read() -> bool:
            data = await peer.receive_some(4096)
            reader.feed(data)
            received.extend(decode(f) for f in reader.frames())
            return bool(data)

        await read()  # bind_transceiver_resp
        await peer.send_all(encode(SubmitSm(sequence=2, destination_addr="1")))
        await wait_until(lambda: smsc.unanswered == 1)
        nursery.start_soon(smsc.unbind, 10.0)
        with trio.fail_after(20):
            while not any(isinstance(p, Unbind) for p in received):
                assert await read()
            [unbind] = [p for p in received if isinstance(p, Unbind)]
            await peer.send_all(encode(unbind.response()))  # answered at once
            while await read():
                pass
        assert [p.command_id.name for p in received] == [
            "BIND_TRANSCEIVER_RESP", "UNBIND", "SUBMIT_SM_RESP"]
        assert smsc.closed
        nursery.cancel_scope.cancel()
