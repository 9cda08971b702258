"""Benchmark of the PostgreSQL driver for the store: psycopg 3 against asyncpg, under trio.

The store's write pattern (N concurrent submitters, one group-committing writer of up to 512
rows a transaction, synchronous_commit on): insert a message and an event each, then update
each message twice with an event each (the dispatcher). Prints msg/s and CPU per message of
this process and of PostgreSQL, per driver and run. A script, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psycopg
import trio
import trio_asyncio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.pgserver import PgServer, scratch_dir, tree_cpu_seconds

Row = tuple[Any, ...]

# The gateway's messages table (35 columns: text ids, ints, floats, bytea body and TLVs).
MESSAGE_COLUMNS: list[tuple[str, str]] = [
    ("id", "TEXT PRIMARY KEY NOT NULL"), ("account", "TEXT NOT NULL"),
    ("source_addr", "TEXT NOT NULL"), ("source_ton", "INTEGER NOT NULL"),
    ("source_npi", "INTEGER NOT NULL"), ("dest_addr", "TEXT NOT NULL"),
    ("dest_ton", "INTEGER NOT NULL"), ("dest_npi", "INTEGER NOT NULL"),
    ("data_coding", "INTEGER NOT NULL"), ("esm_class", "INTEGER NOT NULL"),
    ("protocol_id", "INTEGER NOT NULL"), ("priority", "INTEGER NOT NULL"),
    ("registered_delivery", "INTEGER NOT NULL"), ("body", "BYTEA NOT NULL"),
    ("created_at", "DOUBLE PRECISION NOT NULL"), ("expires_at", "DOUBLE PRECISION NOT NULL"),
    ("not_before", "DOUBLE PRECISION NOT NULL"), ("state", "TEXT NOT NULL"),
    ("attempts", "INTEGER NOT NULL"), ("next_attempt_at", "DOUBLE PRECISION NOT NULL"),
    ("error", "INTEGER NOT NULL"), ("done_at", "DOUBLE PRECISION"),
    ("parts_total", "INTEGER NOT NULL"), ("channel", "TEXT NOT NULL"), ("connector", "TEXT"),
    ("tlvs", "BYTEA NOT NULL"), ("origin", "TEXT NOT NULL"), ("traffic", "TEXT NOT NULL"),
    ("callback_url", "TEXT"), ("client_ref", "TEXT"), ("service_type", "TEXT NOT NULL"),
    ("node", "TEXT"), ("lease_until", "DOUBLE PRECISION"),
    ("updated_at", "DOUBLE PRECISION NOT NULL"), ("replace_if_present", "INTEGER NOT NULL"),
]  # fmt: skip
OPEN = "state IN ('queued', 'in_flight', 'retry')"
DONE = "state IN ('delivered', 'failed', 'expired', 'cancelled')"
SCHEMA = [
    "DROP TABLE IF EXISTS bench_events",
    "DROP TABLE IF EXISTS bench_messages",
    "CREATE TABLE bench_messages ("
    + ", ".join(f"{name} {decl}" for name, decl in MESSAGE_COLUMNS) + ")",
    f"CREATE INDEX bench_messages_open ON bench_messages (expires_at) WHERE {OPEN}",
    f"CREATE INDEX bench_messages_done ON bench_messages (done_at) WHERE {DONE}",
    "CREATE TABLE bench_events (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
    "message_id TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, kind TEXT NOT NULL, "
    "from_state TEXT, to_state TEXT, detail TEXT)",
    "CREATE INDEX bench_events_message ON bench_events (message_id, id)",
]
UPDATE_COLUMNS = ["state", "attempts", "next_attempt_at", "error", "done_at", "connector",
                  "node", "lease_until", "updated_at"]
EVENT_COLUMNS = ["message_id", "at", "kind", "from_state", "to_state", "detail"]


def statements(mark: Callable[[int], str]) -> dict[str, str]:
    """The three statements with the driver's placeholders (``mark(1)`` is the first)."""
    names = [name for name, _ in MESSAGE_COLUMNS]
    sets = ", ".join(f"{c} = {mark(i + 1)}" for i, c in enumerate(UPDATE_COLUMNS))
    return {
        "insert": f"INSERT INTO bench_messages ({', '.join(names)}) VALUES "
        f"({', '.join(mark(i + 1) for i in range(len(names)))})",
        "update": f"UPDATE bench_messages SET {sets} WHERE id = {mark(len(UPDATE_COLUMNS) + 1)}",
        "event": f"INSERT INTO bench_events ({', '.join(EVENT_COLUMNS)}) VALUES "
        f"({', '.join(mark(i + 1) for i in range(len(EVENT_COLUMNS)))})",
    }


