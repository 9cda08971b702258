"""The PostgreSQL backend of the store: its schema (versioned in smsgw_schema), a writer and a
reader connection (asyncpg, hosted in trio by trio-asyncio, one call at a time on each), the
translation of the store's ``?`` placeholders to PostgreSQL's ``$n``, and reconnection after the
server went away. asyncpg, not psycopg 3: it costs the gateway less than half the CPU per
message (bench/RESULTS.md, "PostgreSQL driver")."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import socket
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import asyncpg
import structlog
import trio
import trio_asyncio

from gateway import metrics
from gateway.model import State
from gateway.store_sql import (
    ANSWERS_CHANNEL,
    CHANGES_CHANNEL,
    CONFIG_CHANNEL,
    DELETE_OPTOUT,
    DONE_SQL,
    FINAL_SQL,
    INBOX_CHANNEL,
    INSERT_EVENT,
    INSERT_INBOX,
    INSERT_MESSAGE,
    INSERT_REPORT,
    MESSAGE_COLUMNS,
    OPEN_SQL,
    OPTOUTS_CHANNEL,
    REPORT_COLUMNS,
    SHARED_CONFIG_KEPT,
    UPSERT_OPTOUT,
    Committed,
    ConstraintError,
    Dialect,
    NodeFenced,
    Row,
    SchemaError,
    StoreError,
    StoreUnavailable,
    reports_channel,
    write_statements,
)

log = structlog.get_logger("gateway.store")

T = TypeVar("T")

DIALECT = Dialect(
    name="postgresql",
    day_of_created="to_char(to_timestamp(created_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    contains="position(? in {col}) > 0",
    operator_ids="(SELECT string_agg(smsc_id, ' ' ORDER BY part_no) FROM parts"
                 " WHERE message_id = m.id)",
    open_index_hint="",
)
WRITE_SQL = write_statements(DIALECT.day_of_created)
_STATE_COUNTS_SQL = "SELECT state, sum(n)::bigint FROM state_counts GROUP BY state"
# A node's rows of state_counts, when it goes, added to `into`'s (0: no node's).
_FOLD_COUNTS_SQL = (
    "WITH gone AS (DELETE FROM state_counts WHERE node = ANY($1::bigint[]) AND node <> $2"
    " RETURNING state, n) UPDATE state_counts s SET n = s.n + g.n"
    " FROM (SELECT state, sum(n) AS n FROM gone GROUP BY state) g"
    " WHERE s.node = $2 AND s.state = g.state")
_REPORT_ID = REPORT_COLUMNS.index("id")

# One gateway process per database until nodes share the work (it is taken with the writer
# connection and held for the process's life). And schema changes, one process at a time.
SINGLE_NODE_LOCK = 0x736D_7367_0001
MIGRATION_LOCK = 0x736D_7367_0002
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

# Session settings of the gateway's connections (item "database health" of the cluster work):
# a statement or an idle transaction that hangs is cut, never left holding locks and snapshots.
STATEMENT_TIMEOUT_MS = 60_000
IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000
CONNECT_TIMEOUT = 10.0  # seconds

REPORT_ID_BLOCK = 1 << 20  # report ids a node takes at a time
SCHEMA_VERSION = 2
# MIGRATIONS[v] takes a database at schema version v to v + 1 (0: an empty database).
MIGRATIONS: tuple[str, ...] = (
    f"""
    CREATE TABLE smsgw_schema (version integer NOT NULL);
    INSERT INTO smsgw_schema (version) VALUES (0);

    CREATE TABLE messages (
        rowid bigint GENERATED ALWAYS AS IDENTITY UNIQUE,  -- scan and paging order
        id text PRIMARY KEY,
        account text NOT NULL,
        source_addr text NOT NULL,
        source_ton bigint NOT NULL,
        source_npi bigint NOT NULL,
        dest_addr text NOT NULL,
        dest_ton bigint NOT NULL,
        dest_npi bigint NOT NULL,
        data_coding bigint NOT NULL,
        esm_class bigint NOT NULL,
        protocol_id bigint NOT NULL,
        priority bigint NOT NULL,
        registered_delivery bigint NOT NULL,
        body bytea NOT NULL,
        created_at double precision NOT NULL,
        expires_at double precision NOT NULL,
        not_before double precision NOT NULL,
        state text NOT NULL,
        attempts bigint NOT NULL,
        next_attempt_at double precision NOT NULL,
        error bigint NOT NULL,
        done_at double precision,
        parts_total bigint NOT NULL,
        channel text NOT NULL,
        connector text,
        tlvs bytea NOT NULL,
        origin text NOT NULL DEFAULT 'smpp',
        traffic text NOT NULL DEFAULT 'alert',
        callback_url text,
        client_ref text,
        service_type text NOT NULL DEFAULT '',
        number_type text NOT NULL DEFAULT '',
        country text NOT NULL DEFAULT '',
        fingerprint bytea,
        billing text NOT NULL DEFAULT ''
    );
    CREATE INDEX messages_open ON messages (expires_at, rowid) WHERE {OPEN_SQL};
    CREATE INDEX messages_done ON messages (done_at) WHERE {DONE_SQL};
    CREATE INDEX messages_fingerprint ON messages (created_at) WHERE fingerprint IS NOT NULL;

    CREATE TABLE parts (
        message_id text NOT NULL,
        part_no bigint NOT NULL,
        connector text NOT NULL,
        smsc_id text,
        state text NOT NULL,
        error bigint NOT NULL,
        submitted_at double precision,
        done_at double precision,
        PRIMARY KEY (message_id, part_no)
    );
    CREATE INDEX parts_smsc_id ON parts (connector, smsc_id) WHERE smsc_id IS NOT NULL;

    CREATE TABLE reports (
        id bigint PRIMARY KEY,  -- given by the gateway, from its block of report_id_blocks
        account text NOT NULL,
        kind text NOT NULL,
        message_id text NOT NULL,
        source_addr text NOT NULL,
        source_ton bigint NOT NULL,
        source_npi bigint NOT NULL,
        dest_addr text NOT NULL,
        dest_ton bigint NOT NULL,
        dest_npi bigint NOT NULL,
        data_coding bigint NOT NULL,
        body bytea NOT NULL,
        created_at double precision NOT NULL,
        state text,
        error bigint NOT NULL,
        extra text,
        via text NOT NULL DEFAULT 'smpp',
        -- The node delivering it (by default the one that stored it); NULL: free, for a
        -- node with a receiver bind of the account (any node, for webhooks) to claim.
        holder bigint DEFAULT nullif(current_setting('smsgw.epoch', true), '')::bigint
    );
    CREATE INDEX reports_account_via ON reports (account, via, id);
    CREATE INDEX reports_free ON reports (account, via, id) WHERE holder IS NULL;
    CREATE INDEX reports_held ON reports (holder, account, via, id);
    -- Report ids come in blocks of REPORT_ID_BLOCK, one block per node at a time: they grow
    -- in each node's commit order, never collide between nodes, are never reused.
    CREATE SEQUENCE report_id_blocks INCREMENT BY {REPORT_ID_BLOCK};

    CREATE TABLE orphan_receipts (
        id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        connector text NOT NULL,
        smsc_id text NOT NULL,
        body bytea NOT NULL,
        received_at double precision NOT NULL
    );
    CREATE INDEX orphan_receipts_received_at ON orphan_receipts (received_at);

    CREATE TABLE events (
        id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        message_id text NOT NULL,
        at double precision NOT NULL,
        kind text NOT NULL,
        from_state text,
        to_state text,
        detail text
    );
    CREATE INDEX events_message ON events (message_id, id);

    CREATE TABLE idempotency_keys (
        account text NOT NULL,
        key text NOT NULL,
        fingerprint text NOT NULL,
        response text NOT NULL,
        created_at double precision NOT NULL,
        PRIMARY KEY (account, key)
    );
    CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);

    CREATE TABLE cdr_daily (
        day text NOT NULL,
        account text NOT NULL,
        smsc text NOT NULL,
        channel text NOT NULL,
        state text NOT NULL,
        messages bigint NOT NULL,
        parts bigint NOT NULL,
        PRIMARY KEY (day, account, smsc, channel, state)
    );

    CREATE TABLE optouts (
        account text NOT NULL,
        msisdn text NOT NULL,
        opted_out bigint NOT NULL,
        at double precision NOT NULL,
        source text NOT NULL,
        PRIMARY KEY (account, msisdn)
    );
    CREATE INDEX optouts_msisdn ON optouts (msisdn);

    -- The gateway processes (nodes) working on the database: each holds its epoch as an
    -- advisory lock (NODE_LOCK_CLASS, epoch) with its writer session, and beats.
    CREATE SEQUENCE node_epochs;
    CREATE TABLE nodes (
        epoch bigint PRIMARY KEY,
        name text NOT NULL,
        host text NOT NULL,
        pid integer NOT NULL,
        backend_pid integer NOT NULL,  -- its writer session (the one holding its epoch lock)
        started_at timestamptz NOT NULL DEFAULT now(),
        heartbeat_at timestamptz NOT NULL DEFAULT now()
    );
    -- The due work: one row per unfinished message, naming the node working on it (NULL:
    -- nobody), kept by the trigger below: this hot table holds the unfinished messages only.
    CREATE TABLE due (
        message_id text PRIMARY KEY,
        owner bigint,
        since timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX due_owner ON due (owner);

    -- An SMSC's binds and its contract throughput as slots (one bind and throughput / binds
    -- each), leased by the nodes: a node runs the binds of the slots it holds, until its
    -- lease ends unless renewed; a dead node's slots are free once their lease has ended.
    CREATE TABLE bind_slots (
        smsc text NOT NULL,
        slot integer NOT NULL,
        holder bigint,
        lease_until timestamptz NOT NULL DEFAULT '-infinity',
        PRIMARY KEY (smsc, slot)
    );

    -- Each node's upstream binds per account, for sharing the accounts' throughput.
    CREATE TABLE account_binds (
        node bigint NOT NULL,
        account text NOT NULL,
        binds integer NOT NULL,
        PRIMARY KEY (node, account)
    );

    -- Receipts handed from the node whose SMSC bind took them to the node working on their
    -- message (the owner of its due row), which applies them and deletes them.
    CREATE TABLE inbox (
        id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        message_id text NOT NULL,
        part_no bigint NOT NULL,
        connector text NOT NULL,
        provider_id text NOT NULL,
        outcome text,
        word text NOT NULL,
        error bigint NOT NULL,
        raw bytea NOT NULL,
        received_at double precision NOT NULL
    );
    CREATE INDEX inbox_message ON inbox (message_id);

    -- Messages per state per node (node 0: no node's), kept by the trigger so that stats()
    -- need not scan months of messages, and nodes never update the same rows; a node's rows
    -- are folded into another's when it goes.
    CREATE TABLE state_counts (
        node bigint NOT NULL DEFAULT 0,
        state text NOT NULL,
        n bigint NOT NULL,
        PRIMARY KEY (node, state)
    );
    INSERT INTO state_counts (state, n) VALUES {", ".join(f"('{s.value}', 0)" for s in State)};
    CREATE FUNCTION smsgw_count_states() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        me bigint := coalesce(nullif(current_setting('smsgw.epoch', true), '')::bigint, 0);
    BEGIN
        IF TG_OP = 'UPDATE' AND NEW.state IS NOT DISTINCT FROM OLD.state THEN
            RETURN NULL;
        END IF;
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            UPDATE state_counts SET n = n - 1 WHERE node = me AND state = OLD.state;
        END IF;
        IF TG_OP IN ('UPDATE', 'INSERT') THEN
            UPDATE state_counts SET n = n + 1 WHERE node = me AND state = NEW.state;
        END IF;
        IF TG_OP = 'INSERT' AND NEW.state NOT IN {FINAL_SQL} THEN
            INSERT INTO due (message_id, owner) VALUES (NEW.id, nullif(me, 0));
        ELSIF TG_OP <> 'INSERT' AND OLD.state NOT IN {FINAL_SQL}
                AND (TG_OP = 'DELETE' OR NEW.state IN {FINAL_SQL}) THEN
            DELETE FROM due WHERE message_id = OLD.id;
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER messages_count AFTER INSERT OR DELETE OR UPDATE OF state ON messages
        FOR EACH ROW EXECUTE FUNCTION smsgw_count_states();
    """,
    """
    -- The configuration every node runs alike (accounts, SMSCs, routes, rules: the shared
    -- sections of gateway/config.py as canonical JSON), in versions: the nodes run the latest.
    CREATE TABLE shared_config (
        version bigint PRIMARY KEY,
        document text NOT NULL,
        pushed_at double precision NOT NULL,
        pushed_by text NOT NULL
    );

    -- Cancels and replacements asked by the node an upstream sent them to, of messages
    -- another node works on (the owner): the owner takes them, applies them, writes the
    -- answer; the asker reads it and deletes the row (gateway/cross_node.py).
    CREATE TABLE change_requests (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        owner bigint NOT NULL,
        asker bigint NOT NULL,
        message_id text NOT NULL,
        request text NOT NULL,
        taken boolean NOT NULL DEFAULT false,
        answer text,
        asked_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX change_requests_owner ON change_requests (owner, id) WHERE NOT taken;
    """,
)
assert len(MIGRATIONS) == SCHEMA_VERSION

_NUMBERED = re.compile(r"\?(\d+)")
_MARK = re.compile(r"\?")


@functools.lru_cache(maxsize=4096)
def translate(sql: str) -> str:
    """The store's SQL in PostgreSQL's style: ``?N`` -> ``$N``; else each ``?`` -> the next
    ``$n``."""
    if _NUMBERED.search(sql):
        return _NUMBERED.sub(r"$\1", sql)
    numbers = iter(range(1, sql.count("?") + 1))
    return _MARK.sub(lambda _: f"${next(numbers)}", sql)


# Errors that say the server is not there (now): down, restarting, shutting down, the
# connection lost or refused.
_UNREACHABLE = (OSError, TimeoutError, asyncpg.PostgresConnectionError,
                asyncpg.exceptions.OperatorInterventionError,
                asyncpg.exceptions.ConnectionDoesNotExistError)


def _wrap_error(exc: BaseException) -> StoreError:
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
        err: StoreError = ConstraintError(str(exc).strip())
    elif isinstance(exc, _UNREACHABLE):
        err = StoreUnavailable(f"postgresql unreachable: {type(exc).__name__}: "
                               f"{str(exc).strip()}")
    else:
        err = StoreError(f"postgresql: {type(exc).__name__}: {str(exc).strip()}")
    err.__cause__ = exc
    return err


Setup = Callable[["asyncpg.Connection[Any]"], Awaitable[None]]


class _Connection:
    """One asyncpg connection, used one call at a time; made again at the next call once
    closed or broken (the server restarted, the network dropped it)."""

    def __init__(self, loop: Any, dsn: str, role: str, settings: dict[str, str],
                 setup: Setup | None = None) -> None:
        self._loop = loop
        self._dsn = dsn
        self._role = role
        self._settings = {"application_name": f"smsgw {role}", **settings}
        self._setup = setup
        self._conn: asyncpg.Connection[Any] | None = None
        self._ever = False  # connected once: a new connection is a reconnection
        self._lock = trio.Lock()

    async def _connected(self) -> asyncpg.Connection[Any]:  # on the asyncio side
        conn = self._conn
        if conn is not None and not conn.is_closed():
            return conn
        if conn is not None:
            conn.terminate()
            self._conn = None
        if self._ever:
            log.warning("store.reconnecting", backend="postgresql", connection=self._role)
        # command_timeout: a server that stops answering (a partition, a frozen host) fails
        # the call after the server-side statement_timeout plus a margin, not never.
        conn = await asyncpg.connect(
            self._dsn, timeout=CONNECT_TIMEOUT,
            command_timeout=STATEMENT_TIMEOUT_MS / 1000 + CONNECT_TIMEOUT,
            server_settings=self._settings)
        try:
            if self._setup is not None:
                await self._setup(conn)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        self._ever = True
        return conn

    async def _run(self, fn: Callable[[asyncpg.Connection[Any]], Awaitable[T]]) -> T:
        return await fn(await self._connected())

    async def call(self, fn: Callable[[asyncpg.Connection[Any]], Awaitable[T]]) -> T:
        """await fn(connection) on the asyncio side; database errors come out as StoreError."""
        async with self._lock:
            try:
                result: T = await self._loop.run_aio_coroutine(self._run(fn))
            except (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError,
                    OSError, TimeoutError) as exc:
                conn = self._conn
                if conn is None or conn.is_closed() or isinstance(
                        exc, (asyncpg.InterfaceError, asyncpg.InternalClientError)):
                    # The connection went, or its protocol state is lost: made again at the
                    # next call. (After a timeout asyncpg cancels the statement itself and
                    # the connection stays usable.)
                    if conn is not None:
                        conn.terminate()
                    raise StoreUnavailable(f"postgresql unreachable: {type(exc).__name__}: "
                                           f"{str(exc).strip()}") from exc
                raise _wrap_error(exc) from exc
            return result

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                await self._loop.run_aio_coroutine(self._conn.close(timeout=5))
                self._conn = None


# Plain inserts, written with COPY (binary) when a batch has several rows: cheaper than an
# INSERT per row for the gateway and for the server (triggers fire as for INSERT).
_COPIED: dict[int, tuple[str, tuple[str, ...]]] = {
    INSERT_MESSAGE: ("messages", MESSAGE_COLUMNS),
    INSERT_EVENT: ("events", ("message_id", "at", "kind", "from_state", "to_state", "detail")),
    INSERT_REPORT: ("reports", REPORT_COLUMNS),
}


async def _transaction(groups: list[tuple[int, list[Row]]], counted: bool,
                       conn: asyncpg.Connection[Any]) -> Committed:
    """Each group one executemany (asyncpg pipelines its rows: one round trip), all in one
    transaction. ``counted``: the rows each group changed are counted (RETURNING 1)."""
    rowcounts: list[int] = []
    async with conn.transaction():
        for stmt, rows in groups:
            sql = translate(WRITE_SQL[stmt])
            if counted:
                rowcounts.append(len(await conn.fetchmany(sql + " RETURNING 1", rows)))
            elif stmt in _COPIED and len(rows) > 1:
                table, columns = _COPIED[stmt]
                await conn.copy_records_to_table(table, records=rows, columns=columns)
                rowcounts.append(len(rows))
            else:
                await conn.executemany(sql, rows)
                rowcounts.append(len(rows))
        if any(stmt == INSERT_INBOX for stmt, _ in groups):  # one NOTIFY per commit
            await conn.execute("SELECT pg_notify($1, '')", INBOX_CHANNEL)
        changed = _optout_changes(groups)
        if changed is not None:
            await conn.execute("SELECT pg_notify($1, $2)", OPTOUTS_CHANNEL, changed)
        counts = {state: int(n) for state, n in await conn.fetch(_STATE_COUNTS_SQL)}
    return rowcounts, counts


_REPORT_COLUMNS_SQL = ", ".join(REPORT_COLUMNS)


async def _lease_slots(epoch: int | None, smsc: str, total: int, want: int, lease: float,
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


async def _account_binds(epoch: int | None, mine: dict[str, int], lease: float,
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


async def _free_reports(conn: asyncpg.Connection[Any], holders: list[int]) -> None:
    """The reports these nodes held are free: the nodes with binds of their accounts (any
    node, for webhooks) are told to claim them."""
    for account, via in await conn.fetch(
            "WITH f AS (UPDATE reports SET holder = NULL WHERE holder = ANY($1::bigint[])"
            " RETURNING account, via) SELECT DISTINCT account, via FROM f", holders):
        await conn.execute("SELECT pg_notify($1, $2)", reports_channel(via), account)


async def _claim_reports(epoch: int | None, accounts: list[str], via: str, limit: int,
                         conn: asyncpg.Connection[Any]) -> list[Row]:
    """Free reports of these accounts going ``via``, oldest first, now held by this node."""
    rows = await conn.fetch(
        f"UPDATE reports SET holder = $1 WHERE id IN (SELECT id FROM reports"
        f" WHERE holder IS NULL AND account = ANY($2::text[]) AND via = $3 ORDER BY id"
        f" LIMIT $4 FOR UPDATE SKIP LOCKED) RETURNING {_REPORT_COLUMNS_SQL}",
        epoch, accounts, via, limit)
    return sorted((tuple(r) for r in rows), key=lambda r: r[_REPORT_ID])


async def _release_reports(epoch: int | None, account: str, via: str, keep: list[int],
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


async def _push_shared_config(document: str, by: str, at: float, if_version: int | None,
                              conn: asyncpg.Connection[Any]) -> tuple[int, bool]:
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


async def _ask_changes(asker: int | None, asks: list[tuple[int, str, str]],
                       conn: asyncpg.Connection[Any]) -> list[int]:
    ids = []
    async with conn.transaction():
        for owner, message_id, request in asks:
            ids.append(int(await conn.fetchval(
                "INSERT INTO change_requests (owner, asker, message_id, request)"
                " VALUES ($1, $2, $3, $4) RETURNING id", owner, asker, message_id, request)))
        for owner in sorted({owner for owner, _, _ in asks}):
            await conn.execute("SELECT pg_notify($1, $2)", CHANGES_CHANNEL, str(owner))
    return ids


async def _take_changes(owner: int | None, limit: int,
                        conn: asyncpg.Connection[Any]) -> list[tuple[int, str, str]]:
    async with conn.transaction():
        rows = await conn.fetch(
            "UPDATE change_requests SET taken = true WHERE id IN (SELECT id FROM"
            " change_requests WHERE owner = $1 AND NOT taken ORDER BY id LIMIT $2"
            " FOR UPDATE SKIP LOCKED) RETURNING id, message_id, request", owner, limit)
        await conn.execute("DELETE FROM change_requests WHERE asked_at < now() - $1 * interval"
                           " '1 s' AND owner = $2", CHANGE_REQUEST_LIFETIME, owner)
    return sorted((int(r[0]), r[1], r[2]) for r in rows)


async def _answer_changes(answers: list[tuple[int, str]], conn: asyncpg.Connection[Any]) -> None:
    async with conn.transaction():
        askers = {int(asker) for (asker,) in await conn.fetch(
            "UPDATE change_requests c SET answer = a.answer FROM unnest($1::bigint[],"
            " $2::text[]) AS a(id, answer) WHERE c.id = a.id RETURNING c.asker",
            [i for i, _ in answers], [a for _, a in answers])}
        for asker in sorted(askers):
            await conn.execute("SELECT pg_notify($1, $2)", ANSWERS_CHANNEL, str(asker))


async def _collect_changes(ids: list[int], withdraw: bool, conn: asyncpg.Connection[Any]
                           ) -> tuple[dict[int, str], set[int]]:
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


NOTIFY_PAYLOAD_MAX = 7000  # bytes (PostgreSQL's limit is 8000)


def _optout_changes(groups: Sequence[tuple[int, list[Row]]]) -> str | None:
    """The OPTOUTS_CHANNEL payload of a transaction's opt-out list changes (None: none)."""
    entries: list[list[Any]] = []
    for stmt, rows in groups:
        if stmt == DELETE_OPTOUT:  # erasure of a number, from every list: reload them
            return '{"reload": true}'
        if stmt == UPSERT_OPTOUT:
            entries.extend([r[0], r[1], int(r[2]), r[3], r[4]] for r in rows)
    if not entries:
        return None
    text = json.dumps({"set": entries}, separators=(",", ":"))
    return text if len(text.encode()) <= NOTIFY_PAYLOAD_MAX else '{"reload": true}'


async def _fetch(sql: str, params: Sequence[Any], conn: asyncpg.Connection[Any]) -> list[Row]:
    return [tuple(r) for r in await conn.fetch(translate(sql), *params)]


class PostgresBackend:
    """An open PostgreSQL store (see gateway.store_sql.Backend)."""

    dialect = DIALECT

    def __init__(self, writer: _Connection, reader: _Connection, node: _Node,
                 listener: _Listener, state_counts: dict[str, int]) -> None:
        self._writer = writer
        self._reader = reader
        self._node = node
        self._listener = listener
        self.state_counts = state_counts

    async def transaction(self, groups: Sequence[tuple[int, list[Row]]],
                          counted: bool = False) -> Committed:
        return await self._writer.call(functools.partial(_transaction, list(groups), counted))

    async def read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return await self._reader.call(functools.partial(_fetch, sql, params))

    async def checkpoint(self) -> bool:
        """PostgreSQL keeps the old versions of deleted rows until VACUUM reuses their space
        (autovacuum does it in the background): nothing to do now, and not done (False)."""
        return False

    async def durability(self) -> tuple[str, str]:
        rows = await self._writer.call(functools.partial(_fetch, "SHOW synchronous_commit", ()))
        return "postgresql", str(rows[0][0])

    @property
    def epoch(self) -> int | None:
        return self._node.epoch

    @property
    def shared(self) -> bool:
        return self._node.shared

    def owned(self, column: str = "id") -> tuple[str, tuple[Any, ...]]:
        return (f" AND {column} IN (SELECT message_id FROM due WHERE owner = ?)",
                (self._node.epoch,))

    def owner_of(self, column: str) -> str:
        return f"(SELECT coalesce(owner, 0) FROM due WHERE message_id = {column})"

    async def notified(self, channel: str, timeout: float) -> None:
        with trio.move_on_after(timeout):
            await self._listener.wait(channel)

    def subscribe(self, channel: str, handler: Callable[[str | None], None]) -> None:
        self._listener.subscribe(channel, handler)

    async def adopt(self) -> list[str]:
        """Take over the work of dead nodes and of none (see _Node.adopt); the message ids."""
        return await self._writer.call(self._node.adopt)

    async def live_nodes(self, lease: float) -> int:
        rows = await self._reader.call(functools.partial(
            _fetch, "SELECT count(*) FROM nodes WHERE heartbeat_at > now() - ? * interval '1 s'",
            (lease,)))
        return max(1, int(rows[0][0]))

    async def lease_slots(self, smsc: str, total: int, want: int, lease: float) -> list[int]:
        return await self._writer.call(functools.partial(
            _lease_slots, self._node.epoch, smsc, total, want, lease))

    async def account_binds(self, mine: Mapping[str, int],
                            lease: float) -> tuple[dict[str, int], int]:
        return await self._writer.call(functools.partial(
            _account_binds, self._node.epoch, dict(mine), lease))

    async def report_ids(self) -> tuple[int, int]:
        rows = await self._writer.call(functools.partial(
            _fetch, "SELECT nextval('report_id_blocks')", ()))
        start = int(rows[0][0])
        return start, start + REPORT_ID_BLOCK

    async def push_shared_config(self, document: str, by: str, at: float,
                                 if_version: int | None) -> tuple[int, bool]:
        return await self._writer.call(functools.partial(
            _push_shared_config, document, by, at, if_version))

    async def ask_changes(self, asks: Sequence[tuple[int, str, str]]) -> list[int]:
        return await self._writer.call(functools.partial(
            _ask_changes, self._node.epoch, list(asks)))

    async def take_changes(self, limit: int) -> list[tuple[int, str, str]]:
        return await self._writer.call(functools.partial(
            _take_changes, self._node.epoch, limit))

    async def answer_changes(self, answers: Sequence[tuple[int, str]]) -> None:
        await self._writer.call(functools.partial(_answer_changes, list(answers)))

    async def collect_changes(self, ids: Sequence[int],
                              withdraw: bool) -> tuple[dict[int, str], set[int]]:
        return await self._writer.call(functools.partial(
            _collect_changes, list(ids), withdraw))

    def held(self) -> tuple[str, tuple[Any, ...]]:
        return " AND holder = ?", (self._node.epoch,)

    async def claim_reports(self, accounts: Sequence[str], via: str, limit: int) -> list[Row]:
        return await self._writer.call(functools.partial(
            _claim_reports, self._node.epoch, list(accounts), via, limit))

    async def release_reports(self, account: str, via: str, keep: Sequence[int]) -> int:
        return await self._writer.call(functools.partial(
            _release_reports, self._node.epoch, account, via, list(keep)))

    @contextlib.asynccontextmanager
    async def singleton(self, job: str) -> AsyncIterator[bool]:
        """A session advisory lock on the writer connection for the job (its writes go through
        that connection; if it reconnects meanwhile, the lock is gone and another node may
        start the job too: the jobs are idempotent)."""
        key = zlib.crc32(job.encode()) & 0x7FFF_FFFF
        [(got,)] = await self._writer.call(functools.partial(
            _fetch, "SELECT pg_try_advisory_lock(?, ?)", (SINGLETON_CLASS, key)))
        try:
            yield got
        finally:
            if got:
                with trio.CancelScope(shield=True), contextlib.suppress(StoreError):
                    await self._writer.call(functools.partial(
                        _fetch, "SELECT pg_advisory_unlock(?, ?)", (SINGLETON_CLASS, key)))


def _settings(synchronous: str | None) -> dict[str, str]:
    """What every connection of the gateway sets (a statement or an idle transaction that
    hangs is cut, never left holding locks and snapshots); the writer's synchronous_commit."""
    settings = {"statement_timeout": str(STATEMENT_TIMEOUT_MS),
                "idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_TIMEOUT_MS)}
    if synchronous is not None:
        settings["synchronous_commit"] = "on" if synchronous == "full" else "off"
    return settings


class _Node:
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
        # The session holding a hung node's epoch lock (its writer, whatever pid it has now).
        for name, epoch, pid in await conn.fetch(
                "SELECT n.name, n.epoch, l.pid FROM nodes n JOIN pg_locks l"
                " ON l.locktype = 'advisory' AND l.granted AND l.objsubid = 2"
                " AND l.database = (SELECT oid FROM pg_database"
                " WHERE datname = current_database())"
                " AND l.classid::bigint = $2 AND l.objid::bigint = n.epoch"
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
                    await _free_reports(conn, [e for _, e in gone])
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
            await _free_reports(conn, [self.epoch or 0])
            # its binds are closed by now (the store closes last): its slots are free at once
            await conn.execute("UPDATE bind_slots SET holder = NULL, lease_until = '-infinity'"
                               " WHERE holder = $1", self.epoch)
            await conn.execute("DELETE FROM account_binds WHERE node = $1", self.epoch)

    async def beat(self, conn: asyncpg.Connection[Any]) -> None:
        if not await conn.fetchval("UPDATE nodes SET heartbeat_at = now() WHERE epoch = $1"
                                   " RETURNING 1", self.epoch):
            raise NodeFenced(f"postgresql: node {self.name} (epoch {self.epoch}) is no longer "
                             "registered: another node took its work over; it must restart")


class _Listener:
    """A connection of its own that LISTENs to the channels other nodes NOTIFY. wait(channel)
    returns at once if the channel was notified since the previous wait returned, else at the
    next notification (one waiter per channel: no wake-up is lost between two waits). Made
    again when it drops; every channel then counts as notified (some may have been missed)."""

    def __init__(self, loop: Any, dsn: str) -> None:
        self._loop = loop
        self._dsn = dsn
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
                    self._dsn, timeout=CONNECT_TIMEOUT,
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


async def _watch_health(reader: _Connection) -> None:
    while True:
        with contextlib.suppress(StoreError):  # unreachable: read again next time
            await reader.call(_health)
        await trio.sleep(HEALTH_INTERVAL)


async def _heartbeat(writer: _Connection, node: _Node) -> None:
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


async def _prepare(conn: asyncpg.Connection[Any]) -> dict[str, int]:
    """Create or migrate the schema (one process at a time); the messages per state."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        if await conn.fetchval("SELECT to_regclass('smsgw_schema') IS NOT NULL"):
            version = int(await conn.fetchval("SELECT version FROM smsgw_schema") or 0)
        else:
            if await conn.fetchval("SELECT count(*) FROM pg_tables"
                                   " WHERE schemaname = current_schema()"):
                raise SchemaError("the database holds tables that are not a gateway store "
                                  "(give the gateway a database of its own)")
            version = 0
        if version > SCHEMA_VERSION:
            raise SchemaError(f"database schema version {version} is newer than this "
                              f"gateway's ({SCHEMA_VERSION})")
        for v in range(version, SCHEMA_VERSION):
            await conn.execute(MIGRATIONS[v])
            await conn.execute("UPDATE smsgw_schema SET version = $1", v + 1)
    return {state: int(n) for state, n in await conn.fetch(_STATE_COUNTS_SQL)}


@contextlib.asynccontextmanager
async def open_postgresql(dsn: str, synchronous: str, *, node: str = "smsgw",
                          shared: bool = False) -> AsyncIterator[PostgresBackend]:
    """Connect to the database ``dsn`` names (a libpq URI), create or migrate its schema,
    register this process as a node (an epoch, its lock, a heartbeat) and take over the work
    of dead nodes. Unless ``shared``, take the single-node lock first: a second process is
    refused. The connections are closed on exit."""
    me = _Node(node, shared)
    async with trio_asyncio.open_loop() as loop:
        writer = _Connection(loop, dsn, "writer", _settings(synchronous), me.setup)
        reader = _Connection(loop, dsn, "reader", _settings(None))
        try:
            counts = await writer.call(_prepare)
            await writer.call(me.register)
            listener = _Listener(loop, dsn)
            backend = PostgresBackend(writer, reader, me, listener, counts)
            await backend.adopt()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_heartbeat, writer, me)
                nursery.start_soon(_watch_health, reader)
                await nursery.start(listener.run, [
                    INBOX_CHANNEL, OPTOUTS_CHANNEL, CONFIG_CHANNEL, CHANGES_CHANNEL,
                    ANSWERS_CHANNEL, reports_channel("smpp"), reports_channel("http")])
                yield backend
                nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True), contextlib.suppress(StoreError):
                await writer.call(me.leave)
        finally:
            with trio.CancelScope(shield=True):
                for conn in (reader, writer):
                    with contextlib.suppress(Exception):
                        await conn.close()
