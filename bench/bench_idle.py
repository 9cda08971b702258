"""Idle-bind benchmark: what N idle bound upstream sessions cost the gateway.

Starts `smsgw simulate-smsc` and `smsgw run` as processes, binds N transceivers (default
10,000) that then stay idle (answering the gateway's enquire_link, as real clients do), and
measures over a window the gateway's CPU share and RSS, while a fresh session binds and submits
every few seconds (its latencies are printed). `--tls`: the same over TLS (certificates made
by trustme, from the test extras). A script, not a test; exits 2 if setup failed.
"""

from __future__ import annotations

import argparse
import math
import resource
import shutil
import ssl
import sys
import tempfile
import time
from pathlib import Path

import trio
from bench_e2e import (
    ACCOUNT,
    PASSWORD,
    Ports,
    SetupError,
    pct,
    proc_cpu,
    proc_status,
    q,
    sim_stats,
    smsgw_command,
    start,
    stop,
    tcp_open,
    wait_ready,
    write_simulator_config,
)

from gateway.passwords import hash_password
from smpp.connection import Connection
from smpp.pdu import BindTransceiver, Pdu, SubmitSm
from smpp.session import Side


def make_certificates(tmp: Path) -> tuple[str, ssl.SSLContext]:
    """The listener's TLS keys (TOML lines) and a client context trusting its certificate."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp / "server.pem"))
    cert.private_key_pem.write_to_path(str(tmp / "server.key"))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return (f"tls_cert = {q(str(tmp / 'server.pem'))}\n"
            f"tls_key = {q(str(tmp / 'server.key'))}\n"), client


def write_configs(tmp: Path, ports: Ports, args: argparse.Namespace,
                  listener_tls: str = "") -> tuple[Path, Path]:
    sim = write_simulator_config(tmp, ports)
    gw = tmp / "gateway.toml"
    gw.write_text(f"""\
[gateway]
node = "bench-idle"
log_level = "warning"

[store]
path = {q(str(tmp / "store" / "smsgw.sqlite3"))}

[http]
enabled = false

[[listener]]
host = "127.0.0.1"
port = {ports.gateway}
enquire_link_interval = {q(f"{args.enquire_link:g}s")}
inactivity_timeout = {q(f"{4 * args.enquire_link:g}s")}
max_connections = {args.sessions + 100}
max_connections_per_address = {args.sessions + 100}
max_unbound_per_address = {args.concurrency + 10}
{listener_tls}
[[account]]
system_id = {q(ACCOUNT)}
password_hash = {q(hash_password(PASSWORD))}
max_binds = {args.sessions + 100}
throughput = 0

[[smsc]]
name = "sim"
host = "127.0.0.1"
port = {ports.sim}
system_id = "sim"
password = "simpass"

[[route]]
name = "default"
smscs = ["sim"]
""")
    return gw, sim


async def _ignore(_conn: Connection, _pdu: Pdu) -> None:
    return None


def _bind() -> BindTransceiver:
    return BindTransceiver(system_id=ACCOUNT, password=PASSWORD)


async def connect(port: int, tls: ssl.SSLContext | None) -> trio.abc.Stream:
    """A TCP stream to the gateway, or a TLS one with its handshake done."""
    if tls is None:
        return await trio.open_tcp_stream("127.0.0.1", port)
    stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=tls)
    await stream.do_handshake()
    return stream


async def hold_idle(port: int, tls: ssl.SSLContext | None, count: int, concurrency: int,
                    held: list[Connection], nursery: trio.Nursery) -> None:
    """Open and bind `count` sessions (at most `concurrency` binding at once); they stay
    open, idle, in `nursery` (our Connection answers the gateway's enquire_link)."""
    limiter = trio.CapacityLimiter(concurrency)

    async def one() -> None:
        async with limiter:
            stream = await connect(port, tls)
            conn = Connection(stream, Side.ESME, enquire_link_interval=math.inf,
                              response_timeout=120)
            nursery.start_soon(conn.run, _ignore)
            resp = await conn.request(_bind())
            if resp.status != 0:
                raise SetupError(f"bind {len(held)} refused: 0x{resp.status:08X}")
            held.append(conn)

    await one()  # alone: its password check warms the gateway's cache for the others
    async with trio.open_nursery() as binders:
        for _ in range(count - 1):
            binders.start_soon(one)


async def probe(port: int, tls: ssl.SSLContext | None) -> tuple[float, float, float]:
    """A fresh session: (connect and TLS handshake, bind, submit latency), in seconds; then it
    unbinds."""
    start = time.perf_counter()
    stream = await connect(port, tls)
    conn = Connection(stream, Side.ESME, enquire_link_interval=math.inf)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.run, _ignore)
        t0 = time.perf_counter()
        resp = await conn.request(_bind())
        t1 = time.perf_counter()
        if resp.status != 0:
            raise SetupError(f"probe bind refused: 0x{resp.status:08X}")
        submit = SubmitSm(source_addr_ton=5, source_addr="BENCH", dest_addr_ton=1,
                          dest_addr_npi=1, destination_addr="33612345678",
                          short_message=b"probe")
        resp = await conn.request(submit)
        t2 = time.perf_counter()
        if resp.status != 0:
            raise SetupError(f"probe submit refused: 0x{resp.status:08X}")
        await conn.unbind()
        nursery.cancel_scope.cancel()
    return t0 - start, t1 - t0, t2 - t1