def message_row(i: int, now: float) -> Row:
    return (
        f"m{i:08d}-{os.urandom(6).hex()}", "bench", "SHOP", 5, 0, f"3361{i % 10**8:08d}", 1, 1,
        0, 0, 0, 0, 1, b"Your code is 123456. " * 3, now, now + 86400.0, now, "queued", 0, now,
        0, None, 1, "sms", None, b"\x14\x27\x00\x01\x01", "smpp", "alert", None, f"ref-{i}", "",
        None, None, now, 0,
    )  # fmt: skip


class Driver(Protocol):
    name: str
    thread_cpu: float  # CPU of a driver thread, if it has one, inside the measured work

    async def write(self, kind: str, rows: list[Row], events: list[Row]) -> None: ...
    async def backend_pid(self) -> int: ...
    async def close(self) -> None: ...


class PsycopgDriver:
    """A sync psycopg connection used from one worker thread at a time, reached from trio by
    trio.to_thread.run_sync (aiosqlite's model: the event loop never blocks on the socket).
    executemany() runs in pipeline mode: one round trip per statement's rows."""

    name = "psycopg"

    def __init__(self, conn: psycopg.Connection[Any], binary: bool = False) -> None:
        """``binary``: parameters in binary format (the variant `psycopg-binary`)."""
        self.conn, self.binary = conn, binary
        if binary:
            self.name = "psycopg-binary"
        self.sql = statements(lambda i: "%s")
        self.limiter = trio.CapacityLimiter(1)
        self.thread_cpu = 0.0

    @classmethod
    async def open(cls, dsn: str, binary: bool = False) -> PsycopgDriver:
        return cls(await trio.to_thread.run_sync(psycopg.connect, dsn), binary)

    async def _run(self, fn: Callable[[], Any]) -> Any:
        def timed() -> Any:
            t0 = time.thread_time()
            try:
                return fn()
            finally:
                self.thread_cpu += time.thread_time() - t0

        return await trio.to_thread.run_sync(timed, limiter=self.limiter)

    async def write(self, kind: str, rows: list[Row], events: list[Row]) -> None:
        def run() -> None:
            with self.conn.cursor(binary=self.binary) as cur:
                cur.executemany(self.sql[kind].encode(), rows)
                cur.executemany(self.sql["event"].encode(), events)
            self.conn.commit()

        await self._run(run)

    async def backend_pid(self) -> int:
        return int(self.conn.info.backend_pid)

    async def close(self) -> None:
        await trio.to_thread.run_sync(self.conn.close)


class AsyncpgDriver:
    """An asyncpg connection on the asyncio loop that trio-asyncio runs inside trio (the way
    the store hosts aiosqlite today): each call is loop.run_aio_coroutine(...)."""

    name = "asyncpg"

    def __init__(self, loop: Any, conn: Any) -> None:
        self.loop, self.conn = loop, conn
        self.sql = statements(lambda i: f"${i}")
        self.thread_cpu = 0.0

    @classmethod
    async def open(cls, dsn: str, loop: Any) -> AsyncpgDriver:
        import asyncpg

        return cls(loop, await loop.run_aio_coroutine(asyncpg.connect(dsn)))

    async def _aio(self, coro: Awaitable[Any]) -> Any:
        return await self.loop.run_aio_coroutine(coro)

    async def write(self, kind: str, rows: list[Row], events: list[Row]) -> None:
        async def run() -> None:
            async with self.conn.transaction():
                await self.conn.executemany(self.sql[kind], rows)
                await self.conn.executemany(self.sql["event"], events)

        await self._aio(run())

    async def backend_pid(self) -> int:
        return int(self.conn.get_server_pid())

    async def close(self) -> None:
        await self._aio(self.conn.close())


