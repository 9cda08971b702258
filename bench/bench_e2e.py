"""End-to-end benchmark: upstream SMPP sessions -> gateway -> SMSC simulator -> receipts back.

Starts `smsgw simulate-smsc` and `smsgw run` as separate processes on free 127.0.0.1 ports
(temporary configs and store; `--store postgresql`: the store in a fresh database on a throwaway
PostgreSQL server), drives K transceiver sessions each keeping W submit_sm outstanding with our
own trio Connection, and prints throughput, latency and CPU figures.
A script, not a test: exits 1 if an accepted message got no receipt, 2 if setup failed.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any

import httpx
import trio

from gateway.passwords import hash_password
from smpp.connection import Connection, ConnectionClosed, ResponseTimeout, WindowFull
from smpp.constants import CommandId, Status, Tag
from smpp.pdu import BindTransceiver, Pdu, SubmitSm, tlv_str
from smpp.session import SessionError, Side

ACCOUNT = "bench"
PASSWORD = "benchpw"


class SetupError(Exception):
    """The simulator or the gateway did not come up."""


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def smsgw_command() -> list[str]:
    script = Path(sys.executable).parent / "smsgw"
    if script.exists():
        return [str(script)]
    found = shutil.which("smsgw")
    return [found] if found else [sys.executable, "-m", "gateway.cli"]


def q(value: str) -> str:
    """A TOML basic string (JSON escaping is a subset TOML accepts)."""
    return json.dumps(value)


@dataclass
class Ports:
    gateway: int = field(default_factory=free_port)
    sim: int = field(default_factory=free_port)
    sim_control: int = field(default_factory=free_port)


def write_simulator_config(tmp: Path, ports: Ports, *, window: int = 10,
                           receipt_delay: float = 0.05, peer: str = "batching") -> Path:
    """The simulator's config (every receipt DELIVRD) on the bench's ports; its path.
    `peer`: "batching" or "independent" (every PDU in a send of its own)."""
    sim = tmp / "simulator.toml"
    sim.write_text(f"""\
[simulator]
host = "127.0.0.1"
port = {ports.sim}
system_id = "sim"
password = "simpass"
control_host = "127.0.0.1"
control_port = {ports.sim_control}
window = {window}
receipt_delay = {receipt_delay}
delivered = 1.0
seed = 1
peer = {q(peer)}
""")
    return sim


def store_config(tmp: Path, synchronous: str, dsn: str | None = None, *, shared: bool = False,
                 admin: str = "admin.sock") -> str:
    """The [store] table (and [admin] with a PostgreSQL store: no store directory for its
    socket): SQLite in `tmp`, or the database at `dsn` (`shared`: several nodes on it)."""
    if dsn is not None:
        return f"""\
[store]
backend = "postgresql"
dsn = {q(dsn)}
synchronous = {q(synchronous)}
{"shared = true" if shared else ""}

[admin]
socket = {q(str(tmp / admin))}
"""
    return f"""\
[store]
path = {q(str(tmp / "store" / "smsgw.sqlite3"))}
synchronous = {q(synchronous)}
"""


def gateway_config(path: Path, *, node: str, log_level: str, store: str, port: int,
                   window: int, sim_port: int, args: argparse.Namespace, password_hash: str,
                   http: str = "", smsc: str = "") -> Path:
    """A gateway's configuration at `path`: one listener, the bench account, the simulator as
    its one SMSC (`http`, `smsc`: more keys for those tables)."""
    path.write_text(f"""\
[gateway]
node = {q(node)}
log_level = {q(log_level)}

{store}
[http]
enabled = false
{http}
[[listener]]
host = "127.0.0.1"
port = {port}
window = {window}

[[account]]
system_id = {q(ACCOUNT)}
password_hash = {q(password_hash)}
max_binds = {max(args.sessions, 1)}
throughput = 0

