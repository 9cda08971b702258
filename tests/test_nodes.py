"""Rules of several gateway nodes on one PostgreSQL store, end to end (what exists of it):
a receipt the SMSC sends on another node's bind reaches the node working on its message,
and through it the upstream, once."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client import REGISTRY

from gateway import daemon
from gateway.config import AdminConfig, GatewayConfig, SimulatorConfig, StoreConfig
from gateway.model import Part, PartState, State
from gateway.simulator import SmscSimulator
from routing.channel import ProviderReceipt
from smpp.receipt import parse_receipt
from tests.stack import SmpplibEsme, gateway_config, wait_for


@dataclasses.dataclass
class Nodes:
    running: list[daemon.Running]
    simulator: SmscSimulator
    stops: list[trio.Event]
    done: list[trio.Event]

    async def stop(self, i: int) -> None:
        """A graceful stop (SIGTERM) of node i, waited for."""
        self.stops[i].set()
        with trio.fail_after(30):
            await self.done[i].wait()


@contextlib.asynccontextmanager
async def nodes(state_dir: Path, dsn: str, names: tuple[str, ...],
                receipt_delay: float = 0.05, sim: SimulatorConfig | None = None,
                smsc: dict[str, Any] | None = None, **changes: Any) -> AsyncIterator[Nodes]:
    """One SMSC simulator and a gateway node per name, all on the database ``dsn``; the
    SMSC's binds as many as the nodes (each node leases one bind slot: gateway/slots.py)."""
    smsc = smsc or {}
    sim_config = sim or SimulatorConfig(port=0, control_port=0, receipt_delay=receipt_delay,
                                        seed=7)
    async with trio.open_nursery() as nursery:
        simulator = SmscSimulator(sim_config, window=sim_config.window)
        await nursery.start(simulator.serve)
        got = Nodes([], simulator, [], [])
        for name in names:
            config = gateway_config(
                state_dir, simulator.port, {"binds": len(names), **smsc}, node=name,
                store=StoreConfig(backend="postgresql", dsn=dsn, shared=True),
                admin=AdminConfig(socket=state_dir / f"{name}.sock"), **changes)
            stop, done = trio.Event(), trio.Event()

            async def node(config: GatewayConfig = config, stop: trio.Event = stop,
                           done: trio.Event = done, *,
                           task_status: trio.TaskStatus[daemon.Running]) -> None:
                try:
                    await daemon.run(config, stop.wait, task_status=task_status)
                finally:
                    done.set()

            got.running.append(await nursery.start(node))
            got.stops.append(stop)
            got.done.append(done)
        with trio.fail_after(10):
            while not all(c.is_up() for r in got.running for c in r.connectors.values()):
                await trio.sleep(0.01)
        yield got
        for stop in got.stops:
            stop.set()
        nursery.cancel_scope.cancel()


async def test_receipts_taken_on_another_nodes_bind_reach_the_upstream_through_the_owner(
        tmp_path: Path, pg_dsn: str) -> None:
    count = 40
    before = REGISTRY.get_sample_value("smsgw_receipts_handed_over_total", {"smsc": "sim"})
    async with nodes(tmp_path, pg_dsn, ("a", "b")) as cluster:
        (a, b), sim = cluster.running, cluster.simulator
        assert a.store.epoch != b.store.epoch
        esme = SmpplibEsme(a.smpp_port)  # the upstream is bound on a only

        def submit_all() -> None:
            esme.bind()
            for i in range(count):
                esme.submit(f"336{i:08d}", b"code 1234")
            esme.read_until(lambda: len(esme.resps) == count and len(esme.delivered) == count,
                            timeout=30)
            esme.close()

        with trio.fail_after(40):
            await trio.to_thread.run_sync(submit_all)
        ids = {r.message_id.decode() for r in esme.resps}
        receipts = [parse_receipt(d.short_message) for d in esme.delivered]
        assert sorted(r.id for r in receipts if r is not None) == sorted(ids)  # each once
        # The simulator sends receipts to its receivers in turn: about half went to b's binds,
        # which handed them over to a (applied there, and deleted).
        handed = REGISTRY.get_sample_value("smsgw_receipts_handed_over_total", {"smsc": "sim"})
        assert (handed or 0) - (before or 0) >= count // 4
        assert await b.store._read("SELECT count(*) FROM inbox") == [(0,)]
        moved = [e for m in ids for e in await a.store.events_of(m) if e.kind == "receipt"]
        assert len(moved) == count
        assert len(sim.submitted) == count
        assert not (await b.store.unfinished_messages())
        await wait_for(lambda: a.reporter.pending_count("demo") == 0)


