"""The PostgreSQL backend of the store: its schema (versioned in smsgw_schema), a writer and a
reader connection (asyncpg, hosted in trio by trio-asyncio, one call at a time on each), the
translation of the store's ``?`` placeholders to PostgreSQL's ``$n``, and reconnection after the
server went away, the group-commit transaction, and opening it all as a node (what the nodes
coordinate is gateway/store_pg_nodes.py). asyncpg, not psycopg 3: it costs the gateway less
than half the CPU per message (bench/RESULTS.md, "PostgreSQL driver")."""

from __future__ import annotations

import contextlib
import functools
import json
import re
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import asyncpg
import structlog
import trio
import trio_asyncio

from gateway import store_pg_nodes as pg_nodes
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
    UPSERT_OPTOUT,
    Committed,
    ConstraintError,
    Dialect,
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


# Schema changes, one process at a time.
MIGRATION_LOCK = 0x736D_7367_0002

# Session settings of the gateway's connections (item "database health" of the cluster work):
# a statement or an idle transaction that hangs is cut, never left holding locks and snapshots.
STATEMENT_TIMEOUT_MS = 60_000
IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000
CONNECT_TIMEOUT = 10.0  # seconds

REPORT_ID_BLOCK = 1 << 20  # report ids a node takes at a time
SCHEMA_VERSION = 3
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
    """,
    """
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

    def __init__(self, writer: _Connection, reader: _Connection, node: pg_nodes.Node,
                 listener: pg_nodes.Listener, state_counts: dict[str, int]) -> None:
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
        """Take over the work of dead nodes and of none (see store_pg_nodes.Node.adopt); the ids."""
        return await self._writer.call(self._node.adopt)

    async def live_nodes(self, lease: float) -> int:
        rows = await self._reader.call(functools.partial(
            _fetch, "SELECT count(*) FROM nodes WHERE heartbeat_at > now() - ? * interval '1 s'",
            (lease,)))
        return max(1, int(rows[0][0]))

    async def lease_slots(self, smsc: str, total: int, want: int, lease: float) -> list[int]:
        return await self._writer.call(functools.partial(
            pg_nodes.lease_slots, self._node.epoch, smsc, total, want, lease))

    async def account_binds(self, mine: Mapping[str, int],
                            lease: float) -> tuple[dict[str, int], int]:
        return await self._writer.call(functools.partial(
            pg_nodes.account_binds, self._node.epoch, dict(mine), lease))

    async def report_ids(self) -> tuple[int, int]:
        rows = await self._writer.call(functools.partial(
            _fetch, "SELECT nextval('report_id_blocks')", ()))
        start = int(rows[0][0])
        return start, start + REPORT_ID_BLOCK

    async def push_shared_config(self, document: str, by: str, at: float,
                                 if_version: int | None) -> tuple[int, bool]:
        return await self._writer.call(functools.partial(
            pg_nodes.push_shared_config, document, by, at, if_version))

    async def ask_changes(self, asks: Sequence[tuple[int, str, str]]) -> list[int]:
        return await self._writer.call(functools.partial(
            pg_nodes.ask_changes, self._node.epoch, list(asks)))

    async def take_changes(self, limit: int) -> list[tuple[int, str, str]]:
        return await self._writer.call(functools.partial(
            pg_nodes.take_changes, self._node.epoch, limit))

    async def answer_changes(self, answers: Sequence[tuple[int, str]]) -> None:
        await self._writer.call(functools.partial(pg_nodes.answer_changes, list(answers)))

    async def collect_changes(self, ids: Sequence[int],
                              withdraw: bool) -> tuple[dict[int, str], set[int]]:
        return await self._writer.call(functools.partial(
            pg_nodes.collect_changes, list(ids), withdraw))

    def held(self) -> tuple[str, tuple[Any, ...]]:
        return " AND holder = ?", (self._node.epoch,)

    async def claim_reports(self, accounts: Sequence[str], via: str, limit: int) -> list[Row]:
        return await self._writer.call(functools.partial(
            pg_nodes.claim_reports, self._node.epoch, list(accounts), via, limit))

    async def release_reports(self, account: str, via: str, keep: Sequence[int]) -> int:
        return await self._writer.call(functools.partial(
            pg_nodes.release_reports, self._node.epoch, account, via, list(keep)))

    @contextlib.asynccontextmanager
    async def singleton(self, job: str) -> AsyncIterator[bool]:
        """A session advisory lock on the writer connection for the job (its writes go through
        that connection; if it reconnects meanwhile, the lock is gone and another node may
        start the job too: the jobs are idempotent)."""
        key = zlib.crc32(job.encode()) & 0x7FFF_FFFF
        [(got,)] = await self._writer.call(functools.partial(
            _fetch, "SELECT pg_try_advisory_lock(?, ?)", (pg_nodes.SINGLETON_CLASS, key)))
        try:
            yield got
        finally:
            if got:
                with trio.CancelScope(shield=True), contextlib.suppress(StoreError):
                    await self._writer.call(functools.partial(
                        _fetch, "SELECT pg_advisory_unlock(?, ?)",
                        (pg_nodes.SINGLETON_CLASS, key)))


def _settings(synchronous: str | None) -> dict[str, str]:
    """What every connection of the gateway sets (a statement or an idle transaction that
    hangs is cut, never left holding locks and snapshots); the writer's synchronous_commit."""
    settings = {"statement_timeout": str(STATEMENT_TIMEOUT_MS),
                "idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_TIMEOUT_MS)}
    if synchronous is not None:
        settings["synchronous_commit"] = "on" if synchronous == "full" else "off"
    return settings


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
    me = pg_nodes.Node(node, shared)
    async with trio_asyncio.open_loop() as loop:
        writer = _Connection(loop, dsn, "writer", _settings(synchronous), me.setup)
        reader = _Connection(loop, dsn, "reader", _settings(None))
        try:
            counts = await writer.call(_prepare)
            await writer.call(me.register)
            listener = pg_nodes.Listener(loop, dsn, CONNECT_TIMEOUT)
            backend = PostgresBackend(writer, reader, me, listener, counts)
            await backend.adopt()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pg_nodes.heartbeat, writer, me)
                nursery.start_soon(pg_nodes.watch_health, reader)
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