[[smsc]]
name = "sim"
host = "127.0.0.1"
port = {sim_port}
system_id = "sim"
password = "simpass"
bind_mode = "transceiver"
binds = {args.smsc_binds}
window = {args.smsc_window}
{smsc}
[[route]]
name = "default"
smscs = ["sim"]
""")
    return path


def write_configs(tmp: Path, ports: Ports, args: argparse.Namespace) -> tuple[Path, Path]:
    sim = write_simulator_config(tmp, ports, window=args.smsc_window,
                                 receipt_delay=args.receipt_delay,
                                 peer="independent" if args.independent else "batching")
    dsn = args.store_dsn if getattr(args, "store", "sqlite") == "postgresql" else None
    gw = gateway_config(tmp / "gateway.toml", node="bench", log_level=args.log_level,
                        store=store_config(tmp, args.synchronous, dsn), port=ports.gateway,
                        window=args.deliver_window, sim_port=ports.sim, args=args,
                        password_hash=hash_password(PASSWORD))
    return gw, sim


def start(cmd: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)


def stop(proc: subprocess.Popen[bytes] | None, deadline: float = 15.0) -> None:
    """SIGTERM by PID, then SIGKILL if it has not exited by the deadline."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=deadline)
    except subprocess.TimeoutExpired:
        print(f"warning: pid {proc.pid} ignored SIGTERM for {deadline:.0f} s: SIGKILL",
              file=sys.stderr)
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def exited_early(proc: subprocess.Popen[bytes], log: Path, status: int) -> int:
    """`status`, or 1 if the gateway process has exited meanwhile (its log's tail printed)."""
    if proc.poll() is None:
        return status
    print(f"gateway exited early ({proc.returncode}):\n{tail(log)}", file=sys.stderr)
    return status or 1