async def test_the_work_of_a_stopped_node_goes_on_at_another_and_its_receipts_reach_upstream(
        tmp_path: Path, pg_dsn: str) -> None:
    count = 20
    async with nodes(tmp_path, pg_dsn, ("a", "b"), receipt_delay=2.0) as cluster:
        (a, b), sim = cluster.running, cluster.simulator
        sender = SmpplibEsme(a.smpp_port)

        def submit_all() -> None:
            sender.bind("transmitter")
            for i in range(count):
                sender.submit(f"336{i:08d}", b"code 1234")
            sender.read_until(lambda: len(sender.resps) == count)
            sender.close()

        with trio.fail_after(20):
            await trio.to_thread.run_sync(submit_all)
        await wait_for(lambda: len(sim.submitted) == count)  # all with the SMSC, receipts due
        adopted = REGISTRY.get_sample_value("smsgw_messages_adopted_total",
                                            {"state": "IN_FLIGHT"}) or 0
        await cluster.stop(0)  # a stops: its unfinished messages are nobody's
        await wait_for(lambda: len(b.dispatcher.live) == count)  # b adopted them
        assert REGISTRY.get_sample_value("smsgw_messages_adopted_total",
                                         {"state": "IN_FLIGHT"}) == adopted + count
        receiver = SmpplibEsme(b.smpp_port)

        def receive_all() -> None:
            receiver.bind("receiver")
            receiver.read_until(lambda: len(receiver.delivered) == count, timeout=30)
            receiver.close()

        with trio.fail_after(40):
            await trio.to_thread.run_sync(receive_all)
        ids = sorted(r.message_id.decode() for r in sender.resps)
        receipts = [parse_receipt(d.short_message) for d in receiver.delivered]
        assert sorted(r.id for r in receipts if r is not None) == ids  # each once
        assert len(sim.submitted) == count  # nothing sent twice: all had been answered


