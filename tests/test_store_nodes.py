"""Rules of the gateway nodes on a PostgreSQL store (gateway/store_pg.py, store_pg_nodes.py):
a node owns the messages it accepts, the due table holds the unfinished ones only, a node's
work is taken over only once its database session is gone (then it is fenced: it writes
nothing more), each due row goes to one adopter, a clean stop hands its work back, heartbeats
move."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path

import psycopg
import pytest
import trio

from gateway.model import State, new_message_id
from gateway.store import NodeFenced, Store, StoreUnavailable
from tests.test_store import make_message


def rows(dsn: str, sql: str, *params: object) -> list[tuple[object, ...]]:
    """Read the database apart from the store."""
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


@pytest.fixture
def no_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nodes that do not beat: one whose session a test ends stays without one until it
    writes (a beat would reconnect it first, keeping its work, and the adopter find none)."""
    from gateway import store_pg_nodes

    monkeypatch.setattr(store_pg_nodes, "HEARTBEAT_INTERVAL", 3600.0)


def terminate_writer(dsn: str, node: str) -> None:
    """End a node's writer session, as a dead process or a dropped connection would, and wait
    until it is gone (pg_terminate_backend only signals it; its locks go when it exits)."""
    [(pid,)] = rows(dsn, "SELECT backend_pid FROM nodes WHERE name = %s", node)
    rows(dsn, "SELECT pg_terminate_backend(%s)", pid)
    deadline = time.monotonic() + 10
    while rows(dsn, "SELECT 1 FROM pg_stat_activity WHERE pid = %s", pid):
        assert time.monotonic() < deadline, f"backend {pid} still there"
        time.sleep(0.01)


async def test_a_node_owns_what_it_accepts_and_the_due_table_holds_only_unfinished_messages(
        pg_dsn: str) -> None:
    async with Store.open(pg_dsn, node="a") as store:
        done, *waiting = [make_message() for _ in range(3)]
        await store.add_messages([done, *waiting])
        done.state = State.DELIVERED
        await store.save_message(done)
        assert store.epoch is not None
        assert sorted(rows(pg_dsn, "SELECT message_id, owner FROM due")) == sorted(
            (m.id, store.epoch) for m in waiting)
        assert rows(pg_dsn, "SELECT name FROM nodes") == [("a",)]
        assert {m.id for m in await store.unfinished_messages()} == {m.id for m in waiting}


async def test_a_restarted_node_takes_over_the_work_of_the_one_before_it(pg_dsn: str) -> None:
    waiting = [make_message() for _ in range(3)]
    async with Store.open(pg_dsn, node="a") as first:
        await first.add_messages(waiting)
        first_epoch = first.epoch
    assert rows(pg_dsn, "SELECT owner FROM due") == [(None,)] * 3  # a clean stop hands it back
    assert rows(pg_dsn, "SELECT count(*) FROM nodes") == [(0,)]
    async with Store.open(pg_dsn, node="a") as second:
        assert second.epoch != first_epoch
        assert {m.id for m in await second.unfinished_messages()} == {m.id for m in waiting}
        assert rows(pg_dsn, "SELECT DISTINCT owner FROM due") == [(second.epoch,)]


async def test_a_live_nodes_work_is_not_taken_and_a_node_whose_session_went_is_fenced(
        pg_dsn: str, no_heartbeat: None) -> None:
    mine = [make_message() for _ in range(4)]
    late = make_message()
    async with Store.open(pg_dsn, node="b", shared=True) as b:
        with pytest.raises(NodeFenced, match="took its work over"):
            async with Store.open(pg_dsn, node="a", shared=True) as a:
                await a.add_messages(mine)
                assert await b.adopt() == []  # a is alive: its session holds its epoch lock
                assert await b.unfinished_messages() == []
                terminate_writer(pg_dsn, "a")
                assert sorted(await b.adopt()) == sorted(m.id for m in mine)
                await a.add_messages([late])  # a reconnects, finds its work gone: refused
        assert {m.id for m in await b.unfinished_messages()} == {m.id for m in mine}
        assert await b.get_message(late.id) is None  # the fenced node wrote nothing
        assert rows(pg_dsn, "SELECT name FROM nodes") == [("b",)]