def clean_up(procs: Iterable[subprocess.Popen[bytes] | None], tmp: Path, keep: bool) -> None:
    """Stop the processes (by PID); remove the temporary directory unless asked to keep it."""
    for proc in procs:
        stop(proc)
    if keep:
        print(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def sim_stats(port: int) -> dict[str, object]:
    response = httpx.get(f"http://127.0.0.1:{port}/stats", timeout=5.0)
    response.raise_for_status()
    stats: dict[str, object] = response.json()
    return stats


def wait_ready(name: str, proc: subprocess.Popen[bytes], log: Path,
               ready: Callable[[], object], deadline: float) -> None:
    """Poll `ready()` until true; fail if the process exits or the deadline passes."""
    end = time.monotonic() + deadline
    while True:
        if proc.poll() is not None:
            raise SetupError(f"{name} exited with {proc.returncode}:\n{tail(log)}")
        with contextlib.suppress(OSError, httpx.HTTPError, ValueError):
            if ready():
                return
        if time.monotonic() > end:
            raise SetupError(f"{name} not ready after {deadline:.0f} s:\n{tail(log)}")
        time.sleep(0.05)


def tcp_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True


def proc_status(pid: int, key: str) -> str:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return line.split(":", 1)[1].strip()
    return "?"


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far (NaN if unreadable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class PgStore:
    """The database of a `--store postgresql` run: on a throwaway server of our own (fsync on,
    in a scratch directory) or, given `--dsn`, on that server; a fresh database either way.
    cpu(): the server's CPU seconds so far (NaN when it does not run on this machine)."""

    def __init__(self, dsn: str | None) -> None:
        self.given = dsn
        self.name = f"smsgw_bench_{os.getpid()}_{int(time.time())}"
        self.dsn = ""
        self.scratch: Path | None = None
        self.server: Any = None  # tests.pgserver.PgServer, imported only for this store
        self.postmaster: int | None = None
        self.created = False

    def open(self) -> None:
        """Start the server (or reach --dsn's), create the database; SetupError if not."""
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        import psycopg

        from tests.pgserver import PgFailed, PgNotFound, PgServer, scratch_dir

        try:
            if self.given is None:
                self.scratch = scratch_dir("smsgw-bench-pg-")
                self.server = PgServer()
                self.server.start(self.scratch / "data")  # fsync on, as in production
                self.dsn = self.server.create_database(self.name)
                self.postmaster = self.server.pid
            else:
                with psycopg.connect(self.given, autocommit=True) as conn:
                    conn.execute(f'CREATE DATABASE "{self.name}"'.encode())
                    self.created = True
                    row = conn.execute("SELECT pg_backend_pid()").fetchone()
                url = urllib.parse.urlsplit(self.given)
                self.dsn = urllib.parse.urlunsplit(url._replace(path="/" + self.name))
                if url.hostname in (None, "", "127.0.0.1", "localhost", "::1") and row:
                    self.postmaster = local_postmaster(int(row[0]))
            # Not to pay for earlier dirty pages in the run (needs a superuser: else skipped).
            with psycopg.connect(self.dsn, autocommit=True) as conn, \
                    contextlib.suppress(psycopg.Error):
                conn.execute("CHECKPOINT")
        except (PgFailed, PgNotFound, psycopg.Error, OSError) as exc:
            raise SetupError(f"PostgreSQL: {exc}") from exc

    def where(self) -> str:
        return (f"own server, pid {self.postmaster}, fsync on" if self.given is None
                else "server at --dsn" + ("" if self.postmaster else ", its CPU not measured"))

    def cpu(self) -> float:
        if self.postmaster is None:
            return math.nan
        from tests.pgserver import tree_cpu_seconds

        return float(tree_cpu_seconds(self.postmaster))

    def close(self, keep: bool) -> None:
        """Stop our server and remove its directory (kept with --keep), or drop the database
        created at --dsn."""
        if self.server is not None:
            self.server.stop()
        if self.scratch is not None:
            if keep:
                print(f"kept {self.scratch} (PostgreSQL data, server stopped)")
            else:
                shutil.rmtree(self.scratch, ignore_errors=True)
        if self.created and keep:
            print(f"kept database {self.name}")
        elif self.created:
            import psycopg

            try:
                with psycopg.connect(self.given or "", autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'.encode())
            except psycopg.Error as exc:
                print(f"warning: could not drop database {self.name}: {exc}", file=sys.stderr)


def local_postmaster(backend_pid: int) -> int | None:
    """The postmaster (parent) of a backend, if that is a postgres process of this machine."""
    try:
        ppid = int(Path(f"/proc/{backend_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        name = Path(f"/proc/{ppid}/cmdline").read_bytes().split(b"\0")[0]
    except (OSError, IndexError, ValueError):
        return None
    return ppid if name.endswith(b"postgres") else None


# --------------------------------------------------------------------------- load generator


@dataclass
class Results:
    total: int
    sent_at: dict[str, float] = field(default_factory=dict)  # message id -> submit sent
    receipt_at: dict[str, float] = field(default_factory=dict)  # message id -> receipt in
    submit_latency: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    receipts_unknown: int = 0
    matched: int = 0  # accepted messages whose receipt has arrived
    submitted: int = 0  # submit_sm answered (any status)
    t_start: float = 0.0
    t_submit_done: float = 0.0
    t_receipts_done: float = 0.0
    timed_out: bool = False
    all_in: trio.Event = field(default_factory=trio.Event)
    submit_done: bool = False

    def count_submitted(self) -> None:
        """One more submit_sm answered (or failed); the submission phase ends at `total`."""
        self.submitted += 1
        if self.submitted >= self.total and not self.submit_done:
            self.t_submit_done = time.perf_counter()
            self.submit_done = True
            self.check_done()

    def check_done(self) -> None:
        if self.submit_done and self.matched == len(self.sent_at) and not self.all_in.is_set():
            self.t_receipts_done = time.perf_counter()
            self.all_in.set()


def make_submit(n: int) -> SubmitSm:
    return SubmitSm(
        source_addr_ton=5, source_addr_npi=0, source_addr="BENCH",
        dest_addr_ton=1, dest_addr_npi=1, destination_addr=f"3361{n % 10_000_000:07d}",
        registered_delivery=1, short_message=b"Bench message %08d" % n,
    )  # fmt: skip


async def run_session(port: int, window: int, counter: itertools.count[int], res: Results,
                      bound: trio.Event, go: trio.Event, rate: float = 0.0, *,
                      coalesce: bool = True,
                      credentials: tuple[str, str] = (ACCOUNT, PASSWORD)) -> None:
    """One upstream transceiver: keeps `window` submit_sm outstanding, answers deliver_sm.

    No task or event per PDU: each submit_sm_resp (or error) arrives in a callback that sends
    the next submit_sm, and the deliver_sm of one socket read are answered in one batch.
    With a rate (submit_sm/s for this session), a pacer sends instead, never beyond the
    window: if the gateway cannot keep up, the session falls behind the offered rate.
    coalesce=False: every submit_sm and deliver_sm_resp in a send of its own.
    """
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = Connection(stream, Side.ESME, window=window + 1, response_timeout=30.0,
                      enquire_link_interval=math.inf, coalesce=coalesce)

    async def on_request(conn: Connection, pdu: Pdu) -> None:
        conn.respond(pdu.response(status=Status.ESME_RINVCMDID))

    async def on_delivers(conn: Connection, pdus: list[Pdu]) -> None:
        now = time.perf_counter()
        receipt_at, sent_at = res.receipt_at, res.sent_at
        for pdu in pdus:
            conn.respond(pdu.response())
            msg_id = tlv_str(pdu, Tag.RECEIPTED_MESSAGE_ID)
            if msg_id is None:
                res.receipts_unknown += 1
                continue
            if msg_id in receipt_at:
                res.duplicates += 1
                continue
            receipt_at[msg_id] = now
            if msg_id in sent_at:
                res.matched += 1
        res.check_done()

    def submit_next() -> None:
        """Send the next submit_sm, if any is left (a failure to send counts as answered)."""
        n = next(counter)
        if n >= res.total:
            return
        t0 = time.perf_counter()
        try:
            conn.send_request(make_submit(n), partial(on_submit_resp, t0))
        except (ConnectionClosed, SessionError, WindowFull) as exc:
            res.errors[type(exc).__name__] += 1
            res.count_submitted()

    def on_submit_resp(t0: float, resp: Pdu | None, error: Exception | None) -> None:
        res.count_submitted()
        if resp is None:
            assert error is not None
            res.errors[type(error).__name__] += 1
            if isinstance(error, ResponseTimeout):
                submit_next()
            return  # the connection is gone: this slot stops
        if resp.status != Status.ESME_ROK:
            try:
                res.errors[Status(resp.status).name] += 1
            except ValueError:
                res.errors[f"0x{resp.status:08X}"] += 1
        else:
            res.submit_latency.append(time.perf_counter() - t0)
            msg_id: str = getattr(resp, "message_id", "")
            res.sent_at[msg_id] = t0
            if msg_id in res.receipt_at:
                res.matched += 1
        if not rate:
            submit_next()

    async def pace() -> None:
        """Send at `rate` per second (checked every 5 ms), as far as the window allows."""
        start, sent = time.perf_counter(), 0
        while not res.all_in.is_set():
            due = int((time.perf_counter() - start) * rate) - sent
            for _ in range(min(due, conn.free_slots())):
                submit_next()
                sent += 1
            await trio.sleep(0.005)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(conn.run, on_request, batch_handler=on_delivers,
                                   batch_commands=frozenset({CommandId.DELIVER_SM})))
        bind = await conn.request(BindTransceiver(system_id=credentials[0],
                                                  password=credentials[1],
                                                  interface_version=0x34))
        if bind.status != Status.ESME_ROK:
            raise SetupError(f"bind refused: 0x{bind.status:08X}")
        bound.set()
        await go.wait()
        if rate:
            nursery.start_soon(pace)
        else:
            for _ in range(window):
                submit_next()
        await res.all_in.wait()  # keep answering deliver_sm until every receipt is in
        await conn.unbind()


async def load(port: int | Sequence[int], args: argparse.Namespace, res: Results,
               credentials: tuple[str, str] = (ACCOUNT, PASSWORD)) -> None:
    """args.sessions sessions against `port`; given several ports, session i goes to
    port i mod their number (several gateway processes, each on its own port)."""
    ports = [port] if isinstance(port, int) else list(port)
    counter = itertools.count()
    binds = [trio.Event() for _ in range(args.sessions)]
    go = trio.Event()

    async def progress() -> None:
        """Once a second: where the messages are (upstream, simulator, receipts back)."""
        while True:
            await trio.sleep(1.0)
            try:
                st = await trio.to_thread.run_sync(sim_stats, args.control_port)
            except (OSError, httpx.HTTPError):
                st = {}
            print(f"  t={time.perf_counter() - res.t_start:5.1f}s accepted {len(res.sent_at):,} "
                  f"sim submits {st.get('submits')} receipts sent {st.get('receipts_sent')} "
                  f"queued {st.get('queued')}; receipts back {len(res.receipt_at):,}",
                  flush=True)

    with trio.move_on_after(args.duration_cap) as cap:
        async with trio.open_nursery() as outer:
            async with trio.open_nursery() as nursery:
                for i in range(args.sessions):
                    nursery.start_soon(partial(
                        run_session, ports[i % len(ports)], args.window, counter, res, binds[i], go,
                        args.rate / args.sessions, coalesce=not args.independent,
                        credentials=credentials))
                for ev in binds:
                    await ev.wait()
                res.t_start = time.perf_counter()
                go.set()
                if args.progress:
                    outer.start_soon(progress)
            outer.cancel_scope.cancel()  # the sessions are done: stop the progress task
    res.timed_out = cap.cancelled_caught
    if not res.t_submit_done:
        res.t_submit_done = time.perf_counter()


# --------------------------------------------------------------------------- report


def pct(values: list[float], p: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def report(res: Results, args: argparse.Namespace, gw_pid: int, sim_pid: int,
           stats: dict[str, object], cpu: dict[str, float]) -> int:
    accepted = len(res.sent_at)
    submit_wall = max(res.t_submit_done - res.t_start, 1e-9)
    end = res.t_receipts_done or time.perf_counter()
    e2e_wall = max(end - res.t_start, 1e-9)
    receipt_lat = [res.receipt_at[m] - t for m, t in res.sent_at.items() if m in res.receipt_at]
    missing = accepted - len(receipt_lat)
    ms = 1000.0
    offered = f"offered {args.rate:,.0f} msg/s" if args.rate else "closed loop"
    pg = "postgresql" in cpu
    store = (f"store on PostgreSQL ({args.pg_where}; synchronous={args.synchronous}: "
             f"synchronous_commit={'on' if args.synchronous == 'full' else 'off'})" if pg
             else f"store on disk (WAL, synchronous={args.synchronous})")
    print(f"setup: {args.messages:,} messages, {args.sessions} sessions x window {args.window} "
          f"({offered}); smsc binds {args.smsc_binds} window {args.smsc_window} (simulator "
          f"deliver_sm window the same); receipt_delay {args.receipt_delay} s; {store}; peers "
          f"{'independent (one PDU per send)' if args.independent else 'batching'}")
    print(f"accepted: {accepted / submit_wall:,.0f} msg/s ({accepted:,} submit_sm_resp OK in "
          f"{submit_wall:.2f} s)")
    e2e_rate = (accepted - missing) / e2e_wall
    print(f"e2e: {e2e_rate:,.0f} msg/s with receipts ({accepted - missing:,} receipts in "
          f"{e2e_wall:.2f} s); submit p50 {pct(res.submit_latency, 50) * ms:.1f} ms "
          f"p99 {pct(res.submit_latency, 99) * ms:.1f} ms; receipt p50 "
          f"{pct(receipt_lat, 50) * ms:.1f} ms p99 {pct(receipt_lat, 99) * ms:.1f} ms")
    errors = ", ".join(f"{k} {v:,}" for k, v in res.errors.most_common()) or "none"
    print(f"errors: {errors}; duplicate receipts {res.duplicates}; receipts for unknown ids "
          f"{res.receipts_unknown}; missing receipts {missing:,}"
          + ("; HIT DURATION CAP" if res.timed_out else ""))
    print(f"gateway: peak RSS {proc_status(gw_pid, 'VmHWM')}, CPU {cpu['gateway']:.1f} s; "
          f"simulator: peak RSS {proc_status(sim_pid, 'VmHWM')}, CPU {cpu['simulator']:.1f} s; "
          f"load generator CPU {cpu['loadgen']:.1f} s"
          + (f"; PostgreSQL CPU {cpu['postgresql']:.1f} s" if pg else "")
          + f" (2 cores shared; wall {e2e_wall:.1f} s)")
    names = ("gateway", "simulator", "loadgen", *(("postgresql",) if pg else ()))
    per_msg = ", ".join(f"{name} {cpu[name] / max(accepted, 1) * ms:.3f} ms" for name in names)
    if pg:
        both = (cpu["gateway"] + cpu["postgresql"]) / max(accepted, 1) * ms
        per_msg += f"; gateway + PostgreSQL {both:.3f} ms"
    print(f"CPU per accepted message: {per_msg}")
    keys = ("submits", "accepted", "throttled", "errors", "receipts_scheduled", "receipts_sent",
            "deliver_retried", "deliver_abandoned", "queued", "bound_sessions")
    print("simulator /stats: " + ", ".join(f"{k} {stats.get(k)}" for k in keys if k in stats))
    p99_ok = pct(res.submit_latency, 99) < 0.050
    if args.rate:  # kept up with the offered load: everything in, receipts only a tail behind
        kept_up = accepted / submit_wall >= 0.98 * args.rate and e2e_rate >= 0.97 * args.rate
        target_ok = args.rate >= 3000 and kept_up and p99_ok
        print(f"kept up with the offered {args.rate:,.0f} msg/s: {'yes' if kept_up else 'NO'}")
    else:
        target_ok = e2e_rate >= 3000 and p99_ok
    print(f"target (>= 3,000 msg/s e2e, submit p99 < 50 ms): {'MET' if target_ok else 'NOT met'}")
    if missing or res.timed_out:
        print(f"FAIL: {missing:,} of {accepted:,} accepted messages got no receipt",
              file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", "-n", type=int, default=30_000)
    p.add_argument("--sessions", "-k", type=int, default=4)
    p.add_argument("--window", "-w", type=int, default=20, help="submit_sm outstanding/session")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning"],
                   help="gateway log level (info: one JSON line per message state change)")
    p.add_argument("--rate", type=float, default=0.0,
                   help="offered submit_sm/s over all sessions (0: as fast as the windows allow)")
    p.add_argument("--duration-cap", type=float, default=120.0, help="hard cap, seconds")
    p.add_argument("--smsc-binds", type=int, default=4)
    p.add_argument("--smsc-window", type=int, default=50)
    p.add_argument("--receipt-delay", type=float, default=0.05, help="simulator, 0-0.1 s")
    p.add_argument("--deliver-window", type=int, default=64, help="gateway listener window")
    p.add_argument("--synchronous", default="full", choices=["full", "normal"],
                   help="[store] synchronous: full fsyncs every group commit")
    p.add_argument("--store", default="sqlite", choices=["sqlite", "postgresql"],
                   help="[store] backend; postgresql: a fresh database on a throwaway server "
                        "of our own (fsync on), or on the server at --dsn")
    p.add_argument("--dsn", help="with --store postgresql: a server to create the database on "
                                 "(postgresql://user@host:port/db, a role that may CREATE "
                                 "DATABASE) instead of our own")
    p.add_argument("--independent", action="store_true",
                   help="no batching by the peers: the simulator (peer = \"independent\") and the "
                        "load generator write every PDU in a send of their own")
    p.add_argument("--progress", action="store_true", help="print progress once a second")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    args = p.parse_args(argv)
    if args.dsn is not None and args.store != "postgresql":
        p.error("--dsn goes with --store postgresql")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="smsgw-bench-"))
    ports = Ports()
    args.control_port = ports.sim_control
    sim_log, gw_log = tmp / "simulator.log", tmp / "gateway.log"
    sim = gw = None
    pg = PgStore(args.dsn) if args.store == "postgresql" else None
    try:
        if pg is not None:
            pg.open()
            args.store_dsn, args.pg_where = pg.dsn, pg.where()
        gw_conf, sim_conf = write_configs(tmp, ports, args)
        with sim_log.open("wb") as slog, gw_log.open("wb") as glog:
            sim = start([*smsgw_command(), "simulate-smsc", "--config", str(sim_conf)], slog)
            wait_ready("simulator", sim, sim_log, lambda: sim_stats(ports.sim_control), 20)
            gw = start([*smsgw_command(), "run", "--config", str(gw_conf)], glog)

            def gateway_ready() -> bool:
                binds = sim_stats(ports.sim_control).get("bound_sessions", 0)
                return tcp_open(ports.gateway) and isinstance(binds, int) \
                    and binds >= args.smsc_binds

            wait_ready("gateway", gw, gw_log, gateway_ready, 30)
            cpu0 = {"gateway": proc_cpu(gw.pid), "simulator": proc_cpu(sim.pid),
                    "loadgen": time.process_time()}
            if pg is not None:
                cpu0["postgresql"] = pg.cpu()
            res = Results(total=args.messages)
            trio.run(load, ports.gateway, args, res)
            cpu = {"gateway": proc_cpu(gw.pid) - cpu0["gateway"],
                   "simulator": proc_cpu(sim.pid) - cpu0["simulator"],
                   "loadgen": time.process_time() - cpu0["loadgen"]}
            if pg is not None:
                cpu["postgresql"] = pg.cpu() - cpu0["postgresql"]
            stats = sim_stats(ports.sim_control)
            status = report(res, args, gw.pid, sim.pid, stats, cpu)
            return exited_early(gw, gw_log, status)
    except SetupError as exc:
        print(f"setup failed: {exc}", file=sys.stderr)
        return 2
    finally:
        clean_up((gw, sim), tmp, args.keep)
        if pg is not None:
            pg.close(args.keep)


if __name__ == "__main__":
    sys.exit(main())