async def test_a_stop_taken_on_one_node_refuses_marketing_through_every_node_within_a_second(
        tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.config import load_config
    from smpp.constants import Status

    conf = Path(__file__).resolve().parent.parent / "conf"
    monkeypatch.chdir(conf.parent)  # the demo rules name conf/senders.toml
    phone = "33612345678"
    async with nodes(tmp_path, pg_dsn, ("a", "b"),
                     rules=load_config(conf / "demo.toml").rules) as cluster:
        a, b = cluster.running
        await cluster.simulator.inject_mo(phone, "36111", "Stop")  # to a's or b's bind

        def knows(node: daemon.Running) -> bool:
            return node.screening is not None and node.screening.optouts.contains("demo", phone)

        await wait_for(lambda: knows(a) or knows(b))
        first = trio.current_time()
        await wait_for(lambda: knows(a) and knows(b))
        assert trio.current_time() - first < 1.0
        for node in (a, b):
            esme = SmpplibEsme(node.smpp_port)

            def submit(esme: SmpplibEsme = esme) -> None:
                esme.bind("transmitter")
                esme.submit(phone, b"Promo -20%", service_type="MKT")
                esme.read_until(lambda: bool(esme.resps))
                esme.close()

            with trio.fail_after(20):
                await trio.to_thread.run_sync(submit)
            assert [r.status for r in esme.resps] == [Status.ESME_RX_R_APPN]


async def test_a_receipt_crossing_three_nodes_reaches_the_upstream_within_a_second(
        tmp_path: Path, pg_dsn: str) -> None:
    """Submitted on a, the SMSC's receipt on any node's bind (b's for some), the upstream's
    receiver bound on c only: each receipt reaches it within a second of its submit_sm_resp
    (plus the simulator's 50 ms), once."""
    import time

    count = 30
    before = REGISTRY.get_sample_value("smsgw_reports_claimed_total",
                                       {"account": "demo", "via": "smpp"}) or 0
    async with nodes(tmp_path, pg_dsn, ("a", "b", "c")) as cluster:
        a, _, c = cluster.running
        receiver = SmpplibEsme(c.smpp_port)
        got: dict[str, float] = {}

        def received(pdu: Any, **kw: Any) -> None:  # what it returns is the deliver_sm_resp's
            got.setdefault(pdu.receipted_message_id.rstrip(b"\0").decode(), time.monotonic())

        receiver.client.set_message_received_handler(received)
        await trio.to_thread.run_sync(receiver.bind, "receiver")
        sender = SmpplibEsme(a.smpp_port)
        answered: dict[str, float] = {}
        sender.client.set_message_sent_handler(
            lambda pdu, **kw: answered.setdefault(pdu.message_id.decode(), time.monotonic()))

        def submit_all() -> None:
            sender.bind("transmitter")
            for i in range(count):
                sender.submit(f"336{i:08d}", b"code 1234")
            sender.read_until(lambda: len(answered) == count)
            sender.close()

        def receive_all() -> None:
            receiver.read_until(lambda: len(got) == count, timeout=30)
            receiver.close()

        with trio.fail_after(40):
            await trio.to_thread.run_sync(submit_all)
            await trio.to_thread.run_sync(receive_all)
        assert set(got) == set(answered)
        slowest = max(got[m] - answered[m] for m in answered)
        assert slowest < 1.05, f"slowest receipt {slowest:.3f} s after its submit_sm_resp"
        claimed = (REGISTRY.get_sample_value("smsgw_reports_claimed_total",
                                             {"account": "demo", "via": "smpp"}) or 0) - before
        assert claimed == count  # all made on a, delivered by c
        assert len(cluster.simulator.submitted) == count


async def test_messages_an_smsc_never_answers_for_expire_once_each_on_three_nodes(
        tmp_path: Path, pg_dsn: str) -> None:
    """1,000 messages with 10 s validity through three nodes toward an SMSC that sends no
    receipt: each expires once, on the node working on it, and its EXPIRED receipt reaches
    the upstream (bound on one node) once."""
    count, validity = 1000, 10.0
    silent = SimulatorConfig(port=0, control_port=0, delivered=0.0, no_receipt=1.0, seed=7,
                             window=100)
    async with nodes(tmp_path, pg_dsn, ("a", "b", "c"), sim=silent,
                     validity=validity) as cluster:
        receiver = SmpplibEsme(cluster.running[2].smpp_port)
        got: dict[str, str] = {}

        def received(pdu: Any, **kw: Any) -> None:
            parsed = parse_receipt(pdu.short_message)
            assert parsed is not None
            assert parsed.id not in got, f"{parsed.id}: a second receipt"
            got[parsed.id] = parsed.stat

        receiver.client.set_message_received_handler(received)
        await trio.to_thread.run_sync(receiver.bind, "receiver")
        senders = [SmpplibEsme(node.smpp_port) for node in cluster.running]

        def submit(esme: SmpplibEsme, first: int, n: int) -> None:
            esme.bind("transmitter")
            for i in range(first, first + n):
                esme.submit(f"336{i:08d}", b"code 1234")
            esme.read_until(lambda: len(esme.resps) == n, timeout=60)
            esme.close()

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for k, esme in enumerate(senders):
                    n = count // 3 + (1 if k < count % 3 else 0)
                    nursery.start_soon(trio.to_thread.run_sync, submit, esme,
                                       k * (count // 3 + 1), n)

        def receive_all() -> None:
            receiver.read_until(lambda: len(got) == count, timeout=60)
            receiver.close()

        with trio.fail_after(validity + 60):
            await trio.to_thread.run_sync(receive_all)
        acked = {r.message_id.decode() for esme in senders for r in esme.resps
                 if r.status == 0}
        assert len(acked) == count and set(got) == acked
        assert set(got.values()) == {"EXPIRED"}
        assert len(cluster.simulator.submitted) == count  # each sent once
        stats = await cluster.running[0].store.stats()
        assert stats["EXPIRED"] == count


async def test_an_accounts_throughput_is_shared_by_its_binds_on_each_node(
        tmp_path: Path, pg_dsn: str) -> None:
    """Account "other" (5 msg/s) bound on node a only: a's share (1 + 1) / (1 bind + 2 nodes)
    of 5, b's (0 + 1) / 3: together 5, following the binds."""
    async with nodes(tmp_path, pg_dsn, ("a", "b")) as cluster:
        a, b = cluster.running

        def rates() -> tuple[float, float]:
            return (a.account_states["other"].bucket.rate,
                    b.account_states["other"].bucket.rate)

        await wait_for(lambda: rates() == (2.5, 2.5))  # no bind anywhere: half each
        esme = SmpplibEsme(a.smpp_port, "other", "otherpw")
        await trio.to_thread.run_sync(esme.bind, "transmitter")
        try:
            await wait_for(lambda: abs(rates()[0] - 10 / 3) < 1e-6
                           and abs(rates()[1] - 5 / 3) < 1e-6)
        finally:
            await trio.to_thread.run_sync(esme.close)
        await wait_for(lambda: rates() == (2.5, 2.5))  # the bind went


async def test_a_receipt_that_overtakes_its_parts_commit_on_another_node_is_handed_over_soon(
        tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SMSC sends a receipt on b's bind before a has committed the operator id of its
    part: b holds it and looks again soon (not for the whole receipt_hold of 10 s), then
    hands it to a."""
    count = 20
    held = REGISTRY.get_sample_value("smsgw_receipts_held_total") or 0
    async with nodes(tmp_path, pg_dsn, ("a", "b"), receipt_delay=0.0,
                     smsc={"receipt_hold": 10.0}) as cluster:
        a = cluster.running[0]
        commit = a.store._db.transaction

        async def slow_commit(groups: Any, counted: bool = False) -> Any:
            await trio.sleep(0.3)  # a's operator ids reach the store late
            return await commit(groups, counted)

        monkeypatch.setattr(a.store._db, "transaction", slow_commit)
        esme = SmpplibEsme(a.smpp_port)

        def submit_all() -> None:
            esme.bind()
            for i in range(count):
                esme.submit(f"336{i:08d}", b"code 1234")
            esme.read_until(lambda: len(esme.delivered) == count, timeout=30)
            esme.close()

        started = trio.current_time()
        with trio.fail_after(40):
            await trio.to_thread.run_sync(submit_all)
        assert trio.current_time() - started < 6.0  # held receipts did not wait 10 s
        assert (REGISTRY.get_sample_value("smsgw_receipts_held_total") or 0) > held
        receipts = [parse_receipt(d.short_message) for d in esme.delivered]
        assert len({r.id for r in receipts if r is not None}) == count


async def test_the_receipts_of_another_nodes_messages_are_handed_over_in_one_read_and_write(
        tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Five receipts read together on b's bind, for messages a works on: one lookup for the
    five (never one per receipt), one commit to a's inbox, then a applies them."""
    count = 5
    async with nodes(tmp_path, pg_dsn, ("a", "b"), receipt_delay=600.0) as cluster:
        (a, b), sim = cluster.running, cluster.simulator
        esme = SmpplibEsme(a.smpp_port)

        def submit_all() -> None:
            esme.bind()
            for i in range(count):
                esme.submit(f"336{i:08d}", b"code 1234")
            esme.read_until(lambda: len(esme.resps) == count)

        await trio.to_thread.run_sync(submit_all)
        ids = [r.message_id.decode() for r in esme.resps]

        async def stored_parts() -> list[Part]:
            return [p for m in ids for p in await b.store.get_parts(m) if p.smsc_id]

        with trio.fail_after(10):  # a's operator ids committed
            while len(parts := await stored_parts()) < count:
                await trio.sleep(0.02)
        lookups: list[int] = []
        find = b.store.find_parts_owners

        async def counted(connector: str, smsc_ids: Any) -> Any:
            lookups.append(len(smsc_ids))
            return await find(connector, smsc_ids)

        monkeypatch.setattr(b.store, "find_parts_owners", counted)

        async def not_on_a_shared_store(*args: Any) -> bool:
            raise AssertionError("_late reads the store again: _handover tells late already")

        monkeypatch.setattr(b.dispatcher, "_late", not_on_a_shared_store)
        answers: list[tuple[int, bool]] = []
        await b.dispatcher.on_receipts("sim", [
            ProviderReceipt(p.smsc_id or "", PartState.DELIVERED, "DELIVRD") for p in parts]
            + [ProviderReceipt("f00d", PartState.DELIVERED, "DELIVRD")],  # no such part
            lambda i, stored: answers.append((i, stored)), hold=0.0)
        assert sorted(answers) == [(i, True) for i in range(count + 1)]  # the last: orphan
        # one read for the six, then f00d's last look once its hold is over
        assert len(lookups) == 2 and lookups[0] > lookups[1]
        await wait_for(lambda: all(m not in a.dispatcher.live for m in ids))
        for m in ids:
            msg = await a.store.get_message(m)
            assert msg is not None and msg.state is State.DELIVERED
        assert len(sim.submitted) == count
        await trio.to_thread.run_sync(esme.close)