class NullDriver:
    """No database: a write is one trio checkpoint. The harness's own CPU per message (the
    submitters, the writer, trio), to subtract from the drivers' figures."""

    name = "null"
    thread_cpu = 0.0

    async def write(self, kind: str, rows: list[Row], events: list[Row]) -> None:
        await trio.lowlevel.checkpoint()

    async def backend_pid(self) -> int:
        return 0

    async def close(self) -> None:
        pass


class GroupCommit:
    """One writer task: takes up to ``batch`` queued (row, event) pairs, writes them in one
    transaction (one executemany per table), then wakes their submitters."""

    def __init__(self, driver: Driver, kind: str, batch: int) -> None:
        self.driver, self.kind, self.batch = driver, kind, batch
        self.pending: list[tuple[Row, Row, trio.Event]] = []
        self.wakeup = trio.Event()
        self.transactions = 0
        self.rows = 0

    async def submit(self, row: Row, event: Row) -> None:
        done = trio.Event()
        self.pending.append((row, event, done))
        self.wakeup.set()
        await done.wait()

    async def run(self) -> None:
        while True:
            if not self.pending:
                self.wakeup = trio.Event()
                await self.wakeup.wait()
            taken, self.pending = self.pending[: self.batch], self.pending[self.batch :]
            await self.driver.write(self.kind, [t[0] for t in taken], [t[1] for t in taken])
            self.transactions += 1
            self.rows += len(taken)
            for _, _, done in taken:
                done.set()


@dataclass
class Phase:
    messages: int = 0
    seconds: float = 0.0
    cpu: float = 0.0  # this process, all threads
    thread_cpu: float = 0.0  # of it, the driver's thread (psycopg)
    server_cpu: float | None = None
    transactions: int = 0
    rows: int = 0


@dataclass
class Run:
    driver: str
    index: int
    phases: dict[str, Phase] = field(default_factory=dict)


async def run_phase(driver: Driver, kind: str, units: list[list[tuple[Row, Row]]], tasks: int,
                    batch: int, cap: float, server_cpu: Callable[[], float | None]) -> Phase:
    """``tasks`` submitters share ``units`` (a message's steps, each committed before the
    next); stops taking new units after ``cap`` seconds."""
    writer = GroupCommit(driver, kind, batch)
    done = 0
    deadline = trio.current_time() + cap

    async def submitter(mine: list[list[tuple[Row, Row]]]) -> None:
        nonlocal done
        for steps in mine:
            if trio.current_time() > deadline:
                return
            for row, event in steps:
                await writer.submit(row, event)
            done += 1

    s0, th0 = server_cpu(), driver.thread_cpu
    c0, t0 = time.process_time(), time.perf_counter()
    async with trio.open_nursery() as outer:
        outer.start_soon(writer.run)
        async with trio.open_nursery() as inner:
            for i in range(tasks):
                inner.start_soon(submitter, units[i::tasks])
        outer.cancel_scope.cancel()
    t1, c1, s1 = time.perf_counter(), time.process_time(), server_cpu()
    return Phase(messages=done, seconds=t1 - t0, cpu=c1 - c0,
                 thread_cpu=driver.thread_cpu - th0,
                 server_cpu=None if s0 is None or s1 is None else s1 - s0,
                 transactions=writer.transactions, rows=writer.rows)


