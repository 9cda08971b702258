"""Graceful restarts: SIGTERM while submits stream in loses nothing and sends nothing twice.

The simulator and the gateway run as real processes (the harness of test_durability.py);
smpplib's Client is the upstream. Twice, the gateway is stopped with SIGTERM while two
upstream sessions submit, and started again; a last life collects the receipts. Each stop
must end in exit 0 within `[gateway] shutdown_timeout`, after a complete drain; across them,
every acknowledged message reaches the operator exactly once (a destination is never
submitted twice) and gets one final receipt upstream, never sent twice.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import smpplib.consts
import trio

from gateway import daemon
from gateway.config import GatewayConfig, SimulatorConfig
from gateway.model import PartState, State
from gateway.simulator import SmscSimulator
from gateway.store import Store
from smpp.constants import Status
from smpp.pdu import BindTransceiver, encode
from tests.stack import gateway_config, wait_for
from tests.test_durability import START_DEADLINE, Harness, Ledger, Life, Session
from tests.test_server import _read_pdus as read_pdus
from tests.test_server import _submit as submit_pdu

GRACEFUL_STOPS = 2
ACKS_BEFORE_STOP = 300  # acks of a life before its SIGTERM, the clients still submitting
SHUTDOWN_TIMEOUT = 10.0  # [gateway] shutdown_timeout's default, which the harness keeps


class PoliteSession(Session):
    """An upstream session that stops submitting once the gateway says it is not bound any
    more (it is being unbound), as a real client would, instead of spending its messages on
    refusals until the connection closes."""

    def _on_resp(self, pdu: Any, **kwargs: Any) -> None:
        super()._on_resp(pdu, **kwargs)
        if pdu.command == "submit_sm_resp" and pdu.status == smpplib.consts.SMPP_ESME_RINVBNDSTS:
            self.submitting.clear()


def _connect(harness: Harness, life: Life) -> None:
    life.submitting.set()
    for _ in range(2):
        session = PoliteSession(harness.ledger, harness.port, life.number, life.submitting,
                                life.stop)
        life.sessions.append(session)
        session.start()


def _stop_gracefully(harness: Harness, life: Life) -> None:
    """SIGTERM once ACKS_BEFORE_STOP submits were acknowledged, the clients submitting."""
    ledger = harness.ledger
    reached = ledger.wait(lambda: ledger.acked_in[life.number] >= ACKS_BEFORE_STOP,
                          START_DEADLINE)
    assert reached, f"life {life.number}: {ledger.acked_in[life.number]} acks"
    assert life.submitting.is_set(), "the clients stopped submitting before the SIGTERM"
    code, clean = life.proc.stop(timeout=SHUTDOWN_TIMEOUT + 5)
    assert clean, f"life {life.number} ignored SIGTERM:\n{life.proc.tail()}"
    assert code == 0, f"life {life.number} exited with {code}:\n{life.proc.tail()}"
    assert life.logged("daemon.drained"), f"life {life.number}: {life.proc.tail()}"
    life.stop.set()
    for session in life.sessions:
        session.join(timeout=15)
        assert not session.is_alive(), f"life {life.number}: an upstream session hung"


def test_sigterm_under_load_loses_nothing_acknowledged_and_submits_nothing_twice(
        tmp_path: Path) -> None:
    seed = random.SystemRandom().randrange(10**9)
    harness = Harness(tmp_path, seed)
    try:
        for number in range(1, GRACEFUL_STOPS + 1):
            life = harness.start(number, None)
            _connect(harness, life)
            _stop_gracefully(harness, life)
        last = harness.start(GRACEFUL_STOPS + 1, None)
        harness.collect(last)
        operator = httpx.get(f"{harness.control}/messages", params={"limit": 100_000},
                             timeout=10)
        operator.raise_for_status()
    finally:
        harness.close()

    ledger: Ledger = harness.ledger
    records = operator.json()["messages"]
    submitted = collections.Counter(r["destination_addr"] for r in records)
    twice = sorted(d for d, n in submitted.items() if n > 1)
    print(f"\nseed {seed}: acknowledged {len(ledger.acked)} "
          f"(per life {dict(ledger.acked_in)}), refused {dict(ledger.refused_in)}; "
          f"operator received {len(records)} submits for {len(submitted)} destinations")
    assert ledger.acked_in[1] and ledger.acked_in[2], "a life acknowledged nothing"
    never = sorted(m for m, (dest, _) in ledger.acked.items() if dest not in submitted)
    assert not never, f"{len(never)} acknowledged messages never reached the operator"
    assert not twice, f"{len(twice)} destinations submitted twice, e.g. {twice[:5]}"
    missing = ledger.missing_receipts()
    assert not missing, f"{len(missing)} acknowledged messages have no receipt upstream"
    again = {m: got for m, got in ledger.receipts.items() if len(got) > 1}
    assert not again, f"{len(again)} receipts sent twice upstream, e.g. {list(again.items())[:3]}"


# --- the drain, step by step, in one trio run ---------------------------------------------------

async def _bound_upstream(port: int) -> trio.SocketStream:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(encode(BindTransceiver(sequence=1, system_id="demo",
                                                 password="demopass")))
    [resp] = await read_pdus(stream, 1)
    assert resp.status == Status.ESME_ROK
    return stream


async def _refused(port: int) -> bool:
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return True
    await stream.aclose()
    return False


@dataclasses.dataclass
class _Stack:
    """A gateway in this trio run before an operator (the simulator) that answers every
    submit after `slow_delay`, and an upstream session bound to it."""

    config: GatewayConfig
    running: daemon.Running
    sim: SmscSimulator
    upstream: trio.SocketStream
    stop: trio.Event  # the gateway's shutdown trigger (its SIGTERM)
    stopped: trio.Event  # set when daemon.run has returned

    async def submit(self, count: int) -> list[str]:
        """Submit `count` messages; their ids, once all are acknowledged."""
        await self.upstream.send_all(b"".join(
            encode(dataclasses.replace(submit_pdu(f"336123456{i:02d}"), sequence=10 + i))
            for i in range(count)))
        answers = await read_pdus(self.upstream, count)
        assert [a.status for a in answers] == [Status.ESME_ROK] * count
        return [str(getattr(a, "message_id", "")) for a in answers]


@contextlib.asynccontextmanager
async def _slow_operator(tmp_path: Path, slow_delay: float, smsc: dict[str, Any],
                         **changes: Any) -> AsyncIterator[_Stack]:
    sim_config = SimulatorConfig(port=0, control_port=0, receipt_delay=60, seed=7, slow=1.0,
                                 slow_delay=slow_delay)
    async with trio.open_nursery() as nursery:
        sim = SmscSimulator(sim_config, window=sim_config.window)
        await nursery.start(sim.serve)
        config = gateway_config(tmp_path, sim.port, smsc, **changes)
        stop, stopped = trio.Event(), trio.Event()

        async def gateway(*, task_status: trio.TaskStatus[daemon.Running]) -> None:
            await daemon.run(config, stop.wait, task_status=task_status)
            stopped.set()

        running: daemon.Running = await nursery.start(gateway)
        await wait_for(lambda: all(c.is_up() for c in running.connectors.values()))
        upstream = await _bound_upstream(running.smpp_port)
        yield _Stack(config, running, sim, upstream, stop, stopped)
        await upstream.aclose()
        nursery.cancel_scope.cancel()


async def test_sigterm_sends_no_new_submit_and_stores_the_answers_of_those_on_the_wire(
        tmp_path: Path) -> None:
    """10 messages acknowledged upstream, 2 on the operator's window (answered slowly), 8
    queued behind them: the drain sends none of the 8, waits for the 2 answers and stores
    them, refuses new connections, and ends with the 8 queued in the store for the next
    start (nothing there is ever sent twice)."""
    async with _slow_operator(tmp_path, 0.5, {"binds": 1, "window": 2}) as gw:
        ids = await gw.submit(10)
        await wait_for(lambda: gw.sim.stats.slow == 2)  # the window is full; 8 wait behind it
        gw.stop.set()
        with trio.fail_after(5):
            while not await _refused(gw.running.smpp_port):
                await trio.sleep(0.01)
        with trio.fail_after(gw.config.shutdown_timeout + 1):
            await gw.stopped.wait()
        assert len(gw.sim.submitted) == 2

    async with Store.open(gw.config.store.path) as store:
        messages = [await store.get_message(i) for i in ids]
        parts = [await store.get_parts(i) for i in ids]
    sent = {r.message_id for r in gw.sim.submitted}
    states = collections.Counter(m.state for m in messages if m is not None)
    assert states == {State.IN_FLIGHT: 2, State.QUEUED: 8}
    assert {p.smsc_id for ps in parts for p in ps if p.state is PartState.SUBMITTED} == sent


async def test_a_drain_cut_short_by_shutdown_timeout_exits_in_time_and_keeps_the_message(
        tmp_path: Path) -> None:
    """An operator that never answers: the drain waits for it `shutdown_timeout`, no longer,
    and the message whose answer never came is still unfinished in the store (sent again
    after the restart: at least once)."""
    async with _slow_operator(tmp_path, 600, {"binds": 1}, shutdown_timeout=1.0) as gw:
        [message_id] = await gw.submit(1)
        await wait_for(lambda: gw.sim.stats.slow == 1)
        gw.stop.set()
        began = trio.current_time()
        with trio.fail_after(gw.config.shutdown_timeout + 1):  # the unbinds are not waited for
            await gw.stopped.wait()
        assert trio.current_time() - began >= gw.config.shutdown_timeout

    async with Store.open(gw.config.store.path) as store:
        message = await store.get_message(message_id)
    assert message is not None and message.state is State.QUEUED
