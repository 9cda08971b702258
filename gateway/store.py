"""The durable store: every Message, Part, Report and orphan receipt, in SQLite (WAL, the
embedded default) or PostgreSQL, behind one API (gateway/store_sql.py's Backend).
One writer task group-commits all queued writes; a write call returns after its COMMIT (with
synchronous=full, after that COMMIT is on disk). Admission of new messages is bounded.
"""

from __future__ import annotations

import contextlib
import json
import math
import operator
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import astuple, dataclass, field
from typing import Any, NoReturn, TypeVar

import structlog
import trio
from prometheus_client import Counter

from gateway import metrics
from gateway.config import Synchronous
from gateway.model import (
    Event,
    Message,
    OptOut,
    Part,
    PartState,
    Report,
    ReportKind,
    State,
)
from gateway.store_sql import (
    ANSWERS_CHANNEL,
    CHANGES_CHANNEL,
    CONFIG_CHANNEL,
    COUNT_RETIRED,
    DELETE_INBOX,
    DELETE_OPTOUT,
    DELETE_ORPHAN,
    DELETE_PARTS,
    DELETE_REPORT,
    DONE_SQL,
    INBOX_CHANNEL,
    INBOX_COLUMNS,
    INSERT_EVENT,
    INSERT_EVENT_IF_MESSAGE,
    INSERT_IDEMPOTENCY,
    INSERT_INBOX,
    INSERT_MESSAGE,
    INSERT_ORPHAN,
    INSERT_REPORT,
    MESSAGE_COLUMNS,
    MESSAGE_MUTABLE,
    OPEN_SQL,
    OPTOUTS_CHANNEL,
    PART_COLUMNS,
    PURGE_EVENTS,
    PURGE_IDEMPOTENCY,
    PURGE_MESSAGES,
    PURGE_ORPHANS,
    PURGE_PARTS,
    REDACT_EVENT,
    REPLACE_MESSAGE,
    REPORT_COLUMNS,
    UPDATE_MESSAGE,
    UPSERT_MESSAGE,
    UPSERT_OPTOUT,
    UPSERT_PART,
    Backend,
    ConstraintError,
    NodeFenced,
    Row,
    SchemaError,
    SharedConfig,
    StoreBusy,
    StoreError,
    StoreUnavailable,
    placeholders,
    reports_channel,
)

__all__ = ["CdrPage", "ConstraintError", "Erasure", "Forwarded", "IdempotencyRecord", "NodeFenced",
           "SchemaError", "SharedConfig", "Store", "StoreBusy", "StoreError", "StoreUnavailable",
           "Synchronous"]

log = structlog.get_logger("gateway.store")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """The first answer given to an account's Idempotency-Key: what the request was (its
    fingerprint) and the response (JSON text) to give again."""

    account: str
    key: str
    fingerprint: str
    response: str
    created_at: float


FAILURE_LOG_INTERVAL = 10.0  # seconds: at most one line per interval about failures, refusals


_LOOKUP_CHUNK = 1000  # operator ids looked up per query at most
_MESSAGE_SELECT = f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM messages"
_PART_SELECT = f"SELECT {', '.join(PART_COLUMNS)} FROM parts"
_REPORT_SELECT = f"SELECT {', '.join(REPORT_COLUMNS)} FROM reports"

_message_row: Callable[[Message], Row] = operator.attrgetter(*MESSAGE_COLUMNS)
_message_update_row: Callable[[Message], Row] = operator.attrgetter(*MESSAGE_MUTABLE, "id")
_part_row: Callable[[Part], Row] = operator.attrgetter(*PART_COLUMNS)
_report_fields: Callable[[Report], Row] = operator.attrgetter(*REPORT_COLUMNS[:-3])

_PURGE_CHUNK = 2000
_BULK_READ = 500  # ids per read of get_messages / get_parts_of
_SCAN_WINDOW = 5000  # rowids examined per read by scans over whole tables (erasure, CDR)
ERASED = "<erased>"  # what replaces an erased number in the history of other messages
_OPEN_STATES = tuple(s for s in State if not s.final)
_detail_json = json.JSONEncoder(separators=(",", ":"), default=str).encode


def _optout_row(o: OptOut) -> Row:
    return (o.account, o.msisdn, int(o.opted_out), o.at, o.source)


_DETAIL_CACHE_MAX = 4096
_detail_cache: dict[tuple[tuple[str, object], ...], str] = {}


def _detail_text(detail: dict[str, object]) -> str:
    """A history detail as JSON. Most details repeat exactly (accepted over smpp, a part's
    DELIVRD receipt, a report delivered over a bind): those are encoded once (a JSON
    encoding costs several times the lookup, per event, on the event loop's thread)."""
    try:
        key = tuple(detail.items())
        text = _detail_cache.get(key)
    except TypeError:  # a list value (operator ids): not hashable, encoded each time
        return _detail_json(detail)
    if text is None:
        if len(_detail_cache) >= _DETAIL_CACHE_MAX:
            _detail_cache.clear()
        text = _detail_cache[key] = _detail_json(detail)
    return text


def _event_row(e: Event) -> Row:
    return (e.message_id, e.at, e.kind, e.from_state, e.to_state,
            _detail_text(e.detail) if e.detail else None)


def _event_rows(events: Sequence[Event]) -> tuple[list[Row], dict[tuple[str, str], int]]:
    """The events' rows, and the state transitions they record: (from, to) -> how many."""
    rows = [_event_row(e) for e in events]
    moves: dict[tuple[str, str], int] = {}
    for e in events:
        if e.to_state is not None and e.from_state is not None:
            move = (e.from_state.value, e.to_state.value)
            moves[move] = moves.get(move, 0) + 1
    return rows, moves


def _unfinished(counts: dict[str, int]) -> int:
    return sum(counts.get(s.value, 0) for s in _OPEN_STATES)


def _to_event(row: Row) -> Event:
    rid, message_id, at, kind, from_state, to_state, detail = row
    return Event(message_id, at, kind,
                 State(from_state) if from_state else None, State(to_state) if to_state else None,
                 json.loads(detail) if detail else {}, rid)


def _to_message(row: Row) -> Message:
    m = Message(*row)
    m.state = State(m.state)
    return m


def _to_part(row: Row) -> Part:
    p = Part(*row)
    p.state = PartState(p.state)
    return p


def _to_report(row: Row) -> Report:
    r = Report(*row[:-2])
    r.kind = ReportKind(r.kind)
    if r.state is not None:
        r.state = State(r.state)
    extra = row[-2]
    if extra:
        r.extra = json.loads(extra)
    r.via = row[-1]
    return r


CDR_COLUMNS = (
    "id", "account", "source_addr", "dest_addr", "channel", "parts_total", "data_coding",
    "connector", "state", "created_at", "done_at", "attempts", "error", "origin", "traffic",
    "client_ref", "billing",
)  # fmt: skip


@dataclass(slots=True)
class CdrPage:
    """One page of Store.cdr_page: records, the cursor of the next page (None: the end), and
    the scan's bounds (rowids) to tell progress: done = (next - start) / (end - start)."""

    records: list[dict[str, Any]]
    next: int | None
    start: int
    end: int


