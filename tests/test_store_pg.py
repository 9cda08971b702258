"""Rules the PostgreSQL store (gateway/store_pg.py) must keep: a crash and restart of the server
under load costs StoreUnavailable meanwhile, loses nothing acknowledged, and the same Store
recovers by itself; one gateway per database; foreign or newer schemas refused; and the
daemon over PostgreSQL end to end (receipts, history across a restart, a database outage).
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from gateway.config import AdminConfig, StoreConfig
from gateway.model import State
from gateway.store import SchemaError, Store, StoreError, StoreUnavailable
from smpp.constants import Status
from smpp.receipt import parse_receipt
from tests.pgserver import PgServer, scratch_dir
from tests.stack import SmpplibEsme, running_stack, wait_for
from tests.test_store import make_message

SUBMITTERS = 4  # concurrent add_messages callers of the load
PER_CALL = 5  # messages per add_messages call
CALLS_MAX = 4000  # per submitter: the load is bounded in count ...
LOAD_SECONDS = 45.0  # ... and in time
RETRY_PAUSE = 0.02  # seconds a submitter pauses after a refusal, as a client backs off
UNAVAILABLE_WITHIN = 10.0  # seconds: a call to a dead server fails by then, it does not hang


@pytest.fixture
def own_pg() -> Iterator[PgServer]:
    """A PostgreSQL server of this test alone (the test kills it), in its own /tmp directory;
    stopped (by PID) and deleted afterwards."""
    tmp = scratch_dir()
    server = PgServer()
    try:
        server.start(tmp / "data", initdb_sync=False)
        yield server
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _stored_ids(dsn: str) -> set[str]:
    """The ids in the messages table, read apart from the store (psycopg, its own session)."""
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM messages")}


def _sql(dsn: str, statement: str) -> list[tuple[Any, ...]]:
    """Run one statement apart from the store (committed); its rows, if any."""
    with psycopg.connect(dsn, connect_timeout=10, autocommit=True) as conn:
        cur = conn.execute(statement.encode())
        return cur.fetchall() if cur.description is not None else []


@dataclasses.dataclass
class _Load:
    """What the submitters saw: each call (started, ended, outcome) and the acknowledged ids."""

    calls: list[tuple[float, float, str]] = dataclasses.field(default_factory=list)
    acked: list[str] = dataclasses.field(default_factory=list)
    other: list[str] = dataclasses.field(default_factory=list)  # errors but StoreUnavailable

    def since(self, t: float) -> list[tuple[float, float, str]]:
        return [c for c in self.calls if c[0] >= t]


async def _submitter(store: Store, load: _Load, stop: trio.Event) -> None:
    """add_messages in a loop bounded by CALLS_MAX and `stop`, recording every outcome."""
    for _ in range(CALLS_MAX):
        if stop.is_set():
            return
        msgs = [make_message(dest_addr=f"336{i:08d}") for i in range(PER_CALL)]
        started = trio.current_time()
        try:
            await store.add_messages(msgs)
        except StoreUnavailable:
            load.calls.append((started, trio.current_time(), "unavailable"))
            await trio.sleep(RETRY_PAUSE)
            continue
        except Exception as exc:  # any other error breaks the rule: recorded, asserted on
            load.calls.append((started, trio.current_time(), "other"))
            load.other.append(f"{type(exc).__name__}: {exc}")
            await trio.sleep(RETRY_PAUSE)
            continue
        load.calls.append((started, trio.current_time(), "ok"))
        load.acked.extend(m.id for m in msgs)
        await trio.sleep(0)


async def test_store_rides_out_a_postgresql_crash_under_load_and_loses_nothing_acknowledged(
        own_pg: PgServer) -> None:
    """Rule: SIGKILL of the whole server under load: calls made while it is down fail with
    StoreUnavailable within seconds (no other error, no hang); once it is back the same Store
    writes and reads again by itself; every message whose add_messages returned is in the
    database (read apart from the store)."""
    dsn = own_pg.create_database("crash")
    load = _Load()
    stop = trio.Event()
    async with Store.open(dsn) as store:
        probe = make_message()
        await store.add_messages([probe])
        assert await store.get_message(probe.id) == probe  # the reader is connected too
        with trio.fail_after(LOAD_SECONDS + 30):
            async with trio.open_nursery() as nursery:
                nursery.cancel_scope.deadline = trio.current_time() + LOAD_SECONDS
                for _ in range(SUBMITTERS):
                    nursery.start_soon(_submitter, store, load, stop)
                await wait_for(lambda: len(load.acked) >= 200, timeout=20)

                await trio.to_thread.run_sync(own_pg.kill)  # every server process gone
                down = trio.current_time()
                await wait_for(lambda: len(load.since(down)) >= 3 * SUBMITTERS,
                               timeout=UNAVAILABLE_WITHIN)
                outage = load.since(down)
                assert {outcome for _, _, outcome in outage} == {"unavailable"}, load.other
                assert max(end - start for start, end, _ in outage) < UNAVAILABLE_WITHIN
                with pytest.raises(StoreUnavailable):
                    await store.get_message(probe.id)

                await trio.to_thread.run_sync(own_pg.restart)  # crash recovery, same port
                up = trio.current_time()
                await wait_for(lambda: sum(1 for _, _, outcome in load.since(up)
                                           if outcome == "ok") >= SUBMITTERS, timeout=20)
                stop.set()
        assert not load.other, load.other
        unavailable = sum(1 for _, _, outcome in load.calls if outcome == "unavailable")
        assert unavailable >= 3 * SUBMITTERS
        # The same Store object writes and reads again.
        after = make_message()
        await store.add_messages([after])
        assert await store.get_message(after.id) == after
        assert await store.get_message(load.acked[-1]) is not None
        assert await store.get_message(probe.id) == probe
    stored = await trio.to_thread.run_sync(_stored_ids, dsn)
    lost = set(load.acked) - stored
    assert not lost, f"{len(lost)} acknowledged messages of {len(load.acked)} lost"
    assert {probe.id, after.id} <= stored


async def test_a_second_store_on_one_database_is_refused_while_the_first_is_open(
        pg_dsn: str) -> None:
    """Rule: one gateway process per database: a second Store.open on it fails with a
    StoreError that names the other gateway process (not StoreUnavailable: it is not
    temporary), the first goes on; once the first closed, the database opens again."""
    m = make_message()
    async with Store.open(pg_dsn) as first:
        with pytest.raises(StoreError, match="another gateway process") as refused:
            async with Store.open(pg_dsn):
                pass
        assert not isinstance(refused.value, StoreUnavailable)
        await first.add_messages([m])
        assert await first.get_message(m.id) == m
    async with Store.open(pg_dsn) as second:
        assert await second.get_message(m.id) == m


async def test_a_database_holding_foreign_tables_is_refused_and_left_as_it_was(
        pg_dsn: str) -> None:
    """Rule: the gateway never writes its schema into a database that holds other tables:
    SchemaError, and nothing created there."""
    await trio.to_thread.run_sync(_sql, pg_dsn, "CREATE TABLE customers (id integer)")
    with pytest.raises(SchemaError, match="not a gateway store"):
        async with Store.open(pg_dsn):
            pass
    tables = await trio.to_thread.run_sync(
        _sql, pg_dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    assert tables == [("customers",)]


async def test_a_database_of_a_newer_schema_version_is_refused_naming_that_version(
        pg_dsn: str) -> None:
    """Rule: a schema written by a newer gateway is not used (nor "migrated") by this one:
    SchemaError naming the database's version; the version is left as it was."""
    async with Store.open(pg_dsn) as store:
        await store.add_messages([make_message()])
    await trio.to_thread.run_sync(_sql, pg_dsn, "UPDATE smsgw_schema SET version = 97")
    with pytest.raises(SchemaError, match=r"\b97\b"):
        async with Store.open(pg_dsn):
            pass
    assert await trio.to_thread.run_sync(
        _sql, pg_dsn, "SELECT version FROM smsgw_schema") == [(97,)]


