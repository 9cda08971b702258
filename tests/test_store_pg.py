"""Rules the PostgreSQL store (gateway/store_pg.py) must keep: a crash, or a silent server, costs
StoreUnavailable meanwhile (never a hang), loses nothing acknowledged, and the same Store recovers
by itself; one gateway per database; foreign or newer schemas refused; and the daemon over
PostgreSQL end to end (receipts, history across a restart, an outage: 0x14 / 503, then back).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psycopg
import pytest
import trio
from prometheus_client import REGISTRY

from gateway import store_pg
from gateway.config import AdminConfig, HttpConfig, SimulatorConfig, StoreConfig
from gateway.model import State
from gateway.store import SchemaError, Store, StoreError, StoreUnavailable
from smpp.constants import Status
from smpp.receipt import parse_receipt
from tests.pgserver import PgServer
from tests.stack import SmpplibEsme, running_stack, wait_for
from tests.test_store import make_message

SUBMITTERS = 4  # concurrent add_messages callers of the load
PER_CALL = 5  # messages per add_messages call
CALLS_MAX = 4000  # per submitter: the load is bounded in count ...
LOAD_SECONDS = 45.0  # ... and in time (the test fails past it)
RETRY_PAUSE = 0.02  # seconds a submitter pauses after a refusal, as a client backs off
UNAVAILABLE_WITHIN = 10.0  # seconds: a call to a dead server fails by then, it does not hang
# A silent server (frozen): the store's timeouts made short for the test, and the slack given
# on top of them (a crowded machine).
SHORT_STATEMENT_TIMEOUT_MS = 1000
SHORT_CONNECT_TIMEOUT = 2.0
SLACK = 3.0


def _stored_ids(dsn: str) -> set[str]:
    """The ids in the messages table, read apart from the store (psycopg, its own session)."""
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM messages")}


def _sql(dsn: str, statement: str) -> list[tuple[Any, ...]]:
    """Run one statement apart from the store (committed); its rows, if any."""
    with psycopg.connect(dsn, connect_timeout=10, autocommit=True) as conn:
        cur = conn.execute(statement.encode())
        return cur.fetchall() if cur.description is not None else []


def _writer_pids(dsn: str) -> list[int]:
    """The server PIDs of the store writer connections to ``dsn``'s database."""
    rows = _sql(dsn, "SELECT pid FROM pg_stat_activity WHERE application_name = 'smsgw writer'"
                     " AND datname = current_database()")
    return [int(r[0]) for r in rows]


@contextlib.contextmanager
def _frozen(server: PgServer) -> Iterator[None]:
    """Every process of the server stopped (SIGSTOP): its connections stay open and it answers
    nothing, as a network partition looks from the gateway; resumed (SIGCONT) on exit."""
    pids = server.pids()
    assert pids
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


async def _outcome(call: Callable[[], Awaitable[object]], bound: float) -> str:
    """How ``call`` ended within ``bound`` seconds: "ok", its exception's class name, or
    "no answer" (still waiting at the bound; a write stays queued)."""
    with trio.move_on_after(bound):
        try:
            await call()
        except Exception as exc:
            return type(exc).__name__
        return "ok"
    return "no answer"


def _short_timeouts(monkeypatch: pytest.MonkeyPatch) -> float:
    """The store's statement and connect timeouts made short; one attempt's bound (both)."""
    monkeypatch.setattr(store_pg, "STATEMENT_TIMEOUT_MS", SHORT_STATEMENT_TIMEOUT_MS)
    monkeypatch.setattr(store_pg, "CONNECT_TIMEOUT", SHORT_CONNECT_TIMEOUT)
    return SHORT_STATEMENT_TIMEOUT_MS / 1000 + SHORT_CONNECT_TIMEOUT


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
        with trio.fail_after(LOAD_SECONDS):
            async with trio.open_nursery() as nursery:
                for _ in range(SUBMITTERS):
                    nursery.start_soon(_submitter, store, load, stop)
                try:
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
                finally:
                    stop.set()  # the submitters end after their current call
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