@dataclass(slots=True)
class Forwarded:
    """A receipt for a part of a message another node works on, handed to that node through
    the store (the inbox): which part, and what the provider said (as a ProviderReceipt of
    routing/channel.py has it). ``id``: its row, as Store.inbox reads it back."""

    message_id: str
    part_no: int
    connector: str
    provider_id: str
    outcome: PartState | None
    word: str
    error: int
    raw: bytes
    received_at: float
    id: int | None = None

    def row(self) -> Row:
        return (self.message_id, self.part_no, self.connector, self.provider_id,
                None if self.outcome is None else self.outcome.value, self.word, self.error,
                self.raw, self.received_at)


def _to_forwarded(row: Row) -> Forwarded:
    rid, message_id, part_no, connector, provider_id, outcome, word, error, raw, at = row
    return Forwarded(message_id, part_no, connector, provider_id,
                     None if outcome is None else PartState(outcome), word, error, bytes(raw),
                     at, rid)


@dataclass(slots=True)
class Erasure:
    """What Store.erase_addresses did: rows deleted or redacted, and the unfinished messages
    it left (they are being delivered: erase again once they are final)."""

    messages: int = 0
    parts: int = 0
    events: int = 0
    reports: int = 0
    orphan_receipts: int = 0
    events_redacted: int = 0
    optouts: list[str] = field(default_factory=list)  # accounts whose opt-out list had it
    unfinished: list[str] = field(default_factory=list)
    wal_cleared: bool = False  # the WAL (old copies of pages) was emptied afterwards

    def add(self, retired: tuple[int, int, int]) -> None:
        self.messages += retired[0]
        self.parts += retired[1]
        self.events += retired[2]


# --------------------------------------------------------------------------- write queue


class _Call:
    """One write call: its rows grouped by statement, and how the writer answers it."""

    __slots__ = ("admitted", "done", "error", "exclusive", "groups", "moves", "rowcounts",
                 "size")

    def __init__(self, groups: list[tuple[int, list[Row]]], exclusive: bool = False) -> None:
        self.groups = groups
        self.size = sum(len(rows) for _, rows in groups)
        self.exclusive = exclusive  # run alone in its own transaction; rowcounts exact, its own
        self.admitted = 0  # new messages it inserts, counted as unfinished until it is done
        self.done = trio.Event()
        self.error: BaseException | None = None
        self.rowcounts: list[int] = []
        self.moves: dict[tuple[str, str], int] = {}  # state transitions its events record


class _Episode:
    """A condition that may repeat thousands of times a second (failures, refusals): each
    occurrence counted in ``counter{label}``; logged at most once per FAILURE_LOG_INTERVAL
    (the first at once, later ones as one line with the number since the previous line),
    and once more, with the number not yet logged, when the condition ends."""

    __slots__ = ("counter", "ended", "event", "level", "next_log", "on", "unlogged")

    def __init__(self, counter: Counter, event: str, ended: str, level: str) -> None:
        self.counter, self.event, self.ended, self.level = counter, event, ended, level
        self.on = False
        self.unlogged = 0  # occurrences since the last line logged
        self.next_log = -math.inf

    def occurred(self, label: str, detail: str) -> None:
        metrics.child(self.counter, label).inc()
        self.on = True
        self.unlogged += 1
        now = trio.current_time()
        if now >= self.next_log:
            getattr(log, self.level)(self.event, reason=label, detail=detail,
                                     count=self.unlogged, interval=FAILURE_LOG_INTERVAL)
            self.unlogged = 0
            self.next_log = now + FAILURE_LOG_INTERVAL

    def over(self) -> None:
        if self.on:
            log.info(self.ended, count=self.unlogged)
            self.on = False
            self.unlogged = 0
            self.next_log = -math.inf


class PendingWrite:
    """A write already queued; `await wait()` returns after its commit or raises StoreError.
    Cancelling the wait does not cancel the write."""

    __slots__ = ("_call", "_ids", "_reports")

    def __init__(self, call: _Call, reports: list[Report], ids: list[int]) -> None:
        self._call, self._reports, self._ids = call, reports, ids

    async def wait(self) -> None:
        await self._call.done.wait()
        if self._call.error is not None:
            raise self._call.error
        for r, rid in zip(self._reports, self._ids, strict=True):
            r.id = rid


# --------------------------------------------------------------------------- the store


