"""The SQLite backend of the store (the embedded default): one database file in WAL mode,
its schema and migrations, a writer and a read-only connection hosted in trio through aiosqlite
and trio-asyncio, and a lock file so that one process only uses a file. The only module that
imports aiosqlite or sqlite3."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiosqlite
import structlog
import trio
import trio_asyncio

from gateway.model import State
from gateway.store_sql import (
    DONE_SQL,
    OPEN_SQL,
    Committed,
    ConstraintError,
    Dialect,
    Row,
    SchemaError,
    StoreError,
    write_statements,
)

log = structlog.get_logger("gateway.store")

DIALECT = Dialect(
    name="sqlite",
    day_of_created="date(created_at, 'unixepoch')",
    contains="instr({col}, ?) > 0",
    operator_ids="(SELECT group_concat(smsc_id, ' ') FROM parts WHERE message_id = m.id)",
    open_index_hint=" INDEXED BY messages_open",
)
WRITE_SQL = write_statements(DIALECT.day_of_created)
_STATE_COUNTS_SQL = "SELECT state, n FROM state_counts"



SCHEMA_VERSION = 10
# MIGRATIONS[v] takes a database at user_version v to v + 1.
MIGRATIONS: tuple[str, ...] = (
    f"""
    CREATE TABLE messages (
        id TEXT PRIMARY KEY NOT NULL,
        account TEXT NOT NULL,
        source_addr TEXT NOT NULL,
        source_ton INTEGER NOT NULL,
        source_npi INTEGER NOT NULL,
        dest_addr TEXT NOT NULL,
        dest_ton INTEGER NOT NULL,
        dest_npi INTEGER NOT NULL,
        data_coding INTEGER NOT NULL,
        esm_class INTEGER NOT NULL,
        protocol_id INTEGER NOT NULL,
        priority INTEGER NOT NULL,
        registered_delivery INTEGER NOT NULL,
        body BLOB NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        not_before REAL NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        next_attempt_at REAL NOT NULL,
        error INTEGER NOT NULL,
        done_at REAL,
        parts_total INTEGER NOT NULL,
        channel TEXT NOT NULL,
        connector TEXT,
        tlvs BLOB NOT NULL
    );
    CREATE INDEX messages_open ON messages (expires_at) WHERE {OPEN_SQL};
    CREATE INDEX messages_done ON messages (done_at) WHERE {DONE_SQL};

    CREATE TABLE parts (
        message_id TEXT NOT NULL,
        part_no INTEGER NOT NULL,
        connector TEXT NOT NULL,
        smsc_id TEXT,
        state TEXT NOT NULL,
        error INTEGER NOT NULL,
        submitted_at REAL,
        done_at REAL,
        PRIMARY KEY (message_id, part_no)
    ) WITHOUT ROWID;
    CREATE INDEX parts_smsc_id ON parts (connector, smsc_id) WHERE smsc_id IS NOT NULL;

    CREATE TABLE reports (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        account TEXT NOT NULL,
        kind TEXT NOT NULL,
        message_id TEXT NOT NULL,
        source_addr TEXT NOT NULL,
        source_ton INTEGER NOT NULL,
        source_npi INTEGER NOT NULL,
        dest_addr TEXT NOT NULL,
        dest_ton INTEGER NOT NULL,
        dest_npi INTEGER NOT NULL,
        data_coding INTEGER NOT NULL,
        body BLOB NOT NULL,
        created_at REAL NOT NULL,
        state TEXT,
        error INTEGER NOT NULL,
        extra TEXT
    );
    CREATE INDEX reports_account ON reports (account, id);

    CREATE TABLE orphan_receipts (
        id INTEGER PRIMARY KEY,
        connector TEXT NOT NULL,
        smsc_id TEXT NOT NULL,
        body BLOB NOT NULL,
        received_at REAL NOT NULL
    );
    CREATE INDEX orphan_receipts_received_at ON orphan_receipts (received_at);

    -- Messages per state, kept by triggers so stats() need not scan months of messages.
    CREATE TABLE state_counts (state TEXT PRIMARY KEY NOT NULL, n INTEGER NOT NULL)
        WITHOUT ROWID;
    INSERT INTO state_counts (state, n) VALUES {", ".join(f"('{s.value}', 0)" for s in State)};
    CREATE TRIGGER messages_count_insert AFTER INSERT ON messages BEGIN
        UPDATE state_counts SET n = n + 1 WHERE state = NEW.state;
    END;
    CREATE TRIGGER messages_count_update AFTER UPDATE OF state ON messages
        WHEN NEW.state IS NOT OLD.state BEGIN
        UPDATE state_counts SET n = n - 1 WHERE state = OLD.state;
        UPDATE state_counts SET n = n + 1 WHERE state = NEW.state;
    END;
    CREATE TRIGGER messages_count_delete AFTER DELETE ON messages BEGIN
        UPDATE state_counts SET n = n - 1 WHERE state = OLD.state;
    END;
    """,
    # 2: where a message came from and what kind of traffic it is; its history (events).
    """
    ALTER TABLE messages ADD COLUMN origin TEXT NOT NULL DEFAULT 'smpp';
    ALTER TABLE messages ADD COLUMN traffic TEXT NOT NULL DEFAULT 'alert';
    ALTER TABLE messages ADD COLUMN callback_url TEXT;
    ALTER TABLE messages ADD COLUMN client_ref TEXT;

    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        message_id TEXT NOT NULL,
        at REAL NOT NULL,
        kind TEXT NOT NULL,
        from_state TEXT,
        to_state TEXT,
        detail TEXT
    );
    CREATE INDEX events_message ON events (message_id, id);
    """,
    # 3: HTTP Idempotency-Key: the first answer to a key, kept for the key's lifetime.
    """
    CREATE TABLE idempotency_keys (
        account TEXT NOT NULL,
        key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        response TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (account, key)
    ) WITHOUT ROWID;
    CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
    """,
    # 4: what retention and erasure keep of the messages they delete: counts per day (UTC, of
    # acceptance), account, SMSC, channel and final state, with no number and no text.
    """
    CREATE TABLE cdr_daily (
        day TEXT NOT NULL,
        account TEXT NOT NULL,
        smsc TEXT NOT NULL,
        channel TEXT NOT NULL,
        state TEXT NOT NULL,
        messages INTEGER NOT NULL,
        parts INTEGER NOT NULL,
        PRIMARY KEY (day, account, smsc, channel, state)
    ) WITHOUT ROWID;
    """,
    # 5: the final state CANCELLED (cancel_sm, DELETE /v1/messages/{id}, `smsgw message
    # cancel`): its row of state_counts, and the partial indexes built again over the final
    # list that now names it (SQLite uses a partial index only for a query whose WHERE is
    # written as the index's, and unfinished_page names messages_open); and the service_type
    # of SMPP submits, which cancel_sm matches.
    f"""
    INSERT OR IGNORE INTO state_counts (state, n) VALUES ('{State.CANCELLED.value}', 0);
    DROP INDEX IF EXISTS messages_open;
    DROP INDEX IF EXISTS messages_done;
    CREATE INDEX messages_open ON messages (expires_at) WHERE {OPEN_SQL};
    CREATE INDEX messages_done ON messages (done_at) WHERE {DONE_SQL};
    ALTER TABLE messages ADD COLUMN service_type TEXT NOT NULL DEFAULT '';
    """,
    # 6: how each report reaches its account: "smpp" (deliver_sm) or "http" (a webhook); the
    # reporter and the webhook deliverer each page through their own (account, via) range.
    """
    ALTER TABLE reports ADD COLUMN via TEXT NOT NULL DEFAULT 'smpp';
    DROP INDEX reports_account;
    CREATE INDEX reports_account_via ON reports (account, via, id);
    """,
    # 7: each account's opt-out list (STOP): one row per number ever opted out; opted_out 0
    # once it opted in again (START), so that the last word wins whatever the batching.
    """
    CREATE TABLE optouts (
        account TEXT NOT NULL,
        msisdn TEXT NOT NULL,
        opted_out INTEGER NOT NULL,
        at REAL NOT NULL,
        source TEXT NOT NULL,
        PRIMARY KEY (account, msisdn)
    ) WITHOUT ROWID;
    """,
    # 8: what the rules found out about the recipient, for routing: its number type
    # ("mobile", "fixed_line", ...) and country (ISO 3166 alpha-2); '' when no rule said. And
    # the duplicates rule's fingerprint of the message (NULL when it did not run), indexed by
    # time for the daemon's start, which reads those of the rule's window.
    """
    ALTER TABLE messages ADD COLUMN number_type TEXT NOT NULL DEFAULT '';
    ALTER TABLE messages ADD COLUMN country TEXT NOT NULL DEFAULT '';
    ALTER TABLE messages ADD COLUMN fingerprint BLOB;
    CREATE INDEX messages_fingerprint ON messages (created_at) WHERE fingerprint IS NOT NULL;
    """,
    # 9: the RCS billing class of a message sent over RCS (basic, single, conversation), for
    # the CDR; '' for the others.
    """
    ALTER TABLE messages ADD COLUMN billing TEXT NOT NULL DEFAULT '';
    """,
    # 10: receipts handed between gateway nodes (PostgreSQL stores only; one process uses an
    # SQLite file, so this table stays empty here: it exists so that both backends run the
    # same statements).
    """
    CREATE TABLE inbox (
        id INTEGER PRIMARY KEY,
        message_id TEXT NOT NULL,
        part_no INTEGER NOT NULL,
        connector TEXT NOT NULL,
        provider_id TEXT NOT NULL,
        outcome TEXT,
        word TEXT NOT NULL,
        error INTEGER NOT NULL,
        raw BLOB NOT NULL,
        received_at REAL NOT NULL
    );
    CREATE INDEX inbox_message ON inbox (message_id);
    """,
)
assert len(MIGRATIONS) == SCHEMA_VERSION


def _wrap_error(exc: BaseException) -> BaseException:
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, sqlite3.IntegrityError):
        err: StoreError = ConstraintError(str(exc))
    else:
        err = StoreError(f"{type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err




async def _aio_connect(uri: str, isolation_level: str | None) -> aiosqlite.Connection:
    return await aiosqlite.connect(uri, uri=True, isolation_level=isolation_level)


def _transaction(db: sqlite3.Connection, groups: list[tuple[str, list[Row]]]) -> Committed:
    """Run in the database thread: each group (one executemany) in one transaction; their
    rowcounts and the messages per state as committed. Rolled back entirely if any
    statement fails."""
    if db.in_transaction:  # left open by a failed ROLLBACK: never build on it
        db.rollback()
    try:
        rowcounts = [db.executemany(sql, rows).rowcount for sql, rows in groups]
        counts = dict(db.execute(_STATE_COUNTS_SQL).fetchall())
        db.commit()
    except BaseException:
        with contextlib.suppress(Exception):
            db.rollback()
        raise
    return rowcounts, counts


# aiosqlite runs every call as a function on its thread (Connection._execute); handing it the
# whole transaction as one function costs one thread round trip instead of one per statement
# plus the commit, each of which waits for the busy event loop. Public API if that is gone.
_ONE_CALL = hasattr(aiosqlite.Connection, "_execute")


async def _aio_transaction(
    conn: aiosqlite.Connection, groups: list[tuple[str, list[Row]]]
) -> Committed:
    """asyncio side: _transaction (each group one executemany, all in one transaction).

    The writer connection opens the transaction itself (isolation_level="IMMEDIATE": sqlite3
    issues BEGIN IMMEDIATE before the first write), which saves a thread round trip.
    """
    if _ONE_CALL:
        result: Committed = await conn._execute(  # type: ignore[no-untyped-call]
            _transaction, conn._conn, groups)
        return result
    if conn.in_transaction:  # left open by a failed ROLLBACK: never build on it
        await conn.rollback()
    try:
        rowcounts = []
        for sql, rows in groups:
            cur = await conn.executemany(sql, rows)
            rowcounts.append(cur.rowcount)
        counts: dict[str, int] = dict(await _aio_fetchall(conn, _STATE_COUNTS_SQL, ()))
        await conn.commit()
    except BaseException:
        with contextlib.suppress(Exception):
            await conn.rollback()
        raise
    return rowcounts, counts


async def _aio_script(conn: aiosqlite.Connection, script: str) -> None:
    await conn.executescript(script)


async def _aio_fetchall(conn: aiosqlite.Connection, sql: str, params: Sequence[Any]) -> list[Row]:
    rows: Iterable[Any] = await conn.execute_fetchall(sql, params)  # tuples: no row_factory
    return list(rows)




class SqliteBackend:
    """An open SQLite store (see gateway.store_sql.Backend)."""

    dialect = DIALECT
    epoch: int | None = None  # one process per file: no nodes
    shared = False

    def __init__(self, loop: Any, writer: aiosqlite.Connection, reader: aiosqlite.Connection,
                 next_report_id: int, state_counts: dict[str, int]) -> None:
        self._loop = loop
        self._writer = writer
        self._reader = reader
        self._next_report_id = next_report_id
        self.state_counts = state_counts

    async def transaction(self, groups: Sequence[tuple[int, list[Row]]],
                          counted: bool = False) -> Committed:  # SQLite: always exact
        try:
            result: Committed = await self._loop.run_aio_coroutine(_aio_transaction(
                self._writer, [(WRITE_SQL[stmt], rows) for stmt, rows in groups]))
        except Exception as exc:
            raise _wrap_error(exc) from exc
        return result

    async def read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        try:
            rows: list[Row] = await self._loop.run_aio_coroutine(
                _aio_fetchall(self._reader, sql, params))
        except sqlite3.Error as exc:
            raise _wrap_error(exc) from exc
        return rows

    async def checkpoint(self) -> bool:
        """Copy the WAL into the database and empty it (the WAL keeps old copies of pages,
        deleted rows included, until then); False if readers kept it from finishing (it is
        then done by SQLite's automatic checkpoints later)."""
        try:
            rows = await self._loop.run_aio_coroutine(
                _aio_fetchall(self._writer, "PRAGMA wal_checkpoint(TRUNCATE)", ()))
        except sqlite3.Error as exc:
            log.warning("store.checkpoint_failed", error=str(exc))
            return False
        return not rows[0][0]

    def owned(self, column: str = "id") -> tuple[str, tuple[Any, ...]]:
        return "", ()  # one process per file: every message is its own

    def owner_of(self, column: str) -> str:
        return "NULL"  # no nodes

    async def notified(self, channel: str, timeout: float) -> None:
        await trio.sleep(timeout)  # nobody else to notify

    def subscribe(self, channel: str, handler: Callable[[str | None], None]) -> None:
        pass  # nobody else to notify

    async def adopt(self) -> list[str]:
        return []

    async def report_ids(self) -> tuple[int, int]:
        return self._next_report_id, 2**62  # one process: all of them

    async def live_nodes(self, lease: float) -> int:
        return 1

    async def lease_slots(self, smsc: str, total: int, want: int, lease: float) -> list[int]:
        return list(range(total))

    async def account_binds(self, mine: Mapping[str, int],
                            lease: float) -> tuple[dict[str, int], int]:
        return dict(mine), 1

    async def push_shared_config(self, document: str, by: str, at: float,
                                 if_version: int | None) -> tuple[int, bool]:
        raise StoreError("an SQLite store has one gateway process, configured by its file: "
                         "a shared configuration needs [store] backend = \"postgresql\" "
                         "and shared = true")

    async def ask_changes(self, asks: Sequence[tuple[int, str, str]]) -> list[int]:
        raise StoreError("an SQLite store has one gateway process: no other node to ask")

    async def take_changes(self, limit: int) -> list[tuple[int, str, str]]:
        return []

    async def answer_changes(self, answers: Sequence[tuple[int, str]]) -> None:
        raise StoreError("an SQLite store has one gateway process: no other node to answer")

    async def collect_changes(self, ids: Sequence[int],
                              withdraw: bool) -> tuple[dict[int, str], set[int]]:
        return {}, set()

    def held(self) -> tuple[str, tuple[Any, ...]]:
        return "", ()

    async def claim_reports(self, accounts: Sequence[str], via: str, limit: int) -> list[Row]:
        return []

    async def release_reports(self, account: str, via: str, keep: Sequence[int]) -> int:
        return 0

    @contextlib.asynccontextmanager
    async def singleton(self, job: str) -> AsyncIterator[bool]:
        yield True  # one process per file

    async def durability(self) -> tuple[str, str]:
        """The writer connection's (journal_mode, synchronous), as SQLite reports them."""
        conn = self._writer
        mode = (await self._loop.run_aio_coroutine(
            _aio_fetchall(conn, "PRAGMA journal_mode", ())))[0][0]
        sync = (await self._loop.run_aio_coroutine(
            _aio_fetchall(conn, "PRAGMA synchronous", ())))[0][0]
        names = {0: "off", 1: "normal", 2: "full", 3: "extra"}
        return str(mode).lower(), names.get(int(sync), str(sync))


@contextlib.asynccontextmanager
async def open_sqlite(
    path: str | os.PathLike[str], synchronous: str
) -> AsyncIterator[SqliteBackend]:
    """Open (creating if needed) the database at ``path``: the missing directories (mode
    0700), the file (mode 0600; SQLite gives its -wal and -shm files the same mode), the
    schema (versioned by PRAGMA user_version), and an exclusive lock file (``path + ".lock"``)
    so two daemons never share one file."""
    db = Path(path)
    if str(path) == ":memory:" or not db.name:
        raise ValueError(f"the store needs a file path, not {str(path)!r}")
    db = db.absolute()
    make_private_dirs(db.parent)
    with _file_lock(db):
        _create_private_file(db)
        async with (
            trio_asyncio.open_loop() as loop,
            _connections(loop, db, synchronous) as (writer, reader, next_id, counts),
        ):
            yield SqliteBackend(loop, writer, reader, next_id, counts)


def make_private_dirs(directory: Path) -> None:
    """Create the missing directories down to ``directory``, each mode 0700 (the store's
    state is nobody else's business); existing ones are left as they are."""
    missing: list[Path] = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=0o700)


