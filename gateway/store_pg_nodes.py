"""What the nodes of one PostgreSQL database coordinate beyond the messages themselves: the
node (its epoch lock, registration, heartbeat, adoption of dead nodes' work, leaving), the
connection listening to the others' notifications, bind slots, account binds, the holders of
reports, the shared configuration's versions and the change requests between nodes. Functions
taking a connection run on the writer's (gateway/store_pg.py calls them through it)."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import asyncpg
import structlog
import trio

from gateway import metrics
from gateway.model import State
from gateway.store_sql import (
    ANSWERS_CHANNEL,
    CHANGES_CHANNEL,
    CONFIG_CHANNEL,
    REPORT_COLUMNS,
    SHARED_CONFIG_KEPT,
    NodeFenced,
    Row,
    StoreError,
    reports_channel,
)

log = structlog.get_logger("gateway.store")

T = TypeVar("T")

# One gateway process per database unless nodes share it (taken with the writer connection
# and held for the process's life).
SINGLE_NODE_LOCK = 0x736D_7367_0001
# A node's epoch lock, (NODE_LOCK_CLASS, epoch): held by its writer session for its life.
# Another node takes over a node's work only once it can take that lock (the session is gone:
# the process died, or its connection did), so two nodes never work on one message, and a node
# that lost its session finds its work gone when it reconnects (NodeFenced), not half of it.
NODE_LOCK_CLASS = 0x736D_7367
# A job one node at a time does (retention...): (SINGLETON_CLASS, crc32 of its name).
SINGLETON_CLASS = 0x736D_7368
HEARTBEAT_INTERVAL = 1.0  # seconds between the updates of a node's heartbeat_at
# A node whose heartbeat is older than this is hung (its process stopped, its host frozen):
# its writer session is ended, so that its work can be adopted; if it wakes up, it finds
# that work gone and stops (NodeFenced).
NODE_LEASE = 10.0
HEALTH_INTERVAL = 10.0  # seconds between two readings of the database's health (metrics)
HOT_TABLES = ("due", "nodes", "reports", "state_counts")
ADOPT_BATCH = 1000  # due rows claimed per (short) transaction
# A node's rows of state_counts, when it goes, added to `into`'s (0: no node's).
_FOLD_COUNTS_SQL = (
    "WITH gone AS (DELETE FROM state_counts WHERE node = ANY($1::bigint[]) AND node <> $2"
    " RETURNING state, n) UPDATE state_counts s SET n = s.n + g.n"
    " FROM (SELECT state, sum(n) AS n FROM gone GROUP BY state) g"
    " WHERE s.node = $2 AND s.state = g.state")
_REPORT_ID = REPORT_COLUMNS.index("id")
_REPORT_COLUMNS_SQL = ", ".join(REPORT_COLUMNS)


class Calls(Protocol):
    """A connection of the store's, used one call at a time (store_pg._Connection)."""

    async def call(self, fn: Callable[[asyncpg.Connection[Any]], Awaitable[T]]) -> T: ...


async def lease_slots(epoch: int | None, smsc: str, total: int, want: int, lease: float,
                      conn: asyncpg.Connection[Any]) -> list[int]:
    """In one transaction: the SMSC's slots 0..total-1 exist (others go); this node's are
    renewed for ``lease`` seconds, those beyond ``want`` given back, and free or expired
    ones taken up to ``want``. This node's slots, in order."""
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO bind_slots (smsc, slot) SELECT $1, generate_series(0, $2 - 1)"
            " ON CONFLICT DO NOTHING", smsc, total)
        await conn.execute("DELETE FROM bind_slots WHERE smsc = $1 AND slot >= $2", smsc, total)
        until = "now() + make_interval(secs => $3)"
        mine = sorted(r[0] for r in await conn.fetch(
            f"UPDATE bind_slots SET lease_until = {until} WHERE smsc = $1 AND holder = $2"
            " RETURNING slot", smsc, epoch, lease))
        if len(mine) > want:
            await conn.execute(
                "UPDATE bind_slots SET holder = NULL, lease_until = '-infinity'"
                " WHERE smsc = $1 AND slot = ANY($2::integer[])", smsc, mine[want:])
            mine = mine[:want]
        elif len(mine) < want:
            mine += [r[0] for r in await conn.fetch(
                f"UPDATE bind_slots SET holder = $2, lease_until = {until}"
                " WHERE smsc = $1 AND slot IN (SELECT slot FROM bind_slots WHERE smsc = $1"
                " AND (holder IS NULL OR lease_until < now()) ORDER BY slot LIMIT $4"
                " FOR UPDATE SKIP LOCKED) RETURNING slot", smsc, epoch, lease,
                want - len(mine))]
    return sorted(mine)


