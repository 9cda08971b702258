"""Bind-flood benchmark: legitimate binds while a bad-password flood hits the same system_id.

Starts `smsgw run` as a process on a free 127.0.0.1 port (temporary config and store), keeps
F bad-password binds in flight from 127.0.0.2 (127.0.0.2-127.0.0.N with --sources) against
the account "victim", and meanwhile binds from 127.0.0.1: "victim" itself (its first bind runs
scrypt, the next ones are cached reconnects) and one fresh account per round (scrypt each
time). Prints the legitimate bind latencies, guesses answered per second, scrypt runs, and the
gateway's peak RSS and CPU. A script, not a test: exits 1 if a legitimate bind was refused or
failed, 2 if setup failed. Bounded: the flood lasts --duration seconds.
"""

from __future__ import annotations

import argparse
import secrets
import socket
import struct
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trio
from bench_e2e import (
    SetupError,
    clean_up,
    exited_early,
    free_port,
    proc_cpu,
    proc_status,
    q,
    smsgw_command,
    start,
    tcp_open,
    wait_ready,
)

from gateway.config import ListenerConfig
from gateway.passwords import hash_password
from smpp.constants import Status
from smpp.pdu import BindTransceiver, Unbind, encode

LEGIT_SOURCE = "127.0.0.1"
VICTIM, VICTIM_PASSWORD = "victim", "victimpw"


def customer(i: int) -> tuple[str, str]:
    return f"customer{i}", f"cust{i}pw"


def write_config(tmp: Path, port: int, metrics_port: int, args: argparse.Namespace) -> Path:
    accounts = [(VICTIM, VICTIM_PASSWORD)] + [customer(i) for i in range(1, args.rounds + 1)]
    blocks = "".join(f"""
[[account]]
system_id = {q(name)}
password_hash = {q(hash_password(password))}
max_binds = 4
""" for name, password in accounts)
    auth = "".join(f"{key} = {value}\n" for key, value in (
        ("auth_lockout_threshold", args.lockout_threshold),
        ("auth_concurrency", args.concurrency)) if value is not None)
    fields = ListenerConfig.__dataclass_fields__
    if "max_connections_per_address" in fields and not args.default_limits:
        # where the gateway limits connections per address, let the whole flood reach the bind
        # decisions (that is what this measures), with room for the legitimate client
        auth += f"max_connections_per_address = {args.flood + 50}\n"
        auth += f"max_connections = {args.flood + 100}\n"
        if "max_unbound_per_address" in fields:
            auth += f"max_unbound_per_address = {args.flood + 50}\n"
            auth += f"max_unbound_connections = {args.flood + 100}\n"
    path = tmp / "gateway.toml"
    path.write_text(f"""\
[gateway]
node = "bench"
log_level = {q(args.log_level)}

[store]
path = {q(str(tmp / "store" / "smsgw.sqlite3"))}

[http]
host = "127.0.0.1"
port = {metrics_port}

[[listener]]
host = "127.0.0.1"
port = {port}
{auth}{blocks}
# an smsc and a route are required; nothing listens there (no message is sent in this benchmark)
[[smsc]]
name = "none"
host = "127.0.0.1"
port = {free_port()}
system_id = "none"
password = "none"
reconnect_delay = "10s"
reconnect_delay_max = "60s"

[[route]]
name = "default"
smscs = ["none"]
""")
    return path


# --------------------------------------------------------------------------- SMPP, minimal