def _on_postgresql(state_dir: Path, dsn: str) -> dict[str, Any]:
    """running_stack changes that put the daemon's store on PostgreSQL ([admin] socket is then
    required: no store directory to put it in)."""
    return {"store": StoreConfig(backend="postgresql", dsn=dsn),
            "admin": AdminConfig(socket=state_dir / "admin.sock")}


async def test_daemon_on_postgresql_delivers_with_receipt_and_keeps_history_across_restart(
        tmp_path: Path, pg_dsn: str) -> None:
    """Rule: over PostgreSQL the daemon does what it does over SQLite: a submit with
    registered_delivery is acknowledged, delivered by the SMSC and its receipt reaches the
    upstream; after a stop and a start on the same database the message and its history are
    there as they were."""
    changes = _on_postgresql(tmp_path, pg_dsn)
    async with running_stack(tmp_path, **changes) as (gw, sim):
        assert await gw.store.durability() == ("postgresql", "on")
        esme = SmpplibEsme(gw.smpp_port)
        with trio.fail_after(20):
            await trio.to_thread.run_sync(esme.submit_one, "33612345678", b"Your code is 123456")
        [resp] = esme.resps
        assert resp.status == 0
        message_id = resp.message_id.decode()
        [receipt] = esme.delivered
        assert receipt.receipted_message_id.rstrip(b"\0").decode() == message_id
        parsed = parse_receipt(receipt.short_message)
        assert parsed is not None and parsed.id == message_id and parsed.stat == "DELIVRD"
        [record] = sim.submitted
        assert record.destination_addr == "33612345678"
        await wait_for(lambda: gw.reporter.pending_count("demo") == 0)  # the receipt acked
        stored = await gw.store.get_message(message_id)
        assert stored is not None and stored.state is State.DELIVERED
        history = await gw.store.events_of(message_id)
        assert [(e.kind, e.to_state) for e in history] == [
            ("accepted", State.QUEUED), ("attempt", State.IN_FLIGHT),
            ("receipt", State.DELIVERED), ("report_delivered", None)]
    async with running_stack(tmp_path, **changes) as (gw, _sim):
        assert await gw.store.get_message(message_id) == stored
        assert await gw.store.events_of(message_id) == history
        assert message_id not in gw.dispatcher.live  # final: not taken up again