async def account_binds(epoch: int | None, mine: dict[str, int], lease: float,
                        conn: asyncpg.Connection[Any]) -> tuple[dict[str, int], int]:
    """Record this node's upstream binds per account; the binds per account of the live nodes
    (heartbeat younger than ``lease``) and their number."""
    live_nodes = "SELECT epoch FROM nodes WHERE heartbeat_at > now() - make_interval(secs => $1)"
    async with conn.transaction():
        await conn.execute("DELETE FROM account_binds WHERE node = $1", epoch)
        held = [(a, n) for a, n in mine.items() if n > 0]
        if held:
            await conn.executemany("INSERT INTO account_binds (node, account, binds)"
                                   " VALUES ($1, $2, $3)", [(epoch, a, n) for a, n in held])
        totals = {a: int(n) for a, n in await conn.fetch(
            f"SELECT account, sum(binds) FROM account_binds WHERE node IN ({live_nodes})"
            " GROUP BY account", lease)}
        live = int(await conn.fetchval(f"SELECT count(*) FROM ({live_nodes}) l", lease))
    return totals, max(1, live)


async def free_reports(conn: asyncpg.Connection[Any], holders: list[int]) -> None:
    """The reports these nodes held are free: the nodes with binds of their accounts (any
    node, for webhooks) are told to claim them."""
    for account, via in await conn.fetch(
            "WITH f AS (UPDATE reports SET holder = NULL WHERE holder = ANY($1::bigint[])"
            " RETURNING account, via) SELECT DISTINCT account, via FROM f", holders):
        await conn.execute("SELECT pg_notify($1, $2)", reports_channel(via), account)


async def claim_reports(epoch: int | None, accounts: list[str], via: str, limit: int,
                        conn: asyncpg.Connection[Any]) -> list[Row]:
    """Free reports of these accounts going ``via``, oldest first, now held by this node."""
    rows = await conn.fetch(
        f"UPDATE reports SET holder = $1 WHERE id IN (SELECT id FROM reports"
        f" WHERE holder IS NULL AND account = ANY($2::text[]) AND via = $3 ORDER BY id"
        f" LIMIT $4 FOR UPDATE SKIP LOCKED) RETURNING {_REPORT_COLUMNS_SQL}",
        epoch, accounts, via, limit)
    return sorted((tuple(r) for r in rows), key=lambda r: r[_REPORT_ID])


async def release_reports(epoch: int | None, account: str, via: str, keep: list[int],
                          conn: asyncpg.Connection[Any]) -> int:
    """This node's reports of the account going ``via`` made free (but ``keep``), and the
    other nodes told; how many."""
    async with conn.transaction():
        status = await conn.execute(
            "UPDATE reports SET holder = NULL WHERE holder = $1 AND account = $2 AND via = $3"
            " AND NOT (id = ANY($4::bigint[]))", epoch, account, via, keep)
        released = int(status.split()[-1])
        if released:
            await conn.execute("SELECT pg_notify($1, $2)", reports_channel(via), account)
    return released


async def push_shared_config(document: str, by: str, at: float, if_version: int | None,
                             conn: asyncpg.Connection[Any]) -> tuple[int, bool]:
    """See Backend.push_shared_config (gateway/store_sql.py)."""
    async with conn.transaction():
        # pushes one at a time (readers are not held: they see the latest committed)
        await conn.execute("LOCK TABLE shared_config IN SHARE ROW EXCLUSIVE MODE")
        latest = await conn.fetchrow(
            "SELECT version, document FROM shared_config ORDER BY version DESC LIMIT 1")
        version = int(latest["version"]) if latest is not None else 0
        if (if_version is not None and if_version != version) or (
                latest is not None and latest["document"] == document):
            return version, False
        await conn.execute("INSERT INTO shared_config (version, document, pushed_at, pushed_by)"
                           " VALUES ($1, $2, $3, $4)", version + 1, document, at, by)
        await conn.execute("DELETE FROM shared_config WHERE version <= $1",
                           version + 1 - SHARED_CONFIG_KEPT)
        await conn.execute("SELECT pg_notify($1, $2)", CONFIG_CHANNEL, str(version + 1))
    return version + 1, True


CHANGE_REQUEST_LIFETIME = 3600.0  # seconds: requests of an asker that died are deleted then