class Store:
    """The gateway's durable state. Open with ``async with Store.open(path) as store:``.

    Writes return only after the COMMIT that holds them, and a write is atomic. If a caller is
    cancelled after its write was queued, the write still happens (it is in the queue); the
    caller just does not learn of the commit. Reads go through a second, read-only connection
    and see every write whose call has returned.

    Bounds: add_messages (new messages from upstream) is refused with StoreBusy, writing
    nothing, while the rows queued for the writer reach ``queue_max`` (the disk lags) or when
    the unfinished messages (stored, plus those queued for insertion) would exceed
    ``unfinished_max``. Every other write is always queued: those rows come from messages
    already admitted, so the admission bounds them too, and refusing them would only make
    their callers try again.

    Failures are counted in ``smsgw_store_failures_total{operation}`` and logged at most once
    per FAILURE_LOG_INTERVAL with their number; callers need not log them again.

    Metrics of each commit: the state transitions its events record (an Event with from_state
    and to_state) are counted in ``smsgw_message_transitions_total{from,to}`` once committed,
    never for a failed write; ``smsgw_unfinished_messages{state}`` is set from the messages per
    state that commit leaves; its duration and rows go to the commit histograms.

    Limits: one process per database (SQLite: a lock file enforces it; PostgreSQL: an advisory
    lock; report ids are allocated in memory). Reads share one connection, so they run one at
    a time. A lone caller pays a
    full commit per call (about 0.6 ms, more with synchronous=full); throughput comes from
    concurrent callers sharing commits (see bench/bench_store.py).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        batch_max: int,
        batch_linger: float,
        queue_max: int,
        unfinished_max: int,
    ) -> None:
        self._db = backend
        # Report ids come in blocks (several nodes share a PostgreSQL store): the current one,
        # and the next one, fetched in the background once half of the current one is used.
        self._next_report_id = self._report_ids_end = 0
        self._spare_report_ids: tuple[int, int] | None = None
        self._fetching_report_ids = False
        self._nursery: trio.Nursery | None = None
        self._batch_max = batch_max
        self._batch_linger = batch_linger
        self.queue_max = queue_max
        self.unfinished_max = unfinished_max
        # Unbounded channel: the bound is applied to admissions (see the class docstring).
        self._send, self._recv = trio.open_memory_channel[_Call](math.inf)
        self._closed = False
        self._queued_rows = 0  # rows of calls queued and not yet done
        self._state_counts: dict[str, int] = {}  # messages per state, as of the last commit
        self._unfinished = 0  # unfinished messages as of the last commit
        self._counted(backend.state_counts)
        self._admitting = 0  # new messages queued by add_messages, not yet done
        self._failures = _Episode(metrics.STORE_FAILURES, "store.failed", "store.recovered",
                                  "error")
        self._busy = _Episode(metrics.STORE_BUSY, "store.busy", "store.admitting", "warning")
        self.commits = 0  # transactions committed
        self.committed_ops = 0  # rows written by those transactions
        self.failed_batches = 0  # group transactions that failed and were retried call by call

    def _counted(self, counts: dict[str, int]) -> None:
        """Messages per state as just committed: kept, and shown in the gauges."""
        self._state_counts = counts
        self._unfinished = _unfinished(counts)
        for state in _OPEN_STATES:
            metrics.child(metrics.UNFINISHED, state.value).set(counts.get(state.value, 0))

    @property
    def state_counts(self) -> dict[str, int]:
        """Messages per state (every State value a key) as of the last commit."""
        return {s.value: self._state_counts.get(s.value, 0) for s in State}

    @property
    def unfinished(self) -> int:
        """Messages not in a final state: committed ones plus those queued for insertion."""
        return self._unfinished + self._admitting

    @property
    def epoch(self) -> int | None:
        """This process's epoch as a node of a PostgreSQL database; None: SQLite."""
        return self._db.epoch

    @property
    def shared(self) -> bool:
        """Other gateway processes (nodes) work on the same database."""
        return self._db.shared

    async def adopt(self) -> list[str]:
        """Take over the unfinished messages no live node works on (PostgreSQL; done at
        opening too); their ids. SQLite: none (the one process has them all)."""
        return await self._db.adopt()

    @property
    def queued_rows(self) -> int:
        """Rows queued for the writer and not yet committed (the store's lag)."""
        return self._queued_rows

    # ----------------------------------------------------------------- lifecycle

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        where: str | os.PathLike[str],
        *,
        batch_max: int = 512,
        batch_linger: float = 0.0,
        synchronous: Synchronous = "full",
        queue_max: int = 20_000,
        unfinished_max: int = 100_000,
        node: str = "smsgw",
        shared: bool = False,
    ) -> AsyncIterator[Store]:
        """Open the store and run its writer task. ``where`` is an SQLite database file
        (created if needed, see gateway.store_sqlite.open_sqlite) or a PostgreSQL URI
        (``postgresql://...``, see gateway.store_pg.open_postgresql); the schema is created or
        migrated either way.

        Durability:
        - ``synchronous="full"`` (the default): every COMMIT is on disk before the write call
          returns (SQLite: fsync of the WAL; PostgreSQL: synchronous_commit=on). Nothing
          acknowledged is lost on a process crash (SIGKILL included), a kernel crash or a
          power loss (given a disk that honours fsync).
        - ``synchronous="normal"``: SQLite: a COMMIT is in the WAL file (the OS page cache)
          before the call returns, so a process crash loses nothing acknowledged; a kernel
          crash or power loss may roll back the transactions committed since the last WAL
          sync. PostgreSQL: synchronous_commit=off: a crash of the database server (not of the
          gateway) may roll back the last fraction of a second of commits. The database stays
          consistent. Faster: no flush per commit.

        ``batch_max`` bounds the rows written per transaction (one call is never split);
        ``batch_linger`` (seconds) lets the writer wait that long for more calls before
        committing a batch that is not full. ``queue_max`` (rows) and ``unfinished_max``
        (messages) bound admissions (see the class docstring). On exit, queued writes are
        committed, then the connections are closed.

        PostgreSQL: this process registers as a node named ``node`` (an epoch, held for its
        life; see gateway.store_pg) and takes over the unfinished messages of dead nodes.
        Unless ``shared``, a second process on the database is refused (several nodes do not
        share the work yet: ``shared`` is for the tests of what exists of it).
        """
        if batch_max < 1 or not batch_linger >= 0 or queue_max < 1 or unfinished_max < 1:
            raise ValueError("batch_max, queue_max and unfinished_max must be >= 1 and "
                             "batch_linger >= 0")
        if synchronous not in ("full", "normal"):
            raise ValueError(f'synchronous must be "full" or "normal", not {synchronous!r}')
        with _sole_exception():
            async with _open_backend(where, synchronous, node, shared) as backend:
                store = cls(backend, batch_max=batch_max, batch_linger=batch_linger,
                            queue_max=queue_max, unfinished_max=unfinished_max)
                store._next_report_id, store._report_ids_end = await backend.report_ids()
                try:
                    async with trio.open_nursery() as nursery:
                        store._nursery = nursery
                        await nursery.start(store._write_loop)
                        try:
                            yield store
                        finally:
                            store._send.close()  # the writer drains the queue, then returns
                finally:
                    store._closed = True

    # ----------------------------------------------------------------- the writer

    async def _write_loop(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Take queued calls, up to batch_max rows, commit them together, answer each caller.

        Shielded: once the store is open, queued writes are always carried out and answered;
        the loop ends when the queue is closed (store exit) and empty.
        """
        recv = self._recv
        batch_max = self._batch_max
        linger = self._batch_linger
        held: _Call | None = None  # a call that did not fit in the previous batch
        task_status.started()
        with trio.CancelScope(shield=True):
            try:
                while True:
                    if held is not None:
                        first, held = held, None
                    else:
                        try:
                            first = await recv.receive()
                        except trio.EndOfChannel:
                            return
                    batch = [first]
                    if not first.exclusive:
                        held = await self._gather(batch, first.size, batch_max, linger)
                    await self._run_batch(batch)
            finally:
                # Normally the queue is closed and empty here. If the loop died of a bug,
                # answer whatever is still queued so that no caller waits forever.
                self._recv.close()
                for call in ([held] if held else []) + _drain(recv):
                    call.error = StoreError("the store's writer stopped")
                    self._settle(call)

    async def _gather(
        self, batch: list[_Call], size: int, batch_max: int, linger: float
    ) -> _Call | None:
        """Add queued calls to batch up to batch_max rows; return a call that did not fit."""
        recv = self._recv
        while size < batch_max:
            try:
                call = recv.receive_nowait()
            except trio.WouldBlock:
                if linger <= 0:
                    return None
                with trio.move_on_after(linger):
                    while size < batch_max:
                        try:
                            call = await recv.receive()
                        except trio.EndOfChannel:
                            return None
                        if call.exclusive or size + call.size > batch_max:
                            return call
                        batch.append(call)
                        size += call.size
                return None
            except trio.EndOfChannel:
                return None
            if call.exclusive or size + call.size > batch_max:
                return call
            batch.append(call)
            size += call.size
        return None

    async def _run_batch(self, batch: list[_Call]) -> None:
        if len(batch) == 1:
            await self._run_alone(batch[0])
            return
        buckets: dict[int, list[Row]] = {}
        for call in batch:
            for stmt, rows in call.groups:
                buckets.setdefault(stmt, []).extend(rows)
        groups = [(i, buckets[i]) for i in sorted(buckets) if buckets[i]]
        started = trio.current_time()
        try:
            _, counts = await self._db.transaction(groups)
        except StoreUnavailable as exc:
            # The database cannot be reached: each call alone would wait as long again.
            self._failures.occurred("write", str(exc))
            for call in batch:
                call.error = exc
                self._settle(call)
            return
        except Exception:
            # Some call broke the transaction: retry each alone, so only that one fails.
            self.failed_batches += 1
            for call in batch:
                await self._run_alone(call)
            return
        self._committed(sum(len(rows) for _, rows in groups), counts, started)
        for call in batch:
            self._settle(call)

    async def _run_alone(self, call: _Call) -> None:
        groups = [(stmt, rows) for stmt, rows in call.groups if rows]
        started = trio.current_time()
        try:
            call.rowcounts, counts = await self._db.transaction(groups, counted=call.exclusive)
        except Exception as exc:
            call.error = exc if isinstance(exc, StoreError) else StoreError(
                f"{type(exc).__name__}: {exc}")
            self._failures.occurred("write", str(call.error))
        else:
            self._committed(call.size, counts, started)
        self._settle(call)

    def _committed(self, rows: int, counts: dict[str, int], started: float) -> None:
        self.commits += 1
        self.committed_ops += rows
        metrics.STORE_COMMIT_SECONDS.observe(trio.current_time() - started)
        metrics.STORE_BATCH_ROWS.observe(rows)
        self._counted(counts)
        self._failures.over()

    def _settle(self, call: _Call) -> None:
        """The call is done (committed or failed): it no longer counts as queued; the state
        transitions its events record are counted once committed."""
        self._queued_rows -= call.size
        self._admitting -= call.admitted
        if call.moves and call.error is None:
            for move, n in call.moves.items():
                metrics.child(metrics.TRANSITIONS, *move).inc(n)
        call.done.set()

    def _queue(self, call: _Call) -> None:
        if not call.size:
            call.done.set()
            return
        try:
            self._send.send_nowait(call)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise StoreError("the store is closed") from None
        self._queued_rows += call.size
        self._admitting += call.admitted

    async def _write(self, call: _Call) -> list[int]:
        """Queue a call and wait for its commit; the rows each of its statements changed (only
        an exclusive call is told: the others may share their transaction)."""
        if not call.size:
            return [0] * len(call.groups)
        self._queue(call)
        # If we are cancelled here, the write still happens: it is queued.
        await call.done.wait()
        if call.error is not None:
            raise call.error
        return call.rowcounts

    # ----------------------------------------------------------------- writes

    async def add_messages(self, msgs: Sequence[Message], events: Sequence[Event] = (), *,
                           idempotency: IdempotencyRecord | None = None) -> None:
        """Admit and insert new messages (and their first history events), all or none. An id
        that exists already fails the whole call with ConstraintError, and so does an
        ``idempotency`` record (stored with the messages, in the same commit) whose account and
        key are stored already. Raises StoreBusy at
        once, writing nothing, while the write queue is over ``queue_max`` rows or if the
        unfinished messages would exceed ``unfinished_max`` (counted in
        smsgw_store_busy_total{reason})."""
        if self._closed:
            raise StoreError("the store is closed")
        if self._queued_rows >= self.queue_max:
            self._refuse("queue", f"the store lags: {self._queued_rows} rows wait for a "
                                  f"commit (queue_max {self.queue_max})")
        if self.unfinished + len(msgs) > self.unfinished_max:
            self._refuse("unfinished", f"{self.unfinished} messages unfinished "
                                       f"(unfinished_max {self.unfinished_max})")
        self._busy.over()
        groups: list[tuple[int, list[Row]]] = [(INSERT_MESSAGE, [_message_row(m) for m in msgs])]
        moves: dict[tuple[str, str], int] = {}
        if events:
            rows, moves = _event_rows(events)
            groups.append((INSERT_EVENT, rows))
        if idempotency is not None:
            groups.append((INSERT_IDEMPOTENCY, [astuple(idempotency)]))
        call = _Call(groups)
        call.admitted = len(msgs)
        call.moves = moves
        await self._write(call)

    async def save_message(
        self, msg: Message, parts: Sequence[Part] = (), reports: Sequence[Report] = (),
        events: Sequence[Event] = (),
    ) -> None:
        """Atomically: upsert the message (an existing row gets only its mutable fields:
        state, attempts, next_attempt_at, error, done_at, parts_total, connector, channel),
        upsert the parts by (message_id, part_no), insert the reports and set their ids, and
        append the events to the history."""
        await self.save_messages([(msg, parts, reports)], events=events)

    def _refuse(self, reason: str, detail: str) -> NoReturn:
        self._busy.occurred(reason, detail)
        raise StoreBusy(detail)

    async def save_messages(
        self, items: Sequence[tuple[Message, Sequence[Part], Sequence[Report]]],
        *, events: Sequence[Event] = (),
    ) -> None:
        """save_message for several messages, all in one atomic call."""
        await self.save_messages_nowait(items, events=events).wait()

    def save_messages_nowait(
        self, items: Sequence[tuple[Message, Sequence[Part], Sequence[Report]]],
        *, existing: bool = False, events: Sequence[Event] = (),
    ) -> PendingWrite:
        """save_messages, queued at once with the rows as they are now; await the result's
        wait() for the commit. Writes queued earlier are committed first (or with it).

        existing=True: the messages are known to be stored already (added by add_messages);
        only their mutable fields are written, by a plain UPDATE (cheaper than the upsert).
        """
        if existing:
            msgs = [_message_update_row(msg) for msg, _, _ in items]
            stmt = UPDATE_MESSAGE
        else:
            msgs = [_message_row(msg) for msg, _, _ in items]
            stmt = UPSERT_MESSAGE
        part_rows = [_part_row(p) for _, parts, _ in items for p in parts]
        reports = [r for _, _, reps in items for r in reps]
        groups: list[tuple[int, list[Row]]] = [(stmt, msgs)]
        if part_rows:
            groups.append((UPSERT_PART, part_rows))
        ids: list[int] = []
        if reports:
            ids, rows = self._report_rows(reports)
            groups.append((INSERT_REPORT, rows))
        moves: dict[tuple[str, str], int] = {}
        if events:
            rows, moves = _event_rows(events)
            groups.append((INSERT_EVENT, rows))
        call = _Call(groups)
        call.moves = moves
        self._queue(call)
        return PendingWrite(call, reports, ids)

    def replace_message_nowait(self, msg: Message, events: Sequence[Event] = ()) -> PendingWrite:
        """A replacement (replace_sm), queued at once: the message's mutable fields, its body,
        registered_delivery, not_before and expires_at as they are now, its parts deleted (the
        text is cut again at its next attempt), and the events, in one commit."""
        groups: list[tuple[int, list[Row]]] = [
            (UPDATE_MESSAGE, [_message_update_row(msg)]),
            (REPLACE_MESSAGE, [(msg.body, msg.registered_delivery, msg.not_before,
                                 msg.expires_at, msg.id)]),
            (DELETE_PARTS, [(msg.id,)]),
        ]
        if events:
            groups.append((INSERT_EVENT, [_event_row(e) for e in events]))
        call = _Call(groups)
        self._queue(call)
        return PendingWrite(call, [], [])

    async def add_events(self, events: Sequence[Event]) -> None:
        """Append events to their messages' histories (events of a purged message are
        dropped with it by the next purge)."""
        rows, moves = _event_rows(events)
        call = _Call([(INSERT_EVENT, rows)])
        call.moves = moves
        await self._write(call)

    async def save_parts(self, parts: Sequence[Part]) -> None:
        """Upsert parts by (message_id, part_no)."""
        await self._write(_Call([(UPSERT_PART, [_part_row(p) for p in parts])]))

    async def add_reports(self, reports: Sequence[Report],
                          optouts: Sequence[OptOut] = ()) -> None:
        """Insert reports owed to upstream accounts; sets each Report's id after the commit.
        ``optouts`` (an MO's STOP or START) are written in the same commit."""
        if not reports:
            return
        ids, rows = self._report_rows(reports)
        groups = [(INSERT_REPORT, rows)]
        if optouts:
            groups.append((UPSERT_OPTOUT, [_optout_row(o) for o in optouts]))
        await self._write(_Call(groups))
        for r, rid in zip(reports, ids, strict=True):
            r.id = rid

    async def set_optouts(self, optouts: Sequence[OptOut]) -> None:
        """Put numbers on their account's opt-out list, or take them off (opted_out False),
        in the given order (the last entry for a number wins)."""
        if optouts:
            await self._write(_Call([(UPSERT_OPTOUT, [_optout_row(o) for o in optouts])]))

    async def fingerprints(self, since: float) -> list[tuple[bytes, float, str]]:
        """(fingerprint, created_at, id) of the messages accepted since that time with a
        duplicates rule's fingerprint, oldest first."""
        rows = await self._read(
            "SELECT fingerprint, created_at, id FROM messages"
            " WHERE fingerprint IS NOT NULL AND created_at >= ? ORDER BY created_at", (since,))
        return [(bytes(f), at, i) for f, at, i in rows]

    async def optouts(self, account: str | None = None) -> list[OptOut]:
        """The numbers opted out (of ``account``, or of every account), by account and
        number."""
        where, params = ("opted_out = 1", ()) if account is None else (
            "opted_out = 1 AND account = ?", (account,))
        rows = await self._read("SELECT account, msisdn, opted_out, at, source FROM optouts"
                                f" WHERE {where} ORDER BY account, msisdn", params)
        return [OptOut(r[0], r[1], bool(r[2]), r[3], r[4]) for r in rows]

    def _report_id(self) -> int:
        """The next report id of this process's block (see Backend.report_ids)."""
        if self._next_report_id >= self._report_ids_end:
            if self._spare_report_ids is None:
                self._fetch_report_ids()
                raise StoreError("no report ids: the next block is still being fetched")
            (self._next_report_id, self._report_ids_end), self._spare_report_ids = \
                self._spare_report_ids, None
        rid = self._next_report_id
        self._next_report_id += 1
        if self._spare_report_ids is None and \
                self._report_ids_end - self._next_report_id < (1 << 19):
            self._fetch_report_ids()
        return rid

    def _fetch_report_ids(self) -> None:
        if self._fetching_report_ids or self._nursery is None or self._closed:
            return
        self._fetching_report_ids = True

        async def fetch() -> None:
            try:
                self._spare_report_ids = await self._db.report_ids()
            except StoreError:
                pass  # counted and logged by the store; fetched at the next report
            finally:
                self._fetching_report_ids = False

        self._nursery.start_soon(fetch)

    def _report_rows(self, reports: Sequence[Report]) -> tuple[list[int], list[Row]]:
        # Ids are allocated here, from this process's block, so a batch can insert with
        # executemany and still tell every caller its ids. A failed call leaves a gap.
        ids: list[int] = []
        rows: list[Row] = []
        for r in reports:
            rid = self._report_id() if r.id is None else r.id
            ids.append(rid)
            rows.append(
                (
                    *_report_fields(r),
                    rid,
                    json.dumps(r.extra, separators=(",", ":")) if r.extra else None,
                    r.via,
                )
            )
        return ids, rows

    async def ack_reports(self, report_ids: Sequence[int], events: Sequence[Event] = ()) -> None:
        """Delete reports (delivered upstream, or expired), and append the events saying so
        to the histories of their messages that are still stored (none is written for a
        message erased meanwhile). Unknown ids are ignored."""
        groups: list[tuple[int, list[Row]]] = [(DELETE_REPORT, [(i,) for i in report_ids])]
        if events:  # they record no state transition
            groups.append((INSERT_EVENT_IF_MESSAGE, [_event_row(e) for e in events]))
        await self._write(_Call(groups))

    async def record_orphan_receipt(
        self, connector: str, smsc_id: str, body: bytes, received_at: float
    ) -> None:
        """Keep a receipt no part matched, for inspection (purged with the messages)."""
        await self._write(_Call([(INSERT_ORPHAN, [(connector, smsc_id, body, received_at)])]))

    async def purge(self, finished_before: float) -> int:
        """Retention: delete final messages done before that time, their parts and history,
        and orphan receipts received before it, keeping each deleted message counted in
        cdr_daily (see daily_totals). Returns the number of messages deleted. Works in chunks
        of a few thousand rows so other writers wait at most one chunk. Where several nodes
        share the database, one does it at a time: the others return 0 at once."""
        async with self._db.singleton("purge") as mine:
            return await self._purge(finished_before) if mine else 0

    async def _purge(self, finished_before: float) -> int:
        deleted = 0
        while True:
            rows = await self._read(
                f"SELECT id FROM messages WHERE {DONE_SQL} AND done_at < ? LIMIT ?",
                (finished_before, _PURGE_CHUNK),
            )
            if not rows:
                break
            deleted += (await self._retire([r[0] for r in rows]))[0]
            if len(rows) < _PURGE_CHUNK:
                break
        orphans = _Call([(PURGE_ORPHANS, [(finished_before, _PURGE_CHUNK)])], exclusive=True)
        while (await self._write(orphans))[0] >= _PURGE_CHUNK:
            orphans = _Call(orphans.groups, exclusive=True)
        return deleted

    async def purge_idempotency(self, created_before: float) -> int:
        """Forget the Idempotency-Keys recorded before that time; returns how many. In chunks
        of a few thousand rows, so other writers wait at most one chunk; one node at a time
        (see purge)."""
        forgotten = 0
        async with self._db.singleton("purge_idempotency") as mine:
            while mine:
                call = _Call([(PURGE_IDEMPOTENCY, [(created_before, _PURGE_CHUNK)])],
                             exclusive=True)
                deleted = (await self._write(call))[0]
                forgotten += deleted
                if deleted < _PURGE_CHUNK:
                    break
        return forgotten

    async def _retire(self, message_ids: Sequence[str]) -> tuple[int, int, int]:
        """Delete these messages if final, with their parts and history, each counted in
        cdr_daily first, in one transaction; (messages, parts, events) deleted."""
        ids: list[Row] = [(i,) for i in message_ids]
        # Counted before deleted: out of the write statements' order, which an exclusive call may be
        # (it runs alone, its groups in the order given).
        counts = await self._write(_Call(
            [(COUNT_RETIRED, ids), (PURGE_MESSAGES, ids), (PURGE_PARTS, ids),
             (PURGE_EVENTS, ids)], exclusive=True))
        return counts[1], counts[2], counts[3]

    async def _scan(self, table: str, columns: str, where: str,
                    params: Sequence[Any] = ()) -> AsyncIterator[list[Row]]:
        """The rows of a table matching `where`, in the order of its integer key (messages:
        rowid, the others: id), a window of _SCAN_WINDOW keys per read (bounded memory and
        read time, however big the table); each row starts with its key."""
        rowid = "rowid" if table == "messages" else "id"
        bounds = await self._read(f"SELECT min({rowid}), max({rowid}) FROM {table}")
        low, high = bounds[0]
        if low is None:
            return
        after = low - 1
        while after < high:
            upto = min(after + _SCAN_WINDOW, high)
            rows = await self._read(
                f"SELECT {rowid}, {columns} FROM {table} WHERE {rowid} > ? AND {rowid} <= ?"
                f" AND ({where}) ORDER BY {rowid}", (after, upto, *params))
            if rows:
                yield rows
            after = upto

    async def erase_addresses(self, addresses: Sequence[str]) -> Erasure:
        """Erasure of one person (GDPR), given the spellings of their number: delete the
        final messages from or to it (counted in cdr_daily first, like retention), their parts
        and history, the reports (receipts, MO) from or to it, the orphan receipts quoting
        it, its place on opt-out lists, and replace it by "<erased>" where other messages'
        history names it. Unfinished
        messages are left to finish (listed in the result): run it again once they are final.
        Scans every table in windows: bounded memory, other writers wait one chunk at most."""
        result = Erasure()
        forms = list(dict.fromkeys(a for a in addresses if a))
        if not forms:
            return result
        marks = placeholders(len(forms))
        match = f"source_addr IN ({marks}) OR dest_addr IN ({marks})"
        done: list[str] = []
        async for rows in self._scan("messages", "id, state", match, (*forms, *forms)):
            for _, message_id, state in rows:
                if State(state).final:
                    done.append(message_id)
                else:
                    result.unfinished.append(message_id)
            while len(done) >= _PURGE_CHUNK:
                chunk, done = done[:_PURGE_CHUNK], done[_PURGE_CHUNK:]
                result.add(await self._retire(chunk))
        if done:
            result.add(await self._retire(done))
        async for rows in self._scan("reports", "id", match, (*forms, *forms)):
            counts = await self._write(_Call([(DELETE_REPORT, [(r[1],) for r in rows])],
                                             exclusive=True))
            result.reports += counts[0]
        quoted = " OR ".join(self._db.dialect.has("body") for _ in forms)
        async for rows in self._scan("orphan_receipts", "id", quoted,
                                     [f.encode() for f in forms]):
            counts = await self._write(_Call([(DELETE_ORPHAN, [(r[1],) for r in rows])],
                                             exclusive=True))
            result.orphan_receipts += counts[0]
        # In history details, a number is a JSON string value: "33612345678".
        named = [json.dumps(f) for f in forms]
        mentions = " OR ".join(self._db.dialect.has("detail") for _ in named)
        async for rows in self._scan("events", "id", mentions, named):
            redactions = [(r[1], n, json.dumps(ERASED)) for r in rows for n in named]
            await self._write(_Call([(REDACT_EVENT, redactions)]))
            result.events_redacted += len(rows)
        listed = await self._read(
            f"SELECT DISTINCT account FROM optouts WHERE msisdn IN ({marks})", forms)
        if listed:
            await self._write(_Call([(DELETE_OPTOUT, [(f,) for f in forms])]))
            result.optouts = sorted(r[0] for r in listed)
        result.wal_cleared = await self.checkpoint()
        return result

    async def checkpoint(self) -> bool:
        """Make the old copies of deleted rows go where the engine keeps them (SQLite: copy
        the WAL into the database and empty it); False if that could not finish now (it is
        then done by the engine's own housekeeping later)."""
        return await self._db.checkpoint()

    # ----------------------------------------------------------------- reads

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        if self._closed:
            raise StoreError("the store is closed")
        try:
            rows = await self._db.read(sql, params)
        except StoreError as exc:
            self._failures.occurred("read", str(exc))
            raise
        self._failures.over()
        return rows

    async def get_message(self, message_id: str) -> Message | None:
        rows = await self._read(f"{_MESSAGE_SELECT} WHERE id = ?", (message_id,))
        return _to_message(rows[0]) if rows else None

    async def get_message_for_account(self, account: str, message_id: str) -> Message | None:
        """The message if it exists and belongs to that account; None otherwise."""
        rows = await self._read(
            f"{_MESSAGE_SELECT} WHERE id = ? AND account = ?", (message_id, account)
        )
        return _to_message(rows[0]) if rows else None

    async def get_parts(self, message_id: str) -> list[Part]:
        return (await self.get_parts_of([message_id])).get(message_id, [])

    async def get_messages(self, ids: Sequence[str]) -> list[Message]:
        """The messages with these ids (those that exist), with a read per 500 ids."""
        found: list[Message] = []
        for i in range(0, len(ids), _BULK_READ):
            chunk = ids[i:i + _BULK_READ]
            rows = await self._read(
                f"{_MESSAGE_SELECT} WHERE id IN ({placeholders(len(chunk))})", chunk)
            found.extend(_to_message(r) for r in rows)
        return found

    async def get_parts_of(self, ids: Sequence[str]) -> dict[str, list[Part]]:
        """The parts of these messages by message id (in part order; those with none
        left out), with a read per 500 ids."""
        parts: dict[str, list[Part]] = {}
        for i in range(0, len(ids), _BULK_READ):
            chunk = ids[i:i + _BULK_READ]
            for row in await self._read(
                    f"{_PART_SELECT} WHERE message_id IN ({placeholders(len(chunk))})"
                    " ORDER BY message_id, part_no", chunk):
                part = _to_part(row)
                parts.setdefault(part.message_id, []).append(part)
        return parts

    async def events_of(self, message_id: str) -> list[Event]:
        """The message's history, oldest first (empty if it has none or is unknown)."""
        rows = await self._read(
            "SELECT id, message_id, at, kind, from_state, to_state, detail FROM events"
            " WHERE message_id = ? ORDER BY id", (message_id,))
        return [_to_event(r) for r in rows]

    async def idempotency_record(self, account: str, key: str) -> IdempotencyRecord | None:
        """The first answer recorded for that account's Idempotency-Key, if still kept."""
        rows = await self._read(
            "SELECT account, key, fingerprint, response, created_at FROM idempotency_keys"
            " WHERE account = ? AND key = ?", (account, key))
        return IdempotencyRecord(*rows[0]) if rows else None

    async def find_part(self, connector: str, smsc_ids: Sequence[str]) -> Part | None:
        """The Part of that connector whose smsc_id is any of smsc_ids (variants of one id)."""
        found = await self.find_part_owner(connector, smsc_ids)
        return found[0] if found else None

    async def find_part_owner(self, connector: str,
                              smsc_ids: Sequence[str]) -> tuple[Part, int | None] | None:
        """find_part, with the epoch of the node working on the part's message: 0 if it is
        unfinished and no node has it yet (a dead node's, not adopted yet), None if it is
        final or the store has no nodes (SQLite)."""
        found = await self.find_parts_owners(connector, smsc_ids)
        return found[0] if found else None

    async def find_parts_owners(self, connector: str, smsc_ids: Sequence[str]
                                ) -> list[tuple[Part, int | None]]:
        """Every part of the connector with one of these operator ids, with its owner as
        find_part_owner gives it (one read for a batch of receipts)."""
        variants = list(dict.fromkeys(smsc_ids))
        found: list[tuple[Part, int | None]] = []
        for start in range(0, len(variants), _LOOKUP_CHUNK):
            chunk = variants[start:start + _LOOKUP_CHUNK]
            rows = await self._read(
                f"SELECT {', '.join('p.' + c for c in PART_COLUMNS)},"
                f" {self._db.owner_of('p.message_id')} FROM parts p"
                f" WHERE p.connector = ? AND p.smsc_id IN ({placeholders(len(chunk))})",
                (connector, *chunk))
            found += [(_to_part(row[:-1]), row[-1]) for row in rows]
        return found

    async def forward_receipts(self, receipts: Sequence[Forwarded]) -> None:
        """Hand receipts to the nodes working on their messages: stored in one commit (group
        committed with other writes), which notifies those nodes."""
        if not receipts:
            return
        call = _Call([(INSERT_INBOX, [r.row() for r in receipts])])
        await self._write(call)

    async def inbox(self, limit: int = 1000) -> list[Forwarded]:
        """The receipts other nodes handed over for the messages this node works on, oldest
        first (drop them once applied: applying one again is harmless, a late receipt)."""
        mine, params = self._db.owned("message_id")
        rows = await self._read(
            f"SELECT {', '.join(INBOX_COLUMNS)} FROM inbox WHERE true{mine} ORDER BY id LIMIT ?",
            (*params, limit))
        return [_to_forwarded(r) for r in rows]

    async def drop_inbox(self, ids: Sequence[int]) -> None:
        """Delete handed-over receipts (applied)."""
        if ids:
            await self._write(_Call([(DELETE_INBOX, [(i,) for i in ids])]))

    def follow_optouts(self, changed: Callable[[list[OptOut] | None], None]) -> None:
        """Have changed(entries) called with the opt-out list entries each commit of any node
        sharing the store writes (this one's too), soon after it; changed(None) when some may
        have been missed (read every list again). SQLite: never called (one process)."""

        def handler(payload: str | None) -> None:
            if payload is None:
                changed(None)
                return
            data = json.loads(payload)
            if data.get("reload"):
                changed(None)
                return
            changed([OptOut(account, msisdn, bool(flag), at, source)
                     for account, msisdn, flag, at, source in data["set"]])

        self._db.subscribe(OPTOUTS_CHANNEL, handler)

    async def shared_config(self, version: int | None = None) -> SharedConfig | None:
        """The latest version of the configuration the nodes run alike (``version``: that
        one), None if there is none; always None unless nodes share the store."""
        if not self.shared:
            return None
        which, params = ("WHERE version = ?", (version,)) if version is not None else \
            ("ORDER BY version DESC LIMIT 1", ())
        rows = await self._read("SELECT version, document, pushed_at, pushed_by"
                                f" FROM shared_config {which}", params)
        return SharedConfig(*rows[0]) if rows else None

    async def shared_config_versions(self, limit: int = 20) -> list[SharedConfig]:
        """The latest versions of the shared configuration, newest first, without their
        documents ("")."""
        if not self.shared:
            return []
        rows = await self._read("SELECT version, '', pushed_at, pushed_by FROM shared_config"
                                " ORDER BY version DESC LIMIT ?", (limit,))
        return [SharedConfig(*row) for row in rows]

    async def push_shared_config(self, document: str, by: str, at: float,
                                 if_version: int | None = None) -> tuple[int, bool]:
        """Make ``document`` the next version of the shared configuration (see
        Backend.push_shared_config): (latest version, whether it was stored)."""
        if self._closed:
            raise StoreError("the store is closed")
        return await self._db.push_shared_config(document, by, at, if_version)

    def follow_shared_config(self, pushed: Callable[[], None]) -> None:
        """Have pushed() called soon after any node pushes a shared configuration, and when
        a push may have been missed. SQLite: never called (one process)."""
        self._db.subscribe(CONFIG_CHANNEL, lambda _payload: pushed())

    async def message_owner(self, message_id: str) -> tuple[Message, int | None] | None:
        """The message and the epoch of the node working on it: 0 if it is unfinished and
        no node has it yet, None if it is final or the store has no nodes; None if there is
        no such message."""
        rows = await self._read(f"SELECT {', '.join(MESSAGE_COLUMNS)},"
                                f" {self._db.owner_of('id')} FROM messages WHERE id = ?",
                                (message_id,))
        return (_to_message(rows[0][:-1]), rows[0][-1]) if rows else None

    async def unfinished_elsewhere(self, account: str, dest_addrs: Sequence[str]
                                   ) -> list[tuple[Message, int]]:
        """The account's unfinished messages to these addresses that another node works on
        (or none yet: owner 0), with that node's epoch."""
        owner = self._db.owner_of("id")
        rows = await self._read(
            f"SELECT {', '.join(MESSAGE_COLUMNS)}, {owner} FROM messages"
            f" WHERE account = ? AND dest_addr IN ({placeholders(len(dest_addrs))})"
            f" AND {OPEN_SQL} AND {owner} IS DISTINCT FROM ?",
            (account, *dest_addrs, self.epoch))
        return [(_to_message(row[:-1]), int(row[-1] or 0)) for row in rows]

    async def ask_changes(self, asks: Sequence[tuple[int, str, str]]) -> list[int]:
        """See Backend.ask_changes (several nodes share the store)."""
        return await self._db.ask_changes(asks)

    async def take_changes(self, limit: int) -> list[tuple[int, str, str]]:
        """See Backend.take_changes."""
        return await self._db.take_changes(limit)

    async def answer_changes(self, answers: Sequence[tuple[int, str]]) -> None:
        """See Backend.answer_changes."""
        await self._db.answer_changes(answers)

    async def collect_changes(self, ids: Sequence[int],
                              withdraw: bool = False) -> tuple[dict[int, str], set[int]]:
        """See Backend.collect_changes."""
        return await self._db.collect_changes(ids, withdraw)

    def follow_changes(self, asked: Callable[[], None], answered: Callable[[], None]) -> None:
        """Have asked() called when another node asks this one for a change, answered() when
        one answers this node's (and both when some notifications may have been missed)."""
        me = str(self.epoch)
        self._db.subscribe(CHANGES_CHANNEL, lambda to: asked() if to in (me, None) else None)
        self._db.subscribe(ANSWERS_CHANNEL,
                           lambda to: answered() if to in (me, None) else None)

    async def inbox_notified(self, timeout: float) -> None:
        """Return when another node has handed receipts over (its commit notified), or after
        ``timeout`` seconds: wake-ups are one notification per commit, and the poll covers a
        notification lost while the listening connection was down."""
        await self._db.notified(INBOX_CHANNEL, timeout)

    async def unfinished_messages(self) -> list[Message]:
        """Every message not in a final state that this node works on (the dispatcher's work
        at startup): all of them, but where several nodes share a PostgreSQL database."""
        mine, params = self._db.owned()
        rows = await self._read(f"{_MESSAGE_SELECT} WHERE {OPEN_SQL}{mine}", params)
        return [_to_message(r) for r in rows]

    async def pending_reports(self, account: str, limit: int = 1000, *,
                              after: int = 0, via: str = "smpp") -> list[Report]:
        """Reports of that account not yet acked whose id is above ``after`` and that go
        ``via`` ("smpp" or "http"), oldest (first stored) first; only those this node delivers
        where several share the store. Report ids grow in this node's commit order: every
        report it commits later has a larger id than any returned, so ``after`` = the last id
        returned pages through (one a node claims from another is handed over as it is)."""
        held, params = self._db.held()
        rows = await self._read(
            f"{_REPORT_SELECT} WHERE account = ? AND via = ? AND id > ?{held} ORDER BY id"
            " LIMIT ?", (account, via, after, *params, limit))
        return [_to_report(r) for r in rows]

    async def claim_reports(self, accounts: Sequence[str], via: str,
                            limit: int = 1000) -> list[Report]:
        """Several nodes share the store: free reports of these accounts going ``via``, now
        this node's to deliver, oldest first (SQLite: none, every report is the process's)."""
        if not accounts:
            return []
        return [_to_report(r) for r in await self._db.claim_reports(accounts, via, limit)]

    async def release_reports(self, account: str, via: str, keep: Sequence[int] = ()) -> int:
        """Several nodes share the store: this node's reports of the account going ``via``
        (but ``keep``, those being sent) are free for the nodes that have its binds, which
        are notified; how many."""
        return await self._db.release_reports(account, via, keep)

    async def live_nodes(self, lease: float) -> int:
        """The gateway nodes sharing the store whose heartbeat is younger than ``lease``
        seconds (this one included: at least 1)."""
        return await self._db.live_nodes(lease)

    async def lease_slots(self, smsc: str, total: int, want: int, lease: float) -> list[int]:
        """Several nodes share the store: hold up to ``want`` of the SMSC's ``total`` bind
        slots for ``lease`` seconds (renewing those held, giving back those beyond ``want``,
        taking free or expired ones); the slots this node holds now."""
        return await self._db.lease_slots(smsc, total, want, lease)

    async def account_binds(self, mine: Mapping[str, int],
                            lease: float) -> tuple[dict[str, int], int]:
        """Several nodes share the store: record this node's upstream binds per account; the
        binds per account of the nodes alive (heartbeat younger than ``lease``), and their
        number."""
        return await self._db.account_binds(mine, lease)

    async def reports_notified(self, via: str, timeout: float) -> None:
        """Return when another node made reports going ``via`` free (or a node died), or after
        ``timeout`` seconds."""
        await self._db.notified(reports_channel(via), timeout)

    async def accounts_with_pending_reports(self) -> list[str]:
        rows = await self._read("SELECT DISTINCT account FROM reports ORDER BY account")
        return [r[0] for r in rows]

    async def pending_report_counts(self, via: str | None = None, *,
                                    mine: bool = False) -> tuple[dict[str, int], int]:
        """Reports not yet acked (those going ``via`` "smpp" or "http"; None: all; ``mine``:
        those this node delivers), per account, and the highest id among them (0 if none):
        every report this node commits later has a higher id."""
        where, params = ("WHERE true", ()) if via is None else ("WHERE via = ?", (via,))
        if mine:
            held, of_mine = self._db.held()
            where, params = where + held, (*params, *of_mine)
        rows = await self._read(
            f"SELECT account, count(*), max(id) FROM reports {where} GROUP BY account", params)
        return {account: n for account, n, _ in rows}, max((r[2] for r in rows), default=0)

    async def durability(self) -> tuple[str, str]:
        """(journal, synchronous) as the engine reports them: SQLite's journal_mode and
        synchronous pragmas, PostgreSQL's ("postgresql", synchronous_commit)."""
        return await self._db.durability()

    async def expired_candidates(self, now: float, limit: int = 1000) -> list[Message]:
        """Non-final messages whose expires_at <= now, earliest expiry first."""
        rows = await self._read(
            f"{_MESSAGE_SELECT} WHERE {OPEN_SQL} AND expires_at <= ? ORDER BY expires_at LIMIT ?",
            (now, limit),
        )
        return [_to_message(r) for r in rows]

    async def stats(self) -> dict[str, int]:
        """Messages per state (every State value is a key) and "pending_reports"."""
        rows = await self._read(
            "SELECT state, CAST(sum(n) AS BIGINT) FROM state_counts GROUP BY state")
        out = {s.value: 0 for s in State}
        out.update((state, n) for state, n in rows)
        pending = await self._read("SELECT count(*) FROM reports")
        out["pending_reports"] = pending[0][0]
        return out


    async def unfinished_page(
        self, *, account: str | None = None, state: State | None = None,
        connector: str | None = None, created_before: float | None = None,
        after: tuple[float, int] | None = None, limit: int = 500,
    ) -> list[tuple[tuple[float, int], Message]]:
        """One page of the unfinished messages matching the filters, soonest to expire first,
        each with its cursor: pass the last one as ``after`` for the next page. Reads the
        unfinished messages' index only, never the finished ones."""
        where = [OPEN_SQL, "(expires_at, rowid) > (?, ?)"]
        params: list[Any] = list(after or (-math.inf, -1))
        for clause, value in (("account = ?", account), ("state = ?", state),
                              ("connector = ?", connector), ("created_at < ?", created_before)):
            if value is not None:
                where.append(clause)
                params.append(value)
        rows = await self._read(
            f"SELECT expires_at, rowid, {', '.join(MESSAGE_COLUMNS)} FROM messages"
            f"{self._db.dialect.open_index_hint} WHERE {' AND '.join(where)}"
            " ORDER BY expires_at, rowid LIMIT ?", (*params, limit))
        return [((r[0], r[1]), _to_message(r[2:])) for r in rows]

    async def cdr_page(self, since: float, until: float, after: int | None = None) -> CdrPage:
        """Call detail records of the messages accepted in [since, until), one window of
        _SCAN_WINDOW rowids per call (bounded, however many match): pass ``next`` back as
        ``after`` until it is None. A record has CDR_COLUMNS plus "operator_ids" (the
        operator's message id of each part, space-separated, in part order)."""
        low, high = (await self._read("SELECT min(rowid), max(rowid) FROM messages"))[0]
        if low is None:
            return CdrPage([], None, 0, 0)
        start = low - 1
        after = start if after is None else max(after, start)
        upto = min(after + _SCAN_WINDOW, high)
        rows = await self._read(
            f"SELECT {', '.join('m.' + c for c in CDR_COLUMNS)},"
            f" {self._db.dialect.operator_ids} FROM messages m"
            " WHERE m.rowid > ? AND m.rowid <= ? AND m.created_at >= ? AND m.created_at < ?"
            " ORDER BY m.rowid", (after, upto, since, until))
        names = (*CDR_COLUMNS, "operator_ids")
        return CdrPage([dict(zip(names, r, strict=True)) for r in rows],
                       upto if upto < high else None, start, high)

    async def daily_totals(self, since_day: str, until_day: str) -> list[Row]:
        """What retention and erasure kept of the messages they deleted, for days (UTC,
        "YYYY-MM-DD") in [since_day, until_day): (day, account, smsc, channel, state,
        messages, parts) rows."""
        return await self._read(
            "SELECT day, account, smsc, channel, state, messages, parts FROM cdr_daily"
            " WHERE day >= ? AND day < ? ORDER BY day, account, smsc, channel, state",
            (since_day, until_day))


@contextlib.contextmanager
def _sole_exception() -> Iterator[None]:
    """Let one exception out of the store's internal nurseries as itself, not wrapped in
    nested ExceptionGroups: callers can `except SchemaError` (or their own error)."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaf: BaseException = group
        while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
            leaf = leaf.exceptions[0]
        if isinstance(leaf, BaseExceptionGroup):
            raise
        context = leaf.__context__
        try:
            raise leaf
        finally:
            leaf.__context__ = context
            del leaf, context, group


def _drain(recv: trio.MemoryReceiveChannel[_Call]) -> list[_Call]:
    out: list[_Call] = []
    while True:
        try:
            out.append(recv.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return out


@contextlib.asynccontextmanager
async def _open_backend(where: str | os.PathLike[str], synchronous: str, node: str,
                        shared: bool) -> AsyncIterator[Backend]:
    """The backend ``where`` names: a postgresql:// (or postgres://) URI, else a file."""
    if isinstance(where, str) and where.startswith(("postgresql://", "postgres://")):
        from gateway.store_pg import open_postgresql

        async with open_postgresql(where, synchronous, node=node, shared=shared) as pg:
            yield pg
    else:
        from gateway.store_sqlite import open_sqlite

        async with open_sqlite(where, synchronous) as lite:
            yield lite