async def test_daemon_answers_rmsgqful_while_postgresql_is_down_then_takes_submits_again(
        tmp_path: Path, own_pg: PgServer) -> None:
    """Rule: with its database down, the daemon answers a submit ESME_RMSGQFUL (0x14: try
    again later), keeps the upstream's bind, and takes submits again once the database is
    back, without a restart."""
    dsn = own_pg.create_database("gw")
    async with running_stack(tmp_path, **_on_postgresql(tmp_path, dsn)) as (gw, _sim):
        esme = SmpplibEsme(gw.smpp_port)
        await trio.to_thread.run_sync(esme.bind, "transceiver")
        try:
            await trio.to_thread.run_sync(own_pg.kill)

            def submit_while_down() -> None:
                esme.submit("33612345678", b"while down")
                esme.read_until(lambda: len(esme.resps) == 1)

            with trio.fail_after(30):
                await trio.to_thread.run_sync(submit_while_down)
            assert esme.resps[0].status == Status.ESME_RMSGQFUL

            await trio.to_thread.run_sync(own_pg.restart)

            def submit_when_back() -> None:
                esme.submit("33612345678", b"back again")
                esme.read_until(lambda: len(esme.resps) == 2 and bool(esme.delivered))

            with trio.fail_after(30):
                await trio.to_thread.run_sync(submit_when_back)
        finally:
            await trio.to_thread.run_sync(esme.close)
        assert esme.resps[1].status == 0
        message_id = esme.resps[1].message_id.decode()
        parsed = parse_receipt(esme.delivered[0].short_message)
        assert parsed is not None and parsed.id == message_id and parsed.stat == "DELIVRD"
        stored = await gw.store.get_message(message_id)
        assert stored is not None and stored.state is State.DELIVERED
    assert await trio.to_thread.run_sync(_stored_ids, dsn) == {message_id}