async def ask_changes(asker: int | None, asks: list[tuple[int, str, str]],
                      conn: asyncpg.Connection[Any]) -> list[int]:
    """See Backend.ask_changes."""
    ids = []
    async with conn.transaction():
        for owner, message_id, request in asks:
            ids.append(int(await conn.fetchval(
                "INSERT INTO change_requests (owner, asker, message_id, request)"
                " VALUES ($1, $2, $3, $4) RETURNING id", owner, asker, message_id, request)))
        for owner in sorted({owner for owner, _, _ in asks}):
            await conn.execute("SELECT pg_notify($1, $2)", CHANGES_CHANNEL, str(owner))
    return ids


async def take_changes(owner: int | None, limit: int,
                       conn: asyncpg.Connection[Any]) -> list[tuple[int, str, str]]:
    """See Backend.take_changes; also deletes the requests of askers that died."""
    async with conn.transaction():
        rows = await conn.fetch(
            "UPDATE change_requests SET taken = true WHERE id IN (SELECT id FROM"
            " change_requests WHERE owner = $1 AND NOT taken ORDER BY id LIMIT $2"
            " FOR UPDATE SKIP LOCKED) RETURNING id, message_id, request", owner, limit)
        await conn.execute("DELETE FROM change_requests WHERE asked_at < now() - $1 * interval"
                           " '1 s' AND owner = $2", CHANGE_REQUEST_LIFETIME, owner)
    return sorted((int(r[0]), r[1], r[2]) for r in rows)


async def answer_changes(answers: list[tuple[int, str]], conn: asyncpg.Connection[Any]) -> None:
    """See Backend.answer_changes."""
    async with conn.transaction():
        askers = {int(asker) for (asker,) in await conn.fetch(
            "UPDATE change_requests c SET answer = a.answer FROM unnest($1::bigint[],"
            " $2::text[]) AS a(id, answer) WHERE c.id = a.id RETURNING c.asker",
            [i for i, _ in answers], [a for _, a in answers])}
        for asker in sorted(askers):
            await conn.execute("SELECT pg_notify($1, $2)", ANSWERS_CHANNEL, str(asker))


async def collect_changes(ids: list[int], withdraw: bool, conn: asyncpg.Connection[Any]
                          ) -> tuple[dict[int, str], set[int]]:
    """See Backend.collect_changes."""
    async with conn.transaction():
        answers = {int(i): a for i, a in await conn.fetch(
            "DELETE FROM change_requests WHERE id = ANY($1::bigint[]) AND answer IS NOT NULL"
            " RETURNING id, answer", ids)}
        withdrawn: set[int] = set()
        if withdraw:  # locked by the owner taking it: waited for, then found taken
            withdrawn = {int(i) for (i,) in await conn.fetch(
                "DELETE FROM change_requests WHERE id = ANY($1::bigint[]) AND NOT taken"
                " RETURNING id", ids)}
    return answers, withdrawn