def _create_private_file(db: Path) -> None:
    """Create the database file mode 0600 if it does not exist, so that SQLite (which gives
    the -wal and -shm files the database file's mode) never creates any of them readable by
    others. An existing file readable by others is left as it is, with a warning."""
    fd = os.open(db, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        mode = os.fstat(fd).st_mode & 0o777
    finally:
        os.close(fd)
    if mode & 0o077:
        log.warning("store.file_mode", path=str(db), mode=f"{mode:04o}",
                    detail="the database is readable by others; chmod 600 it (and its -wal, "
                           "-shm files) unless that is intended")


@contextlib.contextmanager
def _file_lock(db: Path) -> Iterator[None]:
    """Hold an exclusive lock on db + ".lock": one process (one writer) per database."""
    fd = os.open(f"{db}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"{db}: in use by another process (lock {db}.lock)") from None
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.asynccontextmanager
async def _connections(
    loop: Any, db: Path, synchronous: str
) -> AsyncIterator[tuple[aiosqlite.Connection, aiosqlite.Connection, int, dict[str, int]]]:
    """The writer connection (schema ready) and a read-only one; the next free report id and
    the messages per state."""
    uri = "file:" + quote(str(db))
    writer: aiosqlite.Connection | None = None
    reader: aiosqlite.Connection | None = None
    try:
        try:
            writer = await loop.run_aio_coroutine(_aio_connect(uri, "IMMEDIATE"))
            next_id, counts = await _prepare(loop, writer, synchronous)
            reader = await loop.run_aio_coroutine(_aio_connect(uri + "?mode=ro", None))
            await loop.run_aio_coroutine(_aio_fetchall(reader, "PRAGMA busy_timeout = 5000", ()))
        except sqlite3.Error as exc:
            raise StoreError(f"{db}: {exc}") from exc
        yield writer, reader, next_id, counts
    finally:
        with trio.CancelScope(shield=True):
            if reader is not None:
                await loop.run_aio_coroutine(reader.close())
            if writer is not None:  # the last connection out checkpoints the WAL
                await loop.run_aio_coroutine(writer.close())





async def _prepare(loop: Any, conn: aiosqlite.Connection,
                   synchronous: str) -> tuple[int, dict[str, int]]:
    """Set the pragmas, create or migrate the schema; return the next free report id and the
    messages per state."""

    async def q(sql: str, params: Sequence[Any] = ()) -> list[Row]:
        rows: list[Row] = await loop.run_aio_coroutine(_aio_fetchall(conn, sql, params))
        return rows

    await q("PRAGMA busy_timeout = 5000")
    mode = await q("PRAGMA journal_mode = WAL")
    if mode[0][0].lower() != "wal":
        raise StoreError(f"could not switch the database to WAL (journal_mode={mode[0][0]})")
    await q(f"PRAGMA synchronous = {synchronous.upper()}")
    # Deleted rows are overwritten with zeros (Debian's SQLite does it by default; this makes
    # it so everywhere): what retention and erasure delete does not linger in the file.
    await q("PRAGMA secure_delete = ON")
    version = (await q("PRAGMA user_version"))[0][0]
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"database schema version {version} is newer than this gateway's ({SCHEMA_VERSION})"
        )
    if version == 0 and (await q("SELECT count(*) FROM sqlite_master"))[0][0]:
        raise SchemaError("the file holds an SQLite database that is not a gateway store")
    for v in range(version, SCHEMA_VERSION):
        script = f"BEGIN IMMEDIATE; {MIGRATIONS[v]}; PRAGMA user_version = {v + 1}; COMMIT;"
        await loop.run_aio_coroutine(_aio_script(conn, script))
    seq = await q("SELECT seq FROM sqlite_sequence WHERE name = 'reports'")
    counts: dict[str, int] = dict(await q(_STATE_COUNTS_SQL))
    return (int(seq[0][0]) + 1 if seq else 1), counts