def postmaster_of(backend_pid: int) -> int | None:
    """The parent of a backend (the postmaster) if that server runs on this machine."""
    try:
        with open(f"/proc/{backend_pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def prepare(dsn: str) -> None:
    """Fresh tables, and a checkpoint so that a run does not pay for the previous one's dirty
    pages (outside the measured time; the checkpoint needs a superuser, skipped if refused)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in SCHEMA:
            conn.execute(statement.encode())
        with contextlib.suppress(psycopg.Error):
            conn.execute("CHECKPOINT")


async def one_run(driver: Driver, index: int, args: argparse.Namespace,
                  postmaster: int | None) -> Run:
    if postmaster is None:
        postmaster = postmaster_of(await driver.backend_pid())

    def server_cpu() -> float | None:
        return None if postmaster is None else tree_cpu_seconds(postmaster)

    now = time.time()
    rows = [message_row(i, now) for i in range(args.messages)]
    inserts = [[(r, (r[0], now, "accepted", None, "queued", "smpp"))] for r in rows]
    run = Run(driver.name, index)
    run.phases["insert"] = await run_phase(driver, "insert", inserts, args.tasks, args.batch,
                                           args.time_cap, server_cpu)
    done_ids = [r[0] for r in rows[: run.phases["insert"].messages]]
    # The dispatcher: submitted to an SMSC (in flight, leased by a node), then delivered.
    updates = [[(("in_flight", 1, now, 0, None, "smsc-a", "node-1", now + 60.0, now, mid),
                 (mid, now, "transition", "queued", "in_flight", "smsc-a")),
                (("delivered", 1, now, 0, now, "smsc-a", None, None, now, mid),
                 (mid, now, "transition", "in_flight", "delivered", "DELIVRD"))]
               for mid in done_ids]
    run.phases["dispatch"] = await run_phase(driver, "update", updates, args.tasks, args.batch,
                                             args.time_cap, server_cpu)
    return run


async def check(dsn: str, run: Run) -> None:
    """What the run committed is all there (outside the measured time)."""
    def count() -> tuple[int, int, int]:
        with psycopg.connect(dsn) as conn:
            m = conn.execute("SELECT count(*) FROM bench_messages").fetchone()
            d = conn.execute("SELECT count(*) FROM bench_messages "
                             "WHERE state = 'delivered'").fetchone()
            e = conn.execute("SELECT count(*) FROM bench_events").fetchone()
            assert m is not None and d is not None and e is not None
            return m[0], d[0], e[0]

    messages, delivered, events = await trio.to_thread.run_sync(count)
    ins, disp = run.phases["insert"].messages, run.phases["dispatch"].messages
    if (messages, delivered, events) != (ins, disp, ins + 2 * disp):
        raise RuntimeError(f"{run.driver} run {run.index}: committed {messages} messages, "
                           f"{delivered} delivered, {events} events; expected {ins}, {disp}, "
                           f"{ins + 2 * disp}")


@contextlib.asynccontextmanager
async def opened(name: str, dsn: str) -> AsyncIterator[Driver]:
    if name == "null":
        yield NullDriver()
    elif name in ("psycopg", "psycopg-binary"):
        driver: Driver = await PsycopgDriver.open(dsn, binary=name == "psycopg-binary")
        try:
            yield driver
        finally:
            await driver.close()
    else:
        async with trio_asyncio.open_loop() as loop:
            driver = await AsyncpgDriver.open(dsn, loop)
            try:
                yield driver
            finally:
                await driver.close()


def ms(x: float | None, n: int) -> str:
    return "n/a" if x is None else f"{x / max(n, 1) * 1000:.3f}"


def report(runs: list[Run]) -> None:
    head = ("| driver | run | messages | insert msg/s | dispatch msg/s | msg/s overall "
            "| Python CPU ms/msg (insert / dispatch / total) | of it, driver thread ms/msg "
            "| PostgreSQL CPU ms/msg | mean batch (insert / update) |")
    print(head)
    print("|" + " --- |" * head.count(" | ") + " --- |")
    for r in runs:
        ins, disp = r.phases["insert"], r.phases["dispatch"]
        n = disp.messages
        total_cpu = ins.cpu / max(ins.messages, 1) * n + disp.cpu  # per message of both
        server = (None if ins.server_cpu is None or disp.server_cpu is None
                  else ins.server_cpu + disp.server_cpu)
        threaded = r.driver.startswith("psycopg")
        thread = ms(ins.thread_cpu + disp.thread_cpu, n) if threaded else "-"
        print(f"| {r.driver} | {r.index} | {n:,} | {ins.messages / ins.seconds:,.0f} "
              f"| {n / disp.seconds:,.0f} | {n / (ins.seconds + disp.seconds):,.0f} "
              f"| {ms(ins.cpu, ins.messages)} / {ms(disp.cpu, n)} / {ms(total_cpu, n)} "
              f"| {thread} | {ms(server, n)} "
              f"| {ins.rows / max(ins.transactions, 1):.0f} "
              f"/ {disp.rows / max(disp.transactions, 1):.0f} |")
    print()
    medians: dict[str, float] = {}
    for name in dict.fromkeys(r.driver for r in runs):
        mine = [r for r in runs if r.driver == name]
        per_msg = [(r.phases["insert"].cpu / max(r.phases["insert"].messages, 1)
                    + r.phases["dispatch"].cpu / max(r.phases["dispatch"].messages, 1)) * 1000
                   for r in mine]
        rate = [r.phases["dispatch"].messages
                / (r.phases["insert"].seconds + r.phases["dispatch"].seconds) for r in mine]
        medians[name] = statistics.median(per_msg)
        print(f"{name}: median Python CPU {medians[name]:.3f} ms/msg "
              f"(range {min(per_msg):.3f}-{max(per_msg):.3f}), "
              f"median {statistics.median(rate):,.0f} msg/s overall (insert + two updates: "
              f"four rows written per message)")
    medians.pop("null", None)
    if len(medians) >= 2:
        (a, ca), (b, cb) = sorted(medians.items(), key=lambda kv: kv[1])[:2]
        print(f"lower gateway CPU per message: {a} ({ca:.3f} against {b}'s {cb:.3f} ms/msg, "
              f"{(1 - ca / cb) * 100:.0f} % less)")


async def bench(args: argparse.Namespace, dsn: str, postmaster: int | None) -> list[Run]:
    runs: list[Run] = []
    for index in range(1, args.runs + 1):
        for name in args.drivers:
            await trio.to_thread.run_sync(prepare, dsn)
            async with opened(name, dsn) as driver:
                run = await one_run(driver, index, args, postmaster)
            if name != "null":
                await check(dsn, run)
            ins, disp = run.phases["insert"], run.phases["dispatch"]
            print(f"  {name} run {index}: {disp.messages:,} messages in "
                  f"{ins.seconds + disp.seconds:.1f} s", file=sys.stderr)
            runs.append(run)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", help="an existing database (else a server of our own)")
    parser.add_argument("--messages", type=int, default=20_000, help="per driver and run")
    parser.add_argument("--tasks", type=int, default=200, help="concurrent submitters")
    parser.add_argument("--batch", type=int, default=512, help="rows per transaction at most")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--time-cap", type=float, default=120.0, help="seconds per phase")
    parser.add_argument("--drivers", default="psycopg,asyncpg",
                        help="of psycopg, asyncpg, psycopg-binary (binary parameters), null "
                        "(no database: the harness's own CPU)")
    args = parser.parse_args()
    args.drivers = args.drivers.split(",")
    print(f"psycopg {psycopg.__version__} ({psycopg.pq.__impl__} implementation, libpq "
          f"{psycopg.pq.version()}, pipeline "
          f"{'yes' if psycopg.Pipeline.is_supported() else 'no'}); "
          f"asyncpg {__import__('asyncpg').__version__}; trio {trio.__version__}, trio-asyncio "
          f"{trio_asyncio.__version__}; Python {sys.version.split()[0]}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{args.messages:,} messages per driver and run, {args.tasks} submitters, up to "
          f"{args.batch} rows a transaction, synchronous_commit on, fsync on\n")
    if args.dsn:
        runs = trio.run(bench, args, args.dsn, None)
    else:
        tmp = scratch_dir("smsgw-bench-pg-")
        server = PgServer()
        try:
            server.start(tmp / "data")  # fsync on, as in production
            dsn = server.create_database("bench")
            runs = trio.run(bench, args, dsn, server.pid)
        finally:
            server.stop()
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}\n")
    report(runs)


if __name__ == "__main__":
    main()