class Node:
    """This process as a node of the database: its name, epoch (None before it registered)
    and whether other nodes may share the database."""

    def __init__(self, name: str, shared: bool) -> None:
        self.name = name
        self.shared = shared
        self.epoch: int | None = None

    async def setup(self, conn: asyncpg.Connection[Any]) -> None:
        """On each (re)connection of the writer: the single-node lock (unless shared), and
        after a reconnection the node's epoch lock again and proof that its work is still its
        own (else NodeFenced)."""
        if not self.shared and not await conn.fetchval("SELECT pg_try_advisory_lock($1)",
                                                       SINGLE_NODE_LOCK):
            raise StoreError("postgresql: another gateway process uses this database (it "
                             "holds the single-node advisory lock); one gateway per database "
                             "for now")
        if self.epoch is None:
            return
        await conn.execute("SELECT set_config('smsgw.epoch', $1, false)", str(self.epoch))
        locked = await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", NODE_LOCK_CLASS,
                                     self.epoch)
        alive = locked and await conn.fetchval(
            "UPDATE nodes SET backend_pid = pg_backend_pid(), heartbeat_at = now()"
            " WHERE epoch = $1 RETURNING 1", self.epoch)
        if not alive:
            raise NodeFenced(f"postgresql: node {self.name} (epoch {self.epoch}) lost its "
                             "session and another node took its work over; it must restart")

    async def register(self, conn: asyncpg.Connection[Any]) -> None:
        epoch = int(await conn.fetchval("SELECT nextval('node_epochs')"))
        if epoch >= 2**31:
            raise StoreError("postgresql: node_epochs is past 2^31 (the epoch locks' range)")
        await conn.execute("SELECT pg_advisory_lock($1, $2)", NODE_LOCK_CLASS, epoch)
        await conn.execute("SELECT set_config('smsgw.epoch', $1, false)", str(epoch))
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO nodes (epoch, name, host, pid, backend_pid)"
                " VALUES ($1, $2, $3, $4, pg_backend_pid())",
                epoch, self.name, socket.gethostname(), os.getpid())
            await conn.execute("INSERT INTO state_counts (node, state, n)"
                               " SELECT $1, unnest($2::text[]), 0", epoch,
                               [s.value for s in State])
        self.epoch = epoch
        log.info("store.node_registered", backend="postgresql", node=self.name, epoch=epoch)

    async def adopt(self, conn: asyncpg.Connection[Any]) -> list[str]:
        """Take over the due work nobody works on: of no node, or of nodes whose session is
        gone (their epoch lock is free); in short transactions of ADOPT_BATCH rows (FOR UPDATE
        SKIP LOCKED: adopters never wait for each other). The ids of the messages taken."""
        taken: list[str] = []
        started = trio.current_time()
        # The session holding a hung node's epoch lock: its writer (backend_pid, kept by its
        # setup on each reconnection), never another node adopting its work at this moment
        # (that one holds the lock for its transaction; several nodes starting after a
        # whole-cluster crash would otherwise end each other's sessions).
        for name, epoch, pid in await conn.fetch(
                "SELECT n.name, n.epoch, l.pid FROM nodes n JOIN pg_locks l"
                " ON l.locktype = 'advisory' AND l.granted AND l.objsubid = 2"
                " AND l.database = (SELECT oid FROM pg_database"
                " WHERE datname = current_database())"
                " AND l.classid::bigint = $2 AND l.objid::bigint = n.epoch"
                " AND l.pid = n.backend_pid"
                " WHERE n.epoch <> $1 AND n.heartbeat_at < now() - make_interval(secs => $3)",
                self.epoch, NODE_LOCK_CLASS, NODE_LEASE):
            if await conn.fetchval("SELECT pg_terminate_backend($1)", pid):
                log.warning("store.node_hung", backend="postgresql", node=name, epoch=epoch,
                            lease=NODE_LEASE, detail="its session was ended: its work goes "
                            "to the other nodes")
        while True:
            async with conn.transaction():
                dead = [epoch for (epoch,) in await conn.fetch(
                    "SELECT epoch FROM nodes WHERE epoch <> $1", self.epoch)
                    if await conn.fetchval("SELECT pg_try_advisory_xact_lock($1, $2)",
                                           NODE_LOCK_CLASS, epoch)]
                rows = await conn.fetch(
                    "UPDATE due SET owner = $1, since = now() WHERE message_id IN"
                    " (SELECT message_id FROM due"
                    " WHERE owner IS NULL OR owner = ANY($2::bigint[])"
                    " LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING message_id",
                    self.epoch, dead, ADOPT_BATCH)
                taken.extend(r[0] for r in rows)
                if len(rows) < ADOPT_BATCH:
                    gone = await conn.fetch(
                        "DELETE FROM nodes n WHERE epoch = ANY($1::bigint[]) AND NOT EXISTS"
                        " (SELECT 1 FROM due WHERE owner = n.epoch) RETURNING name, epoch", dead)
                    await conn.execute(_FOLD_COUNTS_SQL, [e for _, e in gone], self.epoch)
                    await free_reports(conn, [e for _, e in gone])
                    await conn.execute("DELETE FROM account_binds WHERE node = ANY($1::bigint[])",
                                       [e for _, e in gone])
                    for name, epoch in gone:
                        log.warning("store.node_taken_over", backend="postgresql", node=name,
                                    epoch=epoch, by=self.epoch)
                    break
        if not self.shared:  # the one process: every report owed upstream is its to deliver
            await conn.execute("UPDATE reports SET holder = $1"
                               " WHERE holder IS DISTINCT FROM $1", self.epoch)
        metrics.DB_ADOPT_SECONDS.observe(trio.current_time() - started)
        if taken:
            log.info("store.work_adopted", backend="postgresql", node=self.name,
                     messages=len(taken))
        return taken

    async def leave(self, conn: asyncpg.Connection[Any]) -> None:
        """A clean stop: the node's unfinished messages are nobody's (any node adopts them at
        once), and its row goes."""
        async with conn.transaction():
            await conn.execute("UPDATE due SET owner = NULL WHERE owner = $1", self.epoch)
            await conn.execute("DELETE FROM nodes WHERE epoch = $1", self.epoch)
            await conn.execute(_FOLD_COUNTS_SQL, [self.epoch], 0)
            await free_reports(conn, [self.epoch or 0])
            # its binds are closed by now (the store closes last): its slots are free at once
            await conn.execute("UPDATE bind_slots SET holder = NULL, lease_until = '-infinity'"
                               " WHERE holder = $1", self.epoch)
            await conn.execute("DELETE FROM account_binds WHERE node = $1", self.epoch)

    async def beat(self, conn: asyncpg.Connection[Any]) -> None:
        if not await conn.fetchval("UPDATE nodes SET heartbeat_at = now() WHERE epoch = $1"
                                   " RETURNING 1", self.epoch):
            raise NodeFenced(f"postgresql: node {self.name} (epoch {self.epoch}) is no longer "
                             "registered: another node took its work over; it must restart")