async def measure(args: argparse.Namespace, gw_pid: int, port: int,
                  tls: ssl.SSLContext | None = None) -> int:
    held: list[Connection] = []
    async with trio.open_nursery() as nursery:
        t0 = time.perf_counter()
        with trio.fail_after(args.setup_cap):
            await hold_idle(port, tls, args.sessions, args.concurrency, held, nursery)
        print(f"bound {len(held):,} idle sessions in {time.perf_counter() - t0:.1f} s; "
              f"gateway RSS {proc_status(gw_pid, 'VmRSS')}", flush=True)
        await trio.sleep(args.settle)
        connects: list[float] = []
        binds: list[float] = []
        submits: list[float] = []
        cpu0, wall0, own0 = proc_cpu(gw_pid), time.perf_counter(), time.process_time()
        while time.perf_counter() - wall0 < args.window:
            await trio.sleep(args.probe_every)
            connect_s, bind_s, submit_s = await probe(port, tls)
            connects.append(connect_s)
            binds.append(bind_s)
            submits.append(submit_s)
        wall = time.perf_counter() - wall0
        cpu = proc_cpu(gw_pid) - cpu0
        own = time.process_time() - own0
        closed = sum(1 for c in held if c.closed)
        ms = 1000.0
        over_tls = " over TLS" if tls is not None else ""
        print(f"over {wall:.0f} s with {len(held):,} idle bound sessions{over_tls} (enquire_link "
              f"every {args.enquire_link:g} s each, answered):")
        print(f"  gateway CPU {cpu:.2f} s = {100 * cpu / wall:.2f} % of a core; RSS "
              f"{proc_status(gw_pid, 'VmRSS')} (peak {proc_status(gw_pid, 'VmHWM')})")
        print(f"  a fresh session meanwhile ({len(binds)} probes): bind p50 "
              f"{pct(binds, 50) * ms:.1f} ms max {max(binds) * ms:.1f} ms; submit p50 "
              f"{pct(submits, 50) * ms:.1f} ms max {max(submits) * ms:.1f} ms; before the bind, "
              f"connect{' and TLS handshake' if tls else ''} p50 {pct(connects, 50) * ms:.1f} ms "
              f"max {max(connects) * ms:.1f} ms")
        print(f"  load tool CPU {100 * own / wall:.1f} % of a core; idle sessions the gateway "
              f"closed meanwhile: {closed}")
        rss_kb = int(proc_status(gw_pid, "VmHWM").split()[0])
        ok = (100 * cpu / wall < 5.0 and rss_kb < 400 * 1024 and max(binds) < 0.050
              and max(submits) < 0.050 and closed == 0)
        print(f"target (< 5 % of a core, < 400 MB, bind and submit < 50 ms, none dropped): "
              f"{'MET' if ok else 'NOT met'}")
        nursery.cancel_scope.cancel()
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", "-n", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=100, help="sessions binding at once")
    p.add_argument("--window", type=float, default=60.0, help="measurement window, seconds")
    p.add_argument("--settle", type=float, default=5.0, help="seconds before measuring")
    p.add_argument("--probe-every", type=float, default=5.0, help="seconds between probes")
    p.add_argument("--enquire-link", type=float, default=30.0,
                   help="the listener's enquire_link_interval, seconds")
    p.add_argument("--setup-cap", type=float, default=300.0, help="binding must end by then")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    p.add_argument("--tls", action="store_true", help="SMPP over TLS (needs trustme)")
    return p.parse_args(argv)


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the gateway inherits it
    if hard < needed:
        raise SetupError(f"{needed} file descriptors needed, the hard limit is {hard}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="smsgw-bench-idle-"))
    ports = Ports()
    listener_tls, client_tls = make_certificates(tmp) if args.tls else ("", None)
    gw_conf, sim_conf = write_configs(tmp, ports, args, listener_tls)
    sim_log, gw_log = tmp / "simulator.log", tmp / "gateway.log"
    sim = gw = None
    try:
        raise_fd_limit(args.sessions + 200)
        with sim_log.open("wb") as slog, gw_log.open("wb") as glog:
            sim = start([*smsgw_command(), "simulate-smsc", "--config", str(sim_conf)], slog)
            wait_ready("simulator", sim, sim_log, lambda: sim_stats(ports.sim_control), 20)
            gw = start([*smsgw_command(), "run", "--config", str(gw_conf)], glog)
            wait_ready("gateway", gw, gw_log, lambda: tcp_open(ports.gateway), 30)
            status = trio.run(measure, args, gw.pid, ports.gateway, client_tls)
            if gw.poll() is not None:
                print(f"gateway exited early ({gw.returncode})", file=sys.stderr)
                status = status or 1
            return status
    except SetupError as exc:
        print(f"setup failed: {exc}", file=sys.stderr)
        return 2
    finally:
        stop(gw, deadline=60)
        stop(sim)
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