async def test_a_call_to_a_server_that_stopped_answering_fails_unavailable_and_does_not_hang(
        own_pg: PgServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: a server that stops answering without closing its connections (frozen, as a
    network partition looks) makes each write and read fail with StoreUnavailable within the
    statement timeout plus the connect timeout, never wait for ever (the server cannot apply
    its own statement_timeout then); once it answers again the same Store works."""
    attempt = _short_timeouts(monkeypatch)
    dsn = own_pg.create_database("frozen")
    async with Store.open(dsn) as store:
        m = make_message()
        await store.add_messages([m])
        assert await store.get_message(m.id) == m  # the reader is connected too
        with _frozen(own_pg):
            write = await _outcome(lambda: store.add_messages([make_message()]), attempt + SLACK)
            read = await _outcome(lambda: store.get_message(m.id), attempt + SLACK)
        assert (write, read) == ("StoreUnavailable", "StoreUnavailable")
        after = make_message()
        with trio.fail_after(attempt + SLACK):
            while await _outcome(lambda: store.add_messages([after]), attempt + SLACK) != "ok":
                await trio.sleep(RETRY_PAUSE)
        assert await store.get_message(after.id) == after


async def test_callers_queued_behind_a_silent_server_are_answered_by_the_next_attempt(
        own_pg: PgServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: the calls queued while the server is silent are answered (StoreUnavailable)
    together by the writer's next attempt, not retried one by one at a connect timeout each:
    every caller has its answer within two attempts' time."""
    attempt = _short_timeouts(monkeypatch)
    dsn = own_pg.create_database("queued")
    callers = 20
    outcomes: list[str] = []
    async with Store.open(dsn) as store:
        await store.add_messages([make_message()])

        async def submit() -> None:
            outcomes.append(await _outcome(lambda: store.add_messages([make_message()]),
                                           2 * attempt + SLACK))

        with _frozen(own_pg):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(submit)  # the writer waits on this one's transaction
                await wait_for(lambda: store.queued_rows == 1)
                for _ in range(callers - 1):
                    nursery.start_soon(submit)
    answered = [o for o in outcomes if o != "no answer"]
    assert len(answered) == callers, (
        f"{len(answered)} of {callers} callers answered within {2 * attempt + SLACK:.0f} s: "
        f"{sorted(set(outcomes))}")
    assert set(answered) == {"StoreUnavailable"}


async def test_a_connection_in_an_unknown_state_is_dropped_and_the_call_is_unavailable(
        pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: asyncpg's InternalClientError (its protocol state confused, seen when the server
    was killed mid-transaction) is a lost connection like the others: the call fails with
    StoreUnavailable (temporary), that connection is not used again, the next call works on a
    new one."""
    real = store_pg._transaction
    confused = [True]

    async def once_confused(groups: list[tuple[int, list[Any]]], counted: bool,
                            conn: Any) -> Any:
        if confused.pop() if confused else False:
            raise asyncpg.InternalClientError(
                "cannot switch to state 15; another operation (2) is in progress")
        return await real(groups, counted, conn)

    async with Store.open(pg_dsn) as store:
        await store.add_messages([make_message()])
        [before] = await trio.to_thread.run_sync(_writer_pids, pg_dsn)
        monkeypatch.setattr(store_pg, "_transaction", once_confused)
        with pytest.raises(StoreError) as failed:
            await store.add_messages([make_message()])
        assert isinstance(failed.value, StoreUnavailable), repr(failed.value)
        m = make_message()
        await store.add_messages([m])
        assert await store.get_message(m.id) == m
        assert await trio.to_thread.run_sync(_writer_pids, pg_dsn) != [before]


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


async def test_daemon_answers_rmsgqful_and_503_while_postgresql_is_down_then_takes_submits_again(
        tmp_path: Path, own_pg: PgServer) -> None:
    """Rule: with its database down, the daemon answers an SMPP submit ESME_RMSGQFUL (0x14) and
    an HTTP POST 503 with Retry-After (both: try again later), keeps the upstream's bind, and
    takes submits again once the database is back, without a restart."""
    dsn = own_pg.create_database("gw")
    async with running_stack(tmp_path, http=HttpConfig(port=0),
                             **_on_postgresql(tmp_path, dsn)) as (gw, _sim), \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}", timeout=10,
                              headers={"Authorization": "Bearer demo-token"}) as http:
        hello = {"to": "33612345678", "from": "ACME", "text": "Hello"}
        esme = SmpplibEsme(gw.smpp_port)
        await trio.to_thread.run_sync(esme.bind, "transceiver")
        try:
            await trio.to_thread.run_sync(own_pg.kill)

            def submit_while_down() -> None:
                esme.submit("33612345678", b"while down")
                esme.read_until(lambda: len(esme.resps) == 1)

            with trio.fail_after(30):
                await trio.to_thread.run_sync(submit_while_down)
                refused = await http.post("/v1/messages", json=hello)
            assert esme.resps[0].status == Status.ESME_RMSGQFUL
            assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1

            await trio.to_thread.run_sync(own_pg.restart)

            def submit_when_back() -> None:
                esme.submit("33612345678", b"back again")
                esme.read_until(lambda: len(esme.resps) == 2 and bool(esme.delivered))

            with trio.fail_after(30):
                await trio.to_thread.run_sync(submit_when_back)
                taken = await http.post("/v1/messages", json=hello)
        finally:
            await trio.to_thread.run_sync(esme.close)
        assert esme.resps[1].status == 0
        message_id = esme.resps[1].message_id.decode()
        parsed = parse_receipt(esme.delivered[0].short_message)
        assert parsed is not None and parsed.id == message_id and parsed.stat == "DELIVRD"
        stored = await gw.store.get_message(message_id)
        assert stored is not None and stored.state is State.DELIVERED
        assert taken.status_code == 202, taken.text
        [posted] = [m["id"] for m in taken.json()["messages"]]
    assert await trio.to_thread.run_sync(_stored_ids, dsn) == {message_id, posted}


SLOW_RECEIPTS = SimulatorConfig(port=0, control_port=0, receipt_delay=0.3, seed=7)
# The stop at the end of those tests: nothing is left to drain by then, so a drain held up (see
# test_a_graceful_stop_after_receipts_failed_to_be_stored_is_not_held_up) costs 2 s, not 10.
SHORT_DRAIN = 2.0


async def _crash_while_receipts_come_in(gw: Any, sim: Any, server: PgServer,
                                        count: int) -> SmpplibEsme:
    """Submit ``count`` messages, SIGKILL the database once all are acknowledged (their
    receipts come in meanwhile: not stored, so refused, and the SMSC sends them again), start it
    again, wait until the upstream has every receipt; the ESME (closed)."""
    failures = REGISTRY.get_sample_value("smsgw_store_failures_total",
                                         {"operation": "write"}) or 0.0
    esme = SmpplibEsme(gw.smpp_port)

    def submit_all() -> None:
        esme.bind()
        for i in range(count):
            esme.submit(f"336555000{i:02d}", b"hello")
        esme.read_until(lambda: len(esme.resps) == count)

    try:
        with trio.fail_after(30):
            await trio.to_thread.run_sync(submit_all)
        assert [r.status for r in esme.resps] == [0] * count
        await trio.to_thread.run_sync(server.kill)
        await wait_for(lambda: sim.stats.deliver_retried > 0)
        assert (REGISTRY.get_sample_value(
            "smsgw_store_failures_total", {"operation": "write"}) or 0.0) > failures
        await trio.to_thread.run_sync(server.restart)
        with trio.fail_after(45):
            await trio.to_thread.run_sync(
                lambda: esme.read_until(lambda: len(esme.delivered) >= count, timeout=40))
    finally:
        await trio.to_thread.run_sync(esme.close)
    return esme


async def test_messages_in_flight_when_postgresql_crashes_are_all_delivered_once_it_is_back(
        tmp_path: Path, own_pg: PgServer) -> None:
    """Rule: a crash of the database while acknowledged messages are being sent and their
    receipts come in loses none of them: the daemon retries its writes, and once the database
    is back every message is stored DELIVERED and its receipt reaches the upstream."""
    dsn = own_pg.create_database("gw")
    count = 30
    async with running_stack(tmp_path, SLOW_RECEIPTS, shutdown_timeout=SHORT_DRAIN,
                             **_on_postgresql(tmp_path, dsn)) as (gw, sim):
        esme = await _crash_while_receipts_come_in(gw, sim, own_pg, count)
        acked = sorted(r.message_id.decode() for r in esme.resps)
        receipted = sorted(p.receipted_message_id.rstrip(b"\0").decode()
                           for p in esme.delivered)
        assert receipted == acked
        for message_id in acked:
            stored = await gw.store.get_message(message_id)
            assert stored is not None and stored.state is State.DELIVERED, message_id
        await wait_for(lambda: not gw.dispatcher.live)
        assert len(sim.submitted) == count  # each sent once
        assert sim.stats.deliver_abandoned == 0


async def test_a_graceful_stop_after_receipts_failed_to_be_stored_is_not_held_up(
        tmp_path: Path, own_pg: PgServer) -> None:
    """Rule: once the database is back and every receipt is stored, the dispatcher is settled:
    the graceful drain (Dispatcher.settle) returns at once, not after [gateway]
    shutdown_timeout with a warning about work left."""
    dsn = own_pg.create_database("gw")
    async with running_stack(tmp_path, SLOW_RECEIPTS, shutdown_timeout=SHORT_DRAIN,
                             **_on_postgresql(tmp_path, dsn)) as (gw, sim):
        await _crash_while_receipts_come_in(gw, sim, own_pg, 10)
        await wait_for(lambda: not gw.dispatcher.live)
        with trio.move_on_after(5) as waited:
            await gw.dispatcher.settle()
        assert not waited.cancelled_caught, (
            "Dispatcher.settle() still waiting 5 s after every message was stored DELIVERED "
            f"(its count of round writes not committed: {gw.dispatcher._saving})")
