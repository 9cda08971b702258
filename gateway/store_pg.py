"""The PostgreSQL backend of the store: its schema (versioned in smsgw_schema), a writer and a
reader connection (asyncpg, hosted in trio by trio-asyncio, one call at a time on each), the
translation of the store's ``?`` placeholders to PostgreSQL's ``$n``, and reconnection after the
server went away. asyncpg, not psycopg 3: it costs the gateway less than half the CPU per
message (bench/RESULTS.md, "PostgreSQL driver")."""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg
import structlog
import trio
import trio_asyncio

from gateway.model import State
from gateway.store_sql import (
    DONE_SQL,
    INSERT_REPORT,
    OPEN_SQL,
    REPORT_COLUMNS,
    Committed,
    ConstraintError,
    Dialect,
    Row,
    SchemaError,
    StoreError,
    StoreUnavailable,
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
_STATE_COUNTS_SQL = "SELECT state, n FROM state_counts"
_REPORT_ID = REPORT_COLUMNS.index("id")

# One gateway process per database until nodes share the work (it is taken with the writer
# connection and held for the process's life). And schema changes, one process at a time.
SINGLE_NODE_LOCK = 0x736D_7367_0001
MIGRATION_LOCK = 0x736D_7367_0002

# Session settings of the gateway's connections (item "database health" of the cluster work):
# a statement or an idle transaction that hangs is cut, never left holding locks and snapshots.
STATEMENT_TIMEOUT_MS = 60_000
IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000
CONNECT_TIMEOUT = 10.0  # seconds

SCHEMA_VERSION = 1
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
        id bigint PRIMARY KEY,  -- given by the gateway, from report_ids
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
        via text NOT NULL DEFAULT 'smpp'
    );
    CREATE INDEX reports_account_via ON reports (account, via, id);
    -- The highest report id ever given (ids are never reused, even once every report is
    -- acknowledged and deleted).
    CREATE SEQUENCE report_ids;

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

    -- Messages per state, kept by a trigger so that stats() need not scan months of messages.
    CREATE TABLE state_counts (state text PRIMARY KEY, n bigint NOT NULL);
    INSERT INTO state_counts (state, n) VALUES {", ".join(f"('{s.value}', 0)" for s in State)};
    CREATE FUNCTION smsgw_count_states() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE' AND NEW.state IS NOT DISTINCT FROM OLD.state THEN
            RETURN NULL;
        END IF;
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            UPDATE state_counts SET n = n - 1 WHERE state = OLD.state;
        END IF;
        IF TG_OP IN ('UPDATE', 'INSERT') THEN
            UPDATE state_counts SET n = n + 1 WHERE state = NEW.state;
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER messages_count AFTER INSERT OR DELETE OR UPDATE OF state ON messages
        FOR EACH ROW EXECUTE FUNCTION smsgw_count_states();
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
        self._lock = trio.Lock()

    async def _connected(self) -> asyncpg.Connection[Any]:  # on the asyncio side
        conn = self._conn
        if conn is not None and not conn.is_closed():
            return conn
        if conn is not None:
            conn.terminate()
            self._conn = None
            log.warning("store.reconnecting", backend="postgresql", connection=self._role)
        conn = await asyncpg.connect(self._dsn, timeout=CONNECT_TIMEOUT,
                                     command_timeout=STATEMENT_TIMEOUT_MS / 1000 + CONNECT_TIMEOUT,
                                     server_settings=self._settings)
        try:
            if self._setup is not None:
                await self._setup(conn)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
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
                if isinstance(exc, asyncpg.InternalClientError) and self._conn is not None:
                    self._conn.terminate()  # its protocol state is unknown: made again next call
                if self._conn is None or self._conn.is_closed():  # the connection went with it
                    raise StoreUnavailable(f"postgresql unreachable: {type(exc).__name__}: "
                                           f"{str(exc).strip()}") from exc
                raise _wrap_error(exc) from exc
            return result

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                await self._loop.run_aio_coroutine(self._conn.close(timeout=5))
                self._conn = None


async def _transaction(groups: list[tuple[int, list[Row]]], counted: bool,
                       conn: asyncpg.Connection[Any]) -> Committed:
    """Each group one executemany (asyncpg pipelines its rows: one round trip), all in one
    transaction. ``counted``: the rows each group changed are counted (RETURNING 1)."""
    rowcounts: list[int] = []
    high_report = 0
    async with conn.transaction():
        for stmt, rows in groups:
            sql = translate(WRITE_SQL[stmt])
            if counted:
                rowcounts.append(len(await conn.fetchmany(sql + " RETURNING 1", rows)))
            else:
                await conn.executemany(sql, rows)
                rowcounts.append(len(rows))
            if stmt == INSERT_REPORT:
                high_report = max(r[_REPORT_ID] for r in rows)
        if high_report:
            await conn.execute("SELECT setval('report_ids', greatest($1, (SELECT last_value"
                               " FROM report_ids)))", high_report)
        counts = {state: int(n) for state, n in await conn.fetch(_STATE_COUNTS_SQL)}
    return rowcounts, counts


async def _fetch(sql: str, params: Sequence[Any], conn: asyncpg.Connection[Any]) -> list[Row]:
    return [tuple(r) for r in await conn.fetch(translate(sql), *params)]


class PostgresBackend:
    """An open PostgreSQL store (see gateway.store_sql.Backend)."""

    dialect = DIALECT

    def __init__(self, writer: _Connection, reader: _Connection, next_report_id: int,
                 state_counts: dict[str, int]) -> None:
        self._writer = writer
        self._reader = reader
        self.next_report_id = next_report_id
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


def _settings(synchronous: str | None) -> dict[str, str]:
    """What every connection of the gateway sets (a statement or an idle transaction that
    hangs is cut, never left holding locks and snapshots); the writer's synchronous_commit."""
    settings = {"statement_timeout": str(STATEMENT_TIMEOUT_MS),
                "idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_TIMEOUT_MS)}
    if synchronous is not None:
        settings["synchronous_commit"] = "on" if synchronous == "full" else "off"
    return settings


async def _single_node(conn: asyncpg.Connection[Any]) -> None:
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", SINGLE_NODE_LOCK):
        raise StoreError("postgresql: another gateway process uses this database (it holds the "
                         "single-node advisory lock); one gateway per database for now")


async def _prepare(conn: asyncpg.Connection[Any]) -> tuple[int, dict[str, int]]:
    """Create or migrate the schema (one process at a time); the next free report id and the
    messages per state."""
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
    high = await conn.fetchval(
        "SELECT greatest((SELECT coalesce(max(id), 0) FROM reports),"
        " (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM report_ids))")
    counts = {state: int(n) for state, n in await conn.fetch(_STATE_COUNTS_SQL)}
    return int(high or 0) + 1, counts


@contextlib.asynccontextmanager
async def open_postgresql(dsn: str, synchronous: str) -> AsyncIterator[PostgresBackend]:
    """Connect to the database ``dsn`` names (a libpq URI), create or migrate its schema, and
    take the single-node lock; the connections are closed on exit."""
    async with trio_asyncio.open_loop() as loop:
        writer = _Connection(loop, dsn, "writer", _settings(synchronous), _single_node)
        reader = _Connection(loop, dsn, "reader", _settings(None))
        try:
            next_id, counts = await writer.call(_prepare)
            yield PostgresBackend(writer, reader, next_id, counts)
        finally:
            with trio.CancelScope(shield=True):
                for conn in (reader, writer):
                    with contextlib.suppress(Exception):
                        await conn.close()