async def bind_once(port: int, source: str, system_id: str, password: str,
                    timeout: float) -> int:
    """Connect from `source`, bind_transceiver, return the bind_resp status (an accepted bind
    is unbound again). Raises OSError / trio.TooSlowError / trio.BrokenResourceError on
    connection trouble (e.g. the gateway closing a locked-out peer to make room)."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with trio.fail_after(timeout):
        try:
            await sock.bind((source, 0))
            await sock.connect(("127.0.0.1", port))
            stream = trio.SocketStream(sock)
        except BaseException:
            sock.close()
            raise
        async with stream:
            await stream.send_all(encode(BindTransceiver(1, system_id=system_id,
                                                         password=password)))
            status = (await read_header(stream))[2]
            if status == Status.ESME_ROK:
                await stream.send_all(encode(Unbind(2)))
                await read_header(stream)
    return status


async def read_header(stream: trio.SocketStream) -> tuple[int, int, int, int]:
    """Read one PDU; returns its header (length, command_id, status, sequence)."""
    buf = bytearray()
    need = 16
    while len(buf) < need:
        data = await stream.receive_some(65536)
        if not data:
            raise OSError("connection closed by the gateway")
        buf += data
        if len(buf) >= 16:
            need = struct.unpack(">I", buf[:4])[0]
    length, command_id, status, sequence = struct.unpack(">IIII", buf[:16])
    return length, command_id, status, sequence


# --------------------------------------------------------------------------- the run


@dataclass
class Results:
    answers: Counter[str] = field(default_factory=Counter)  # flood answers by status name
    in_window: int = 0  # flood answers received before the flood's deadline
    flood_errors: Counter[str] = field(default_factory=Counter)
    first: list[tuple[str, float]] = field(default_factory=list)  # (account, s): scrypt ran
    cached: list[tuple[str, float]] = field(default_factory=list)  # (account, s): reconnects
    legit_failures: list[str] = field(default_factory=list)
    flood_wall: float = 0.0
    loadgen_cpu: float = 0.0  # CPU seconds of this process during the run


async def flood_worker(port: int, source: str, deadline: float, res: Results) -> None:
    while trio.current_time() < deadline:
        guess = secrets.token_hex(4)  # 8 characters, like an SMPP password
        try:
            status = await bind_once(port, source, VICTIM, guess, timeout=60)
        except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            res.flood_errors[type(exc).__name__] += 1
            await trio.sleep(0.1)
            continue
        if trio.current_time() <= deadline:
            res.in_window += 1
        try:
            res.answers[Status(status).name] += 1
        except ValueError:
            res.answers[f"0x{status:08X}"] += 1


async def legit(port: int, system_id: str, password: str, into: list[tuple[str, float]],
                res: Results) -> None:
    t0 = time.perf_counter()
    try:
        status = await bind_once(port, LEGIT_SOURCE, system_id, password, timeout=60)
    except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
        res.legit_failures.append(f"{system_id}: {type(exc).__name__} {exc}")
        return
    if status != Status.ESME_ROK:
        res.legit_failures.append(f"{system_id}: status 0x{status:08X}")
        return
    into.append((system_id, time.perf_counter() - t0))


async def run(port: int, args: argparse.Namespace, res: Results) -> None:
    start_at = trio.current_time()
    deadline = start_at + args.duration
    sources = [f"127.0.0.{2 + i}" for i in range(args.sources)]
    async with trio.open_nursery() as nursery:
        for i in range(args.flood):
            nursery.start_soon(flood_worker, port, sources[i % len(sources)], deadline, res)
        await trio.sleep(args.warmup)  # the flood is in full swing
        for i in range(1, args.rounds + 1):
            # the attacked system_id itself: first bind runs scrypt, then cached reconnects
            await legit(port, VICTIM, VICTIM_PASSWORD, res.first if i == 1 else res.cached, res)
            await legit(port, *customer(i), res.first, res)  # a fresh account: scrypt
            await trio.sleep_until(min(deadline, trio.current_time() + args.interval))
    res.flood_wall = trio.current_time() - start_at


def scrape(metrics_port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    wanted = ('smsgw_bind_verifications_total{how="run"}',
              'smsgw_bind_verifications_total{how="cached"}', "smsgw_bind_lockouts_total")
    found: dict[str, float] = {}
    for line in text.splitlines():
        for name in wanted:
            if line.startswith(name + " "):
                found[name] = float(line.split()[-1])
    return found


def report(res: Results, args: argparse.Namespace, pid: int, cpu: float, rss_before: str,
           counters: dict[str, float]) -> int:
    print(f"flood: {args.flood} bad binds in flight from {args.sources} address(es) for "
          f"{args.duration:.0f} s: {res.in_window / args.duration:.0f} answered/s; in all "
          f"{dict(res.answers)} (the last after {res.flood_wall:.1f} s); connection errors "
          f"{dict(res.flood_errors) or 0}")
    runs = counters.get('smsgw_bind_verifications_total{how="run"}', float("nan"))
    cached = counters.get('smsgw_bind_verifications_total{how="cached"}', float("nan"))
    lockouts = counters.get("smsgw_bind_lockouts_total", float("nan"))
    print(f"gateway: scrypt runs {runs:.0f}, cached verifications {cached:.0f}, lockouts "
          f"{lockouts:.0f}; RSS before {rss_before}, peak RSS {proc_status(pid, 'VmHWM')}; "
          f"CPU {cpu:.1f} s over {res.flood_wall:.1f} s ({cpu / res.flood_wall * 100:.0f} % "
          f"of a core); this load generator: CPU {res.loadgen_cpu:.1f} s (2 cores shared)")

    def show(rows: list[tuple[str, float]]) -> str:
        return ", ".join(f"{name} {s * 1000:.0f} ms" for name, s in rows) or "none"

    print(f"legitimate first binds (scrypt), from {LEGIT_SOURCE}: {show(res.first)}")
    print(f"legitimate cached reconnects: {show(res.cached)}")
    worst = max((s for _, s in res.first + res.cached), default=float("nan"))
    if res.legit_failures:
        print("LEGITIMATE BINDS FAILED: " + "; ".join(res.legit_failures))
        return 1
    print(f"slowest legitimate bind {worst * 1000:.0f} ms: target (< 2 s) "
          f"{'met' if worst < 2.0 else 'NOT met'}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flood", type=int, default=300, help="bad binds kept in flight")
    p.add_argument("--sources", type=int, default=1, help="attacking addresses (127.0.0.2..)")
    p.add_argument("--duration", type=float, default=20.0, help="flood length, seconds")
    p.add_argument("--warmup", type=float, default=2.0, help="flood time before legit binds")
    p.add_argument("--rounds", type=int, default=5, help="legitimate bind rounds")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between rounds")
    p.add_argument("--lockout-threshold", type=int, default=None,
                   help="auth_lockout_threshold (default: the gateway's)")
    p.add_argument("--concurrency", type=int, default=None,
                   help="auth_concurrency (default: the gateway's)")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning"])
    p.add_argument("--default-limits", action="store_true",
                   help="keep the listener's connection limits at their defaults (most of a "
                        "one-address flood is then refused at accept)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (config, log)")
    args = p.parse_args(argv)
    if not 1 <= args.sources <= 250 or args.flood < 1 \
            or args.duration < args.warmup + args.rounds * args.interval:
        p.error("need 1-250 sources, a flood of at least 1, and a duration of at least "
                "warmup + rounds x interval (the legitimate binds happen during the flood)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="smsgw-bindflood-"))
    port, metrics_port = free_port(), free_port()
    conf = write_config(tmp, port, metrics_port, args)
    gw_log = tmp / "gateway.log"
    gw = None
    try:
        with gw_log.open("wb") as glog:
            gw = start([*smsgw_command(), "run", "--config", str(conf)], glog)
            wait_ready("gateway", gw, gw_log, lambda: tcp_open(port), 30)
            rss_before = proc_status(gw.pid, "VmRSS")
            cpu0 = proc_cpu(gw.pid)
            res = Results()
            own0 = time.process_time()
            trio.run(run, port, args, res)
            cpu = proc_cpu(gw.pid) - cpu0
            res.loadgen_cpu = time.process_time() - own0
            status = report(res, args, gw.pid, cpu, rss_before, scrape(metrics_port))
            return exited_early(gw, gw_log, status)
    except SetupError as exc:
        print(f"setup failed: {exc}", file=sys.stderr)
        return 2
    finally:
        clean_up((gw,), tmp, args.keep)


if __name__ == "__main__":
    sys.exit(main())