class Listener:
    """A connection of its own that LISTENs to the channels other nodes NOTIFY. wait(channel)
    returns at once if the channel was notified since the previous wait returned, else at the
    next notification (one waiter per channel: no wake-up is lost between two waits). Made
    again when it drops; every channel then counts as notified (some may have been missed)."""

    def __init__(self, loop: Any, dsn: str, connect_timeout: float) -> None:
        self._loop = loop
        self._dsn = dsn
        self._connect_timeout = connect_timeout
        self._events: dict[str, trio.Event] = {}
        self._pending: set[str] = set()
        self._handlers: dict[str, list[Callable[[str | None], None]]] = {}

    def subscribe(self, channel: str, handler: Callable[[str | None], None]) -> None:
        self._handlers.setdefault(channel, []).append(handler)

    def _notify(self, _conn: Any, _pid: int, channel: str, payload: str | None) -> None:
        """A notification (payload None: some may have been missed), on the asyncio loop:
        trio's thread, within a trio task."""
        self._pending.add(channel)
        event = self._events.pop(channel, None)
        if event is not None:
            event.set()
        for handler in self._handlers.get(channel, ()):
            try:
                handler(payload)
            except Exception:
                log.exception("store.notification_failed", channel=channel)

    async def wait(self, channel: str) -> None:
        if channel not in self._pending:
            await self._events.setdefault(channel, trio.Event()).wait()
        self._pending.discard(channel)

    async def run(self, channels: list[str], *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        started = False
        while True:
            conn = None
            try:
                conn = await self._loop.run_aio_coroutine(asyncpg.connect(
                    self._dsn, timeout=self._connect_timeout,
                    server_settings={"application_name": "smsgw listener"}))
                for channel in channels:
                    await self._loop.run_aio_coroutine(conn.add_listener(channel, self._notify))
                if not started:
                    task_status.started()
                    started = True
                while not conn.is_closed():
                    await trio.sleep(HEARTBEAT_INTERVAL)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
                pass
            finally:
                if conn is not None:
                    conn.terminate()
            for channel in channels:  # what was sent meanwhile is lost: look now
                self._notify(None, 0, channel, None)
            if not started:
                task_status.started()
                started = True
            await trio.sleep(HEARTBEAT_INTERVAL)


async def _health(conn: asyncpg.Connection[Any]) -> None:
    """Read the database's health into the DB_* gauges (gateway/metrics.py)."""
    oldest = await conn.fetchval(
        "SELECT coalesce(extract(epoch FROM now() - min(xact_start)), 0)::float8"
        " FROM pg_stat_activity WHERE datname = current_database()"
        " AND backend_xmin IS NOT NULL AND pid <> pg_backend_pid()")
    metrics.DB_OLDEST_SNAPSHOT.set(float(oldest or 0.0))
    for table, live, dead in await conn.fetch(
            "SELECT relname::text, n_live_tup, n_dead_tup FROM pg_stat_user_tables"
            " WHERE schemaname = current_schema() AND relname = ANY($1::text[])",
            list(HOT_TABLES)):
        metrics.DB_ROWS.labels(table).set(live)
        metrics.DB_DEAD_ROWS.labels(table).set(dead)
    metrics.DB_NODES.set(await conn.fetchval("SELECT count(*) FROM nodes"))


async def watch_health(reader: Calls) -> None:
    while True:
        with contextlib.suppress(StoreError):  # unreachable: read again next time
            await reader.call(_health)
        await trio.sleep(HEALTH_INTERVAL)


async def heartbeat(writer: Calls, node: Node) -> None:
    """Keep heartbeat_at fresh (an operator, and later the other nodes, see a hung node by
    it). NodeFenced ends the store, and so the daemon; an unreachable database is tried
    again at the next beat."""
    while True:
        await trio.sleep(HEARTBEAT_INTERVAL)
        try:
            await writer.call(node.beat)
        except NodeFenced:
            raise
        except StoreError:
            continue