async def test_a_node_that_only_lost_its_connection_keeps_its_work(pg_dsn: str) -> None:
    async with Store.open(pg_dsn, node="a") as a:
        first, second = make_message(), make_message()
        await a.add_messages([first])
        terminate_writer(pg_dsn, "a")  # nobody adopted meanwhile
        with contextlib.suppress(StoreUnavailable):  # the write that finds the connection gone
            await a.add_messages([second])
        await a.add_messages([second])  # reconnected, its epoch lock taken again
        assert {m.id for m in await a.unfinished_messages()} == {first.id, second.id}
        assert rows(pg_dsn, "SELECT DISTINCT owner FROM due") == [(a.epoch,)]


async def test_each_due_row_of_a_dead_node_goes_to_exactly_one_adopter(
        pg_dsn: str, no_heartbeat: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway import store_pg_nodes

    monkeypatch.setattr(store_pg_nodes, "ADOPT_BATCH", 7)  # many short transactions, interleaved
    work = [make_message() for _ in range(300)]
    async with Store.open(pg_dsn, node="b", shared=True) as b, \
            Store.open(pg_dsn, node="c", shared=True) as c:
        with pytest.raises(NodeFenced):
            async with Store.open(pg_dsn, node="a", shared=True) as a:
                await a.add_messages(work)
                terminate_writer(pg_dsn, "a")
                taken: dict[str, list[str]] = {}

                async def adopt(name: str, store: Store) -> None:
                    taken[name] = await store.adopt()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(adopt, "b", b)
                    nursery.start_soon(adopt, "c", c)
                await a.add_messages([make_message()])
        assert sorted(taken["b"] + taken["c"]) == sorted(m.id for m in work)
        assert not set(taken["b"]) & set(taken["c"])
        owners = dict(rows(pg_dsn, "SELECT owner, count(*) FROM due GROUP BY owner"))
        assert owners == {k: v for k, v in {b.epoch: len(taken["b"]),
                                              c.epoch: len(taken["c"])}.items() if v}


async def test_a_nodes_heartbeat_moves(pg_dsn: str) -> None:
    async with Store.open(pg_dsn, node="a"):
        [(started,)] = rows(pg_dsn, "SELECT heartbeat_at FROM nodes")
        with trio.fail_after(10):
            while rows(pg_dsn, "SELECT heartbeat_at FROM nodes") == [(started,)]:
                await trio.sleep(0.1)


async def test_database_health_shows_the_oldest_snapshot_the_hot_tables_and_the_nodes(
        pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client import REGISTRY

    from gateway import store_pg_nodes

    def value(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, labels)

    monkeypatch.setattr(store_pg_nodes, "HEALTH_INTERVAL", 0.1)
    with psycopg.connect(pg_dsn) as other:  # a client that keeps a snapshot open
        other.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        other.execute("SELECT 1")
        async with Store.open(pg_dsn, node="a") as store:
            await store.add_messages([make_message()])
            with trio.fail_after(10):
                while (value("smsgw_db_oldest_snapshot_seconds") or 0) < 0.5:
                    await trio.sleep(0.05)
            assert value("smsgw_db_nodes") == 1
            with trio.fail_after(10):  # the statistics lag the writes a little
                while value("smsgw_db_rows", table="due") != 1:
                    await trio.sleep(0.05)
            assert value("smsgw_db_dead_rows", table="nodes") is not None
            assert (value("smsgw_db_adopt_latency_seconds_count") or 0) >= 1
        other.rollback()


async def test_retention_runs_on_one_node_at_a_time(pg_dsn: str) -> None:
    old = make_message(state=State.DELIVERED, done_at=1.0)
    async with Store.open(pg_dsn, node="a", shared=True) as a, \
            Store.open(pg_dsn, node="b", shared=True) as b:
        await a.add_messages([old])
        async with a._db.singleton("purge") as mine:  # a is purging
            assert mine
            assert await b.purge(2.0) == 0  # b skips its turn
            assert await b.get_message(old.id) is not None
        assert await b.purge(2.0) == 1  # a is done: b's next turn purges


async def test_a_receipt_for_another_nodes_message_is_handed_over_and_wakes_that_node(
        pg_dsn: str) -> None:
    from gateway.model import Part, PartState
    from gateway.store import Forwarded

    msg = make_message(state=State.IN_FLIGHT)
    async with Store.open(pg_dsn, node="a", shared=True) as a, \
            Store.open(pg_dsn, node="b", shared=True) as b:
        await a.add_messages([msg])
        await a.save_parts([Part(msg.id, 1, "sim", smsc_id="op1", state=PartState.SUBMITTED)])
        found = await b.find_part_owner("sim", ["OP1", "op1"])  # the receipt is on b's bind
        assert found is not None
        part, owner = found
        assert (part.message_id, owner) == (msg.id, a.epoch)
        receipt = Forwarded(msg.id, 1, "sim", "op1", PartState.DELIVERED, "DELIVRD", 0,
                            b"id:op1 stat:DELIVRD", 1000.0)
        woken = trio.Event()

        async def owner_waits() -> None:
            await a.inbox_notified(30.0)
            woken.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(owner_waits)
            await trio.sleep(0.2)  # a is listening
            started = trio.current_time()
            await b.forward_receipts([receipt])
            with trio.fail_after(5):
                await woken.wait()
            assert trio.current_time() - started < 1.0  # the notification, not the poll
        [got] = await a.inbox()
        assert dataclasses.replace(got, id=None) == receipt
        assert await b.inbox() == []  # b does not work on that message
        await a.drop_inbox([got.id or 0])
        assert await a.inbox() == []


async def test_the_inbox_of_a_dead_node_goes_with_its_work_to_the_adopter(
        pg_dsn: str, no_heartbeat: None) -> None:
    from gateway.model import PartState
    from gateway.store import Forwarded

    msg = make_message(state=State.IN_FLIGHT)
    async with Store.open(pg_dsn, node="b", shared=True) as b:
        with pytest.raises(NodeFenced):
            async with Store.open(pg_dsn, node="a", shared=True) as a:
                await a.add_messages([msg])
                await b.forward_receipts([Forwarded(msg.id, 1, "sim", "op1",
                                                    PartState.DELIVERED, "DELIVRD", 0, b"",
                                                    1000.0)])
                terminate_writer(pg_dsn, "a")
                assert await b.adopt() == [msg.id]
                [got] = await b.inbox()  # a never applied it: b, working on it now, does
                assert got.message_id == msg.id
                await a.add_messages([make_message()])


async def test_with_sqlite_every_part_is_the_processs_own_and_the_inbox_stays_empty(
        tmp_path: Path) -> None:
    from gateway.model import Part, PartState

    msg = make_message(state=State.IN_FLIGHT)
    async with Store.open(tmp_path / "gw.sqlite") as store:
        await store.add_messages([msg])
        await store.save_parts([Part(msg.id, 1, "sim", smsc_id="op1",
                                     state=PartState.SUBMITTED)])
        found = await store.find_part_owner("sim", ["op1"])
        assert found is not None and found[1] is None
        assert await store.inbox() == []
        with trio.move_on_after(0.05) as waited:
            await store.inbox_notified(1.0)  # nobody to notify: the poll's timeout
        assert waited.cancelled_caught


async def test_a_hung_node_loses_its_session_after_the_lease_and_its_work_is_adopted(
        pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway import store_pg_nodes

    work = [make_message() for _ in range(3)]
    async with Store.open(pg_dsn, node="b", shared=True) as b:
        monkeypatch.setattr(store_pg_nodes, "HEARTBEAT_INTERVAL", 3600.0)  # a will not beat
        with pytest.raises(NodeFenced):
            async with Store.open(pg_dsn, node="a", shared=True) as a:
                await a.add_messages(work)
                assert await b.adopt() == []  # a is alive
                with psycopg.connect(pg_dsn, autocommit=True) as conn:  # a hung long ago
                    conn.execute("UPDATE nodes SET heartbeat_at = now() - interval '1 hour'"
                                 " WHERE name = 'a'")
                adopted: list[str] = []
                with trio.fail_after(10):
                    while len(adopted) < len(work):  # its session ended, then its work taken
                        adopted += await b.adopt()
                        await trio.sleep(0.05)
                assert sorted(adopted) == sorted(m.id for m in work)
                await a.add_messages([make_message()])  # a wakes up: fenced


async def test_a_node_adopting_a_dead_nodes_work_is_not_taken_for_that_hung_node(
        pg_dsn: str) -> None:
    """Several nodes starting at once after a whole-cluster crash find the dead nodes' rows
    (old heartbeats): while one adopts, it holds the dead epochs' locks for its transaction;
    another must not take that session for the hung node's and end it (before: the adopters
    ended each other's writer sessions, and the nodes stopped)."""
    from gateway.store_pg_nodes import NODE_LOCK_CLASS

    async with Store.open(pg_dsn, node="dead", shared=True) as dead:
        epoch = dead.epoch
        await dead.add_messages([make_message()])
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # it died: its row stays, old
        conn.execute("INSERT INTO nodes (epoch, name, host, pid, backend_pid, heartbeat_at)"
                     " VALUES (%s, 'dead', 'h', 1, 1, now() - interval '1 hour')", (epoch,))
        conn.execute("UPDATE due SET owner = %s", (epoch,))
    with psycopg.connect(pg_dsn) as adopter:  # another node, adopting: its transaction holds
        adopter.execute("SELECT pg_advisory_xact_lock(%s, %s)", (NODE_LOCK_CLASS, epoch))
        async with Store.open(pg_dsn, node="b", shared=True) as b:
            assert await b.adopt() == []  # the adopter's: not b's to take now
            assert adopter.execute("SELECT 1").fetchall() == [(1,)]  # its session lives
        adopter.rollback()
    async with Store.open(pg_dsn, node="c", shared=True) as c:  # adopted once nobody holds it
        assert len(await c.unfinished_messages()) == 1
        assert rows(pg_dsn, "SELECT name FROM nodes") == [("c",)]


async def test_an_optout_written_on_one_node_reaches_the_others_within_a_second(
        pg_dsn: str) -> None:
    from gateway.model import OptOut

    seen: list[list[OptOut] | None] = []
    async with Store.open(pg_dsn, node="a", shared=True) as a, \
            Store.open(pg_dsn, node="b", shared=True) as b:
        a.follow_optouts(seen.append)
        stop = OptOut("demo", "33611111111", True, 1000.0, "mo")
        started = trio.current_time()
        await b.set_optouts([stop])
        with trio.fail_after(5):
            while not seen:
                await trio.sleep(0.01)
        assert trio.current_time() - started < 1.0
        assert seen == [[stop]]
        await b.erase_addresses(["33611111111"])  # gone from every list: read them again
        with trio.fail_after(5):
            while len(seen) < 2:
                await trio.sleep(0.01)
        assert seen[1] is None


async def test_messages_per_state_are_counted_per_node_and_survive_a_nodes_death(
        pg_dsn: str, no_heartbeat: None) -> None:
    async with Store.open(pg_dsn, node="b", shared=True) as b:
        await b.add_messages([make_message() for _ in range(2)])
        with pytest.raises(NodeFenced):
            async with Store.open(pg_dsn, node="a", shared=True) as a:
                mine = [make_message() for _ in range(3)]
                await a.add_messages(mine)
                mine[0].state = State.DELIVERED
                await a.save_message(mine[0])
                assert (await a.stats())["QUEUED"] == 4 == (await b.stats())["QUEUED"]
                assert a.state_counts["DELIVERED"] == 1  # as of its own last commit
                per_node = dict(rows(pg_dsn, "SELECT node, sum(n) FROM state_counts"
                                             " GROUP BY node"))
                assert per_node[a.epoch] == 3 and per_node[b.epoch] == 2  # rows apart
                terminate_writer(pg_dsn, "a")
                assert len(await b.adopt()) == 2
                await a.add_messages([make_message()])
        stats = await b.stats()
        assert (stats["QUEUED"], stats["DELIVERED"]) == (4, 1)  # a's counts folded into b's
        assert {node for (node,) in rows(pg_dsn, "SELECT DISTINCT node FROM state_counts")} \
            == {0, b.epoch}


async def test_reports_are_delivered_by_their_holder_left_free_and_claimed_by_another(
        pg_dsn: str) -> None:
    from tests.test_store import make_report

    async with Store.open(pg_dsn, node="a", shared=True) as a, \
            Store.open(pg_dsn, node="b", shared=True) as b:
        made = [make_report(new_message_id()) for _ in range(3)]
        await a.add_reports(made)
        assert [r.id for r in await a.pending_reports("acme")] == [r.id for r in made]
        assert await b.pending_reports("acme") == []  # a holds them
        assert await b.claim_reports(["acme"], "smpp") == []
        woken = trio.Event()

        async def b_waits() -> None:
            await b.reports_notified("smpp", 30.0)
            woken.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(b_waits)
            await trio.sleep(0.2)
            assert await a.release_reports("acme", "smpp", keep=[made[0].id or 0]) == 2
            with trio.fail_after(5):
                await woken.wait()
        claimed = await b.claim_reports(["acme"], "smpp")
        assert [r.id for r in claimed] == [r.id for r in made[1:]]
        assert [r.id for r in await b.pending_reports("acme")] == [r.id for r in made[1:]]
        assert [r.id for r in await a.pending_reports("acme")] == [made[0].id]


async def test_report_ids_of_two_nodes_never_collide(pg_dsn: str) -> None:
    from tests.test_store import make_report

    async with Store.open(pg_dsn, node="a", shared=True) as a, \
            Store.open(pg_dsn, node="b", shared=True) as b:
        ra = [make_report(new_message_id()) for _ in range(5)]
        rb = [make_report(new_message_id()) for _ in range(5)]
        await a.add_reports(ra)
        await b.add_reports(rb)  # would be a ConstraintError if both counted from one place
        ids = [r.id for r in ra + rb]
        assert len(set(ids)) == 10


async def test_the_reports_a_dead_node_held_are_free_for_the_others(
        pg_dsn: str, no_heartbeat: None) -> None:
    from tests.test_store import make_report

    async with Store.open(pg_dsn, node="b", shared=True) as b:
        with pytest.raises(NodeFenced):
            async with Store.open(pg_dsn, node="a", shared=True) as a:
                made = [make_report(new_message_id(), via="http", extra={"event_id": "e"})]
                await a.add_reports(made)
                terminate_writer(pg_dsn, "a")
                await b.adopt()
                assert [r.id for r in await b.claim_reports(["acme"], "http")] == [made[0].id]
                await a.add_reports([make_report(new_message_id())])


async def test_bind_slots_are_shared_held_by_one_node_each_and_taken_over_after_the_lease(
        pg_dsn: str) -> None:
    async with Store.open(pg_dsn, node="a", shared=True) as a, \
            Store.open(pg_dsn, node="b", shared=True) as b, \
            Store.open(pg_dsn, node="c", shared=True) as c:
        assert await a.live_nodes(10.0) == 3
        assert await a.lease_slots("sim", 3, 3, 10.0) == [0, 1, 2]  # alone so far: all
        assert await b.lease_slots("sim", 3, 1, 10.0) == []  # held by a, not expired
        assert await a.lease_slots("sim", 3, 1, 10.0) == [0]  # its share now: gives two back
        assert await b.lease_slots("sim", 3, 1, 10.0) == [1]
        assert await c.lease_slots("sim", 3, 1, 10.0) == [2]
        assert await c.lease_slots("sim", 3, 1, 0.5) == [2]  # renewed, for half a second
        assert await b.lease_slots("sim", 3, 2, 10.0) == [1]  # c's lease runs yet
        with trio.fail_after(5):
            while await b.lease_slots("sim", 3, 2, 10.0) != [1, 2]:  # c did not renew
                await trio.sleep(0.1)
        assert await c.lease_slots("sim", 3, 1, 10.0) == []  # none free: it waits
        held = rows(pg_dsn, "SELECT slot, holder FROM bind_slots ORDER BY slot")
        assert [h for _, h in held] == [a.epoch, b.epoch, b.epoch]
        assert await a.lease_slots("sim", 2, 1, 10.0) == [0]  # the SMSC has two binds now
        assert rows(pg_dsn, "SELECT count(*) FROM bind_slots") == [(2,)]
