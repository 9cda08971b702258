"""Side by side in one run: the load straight to the SMSC simulator, this gateway, Kannel.

The same simulator (peer = "independent": every submit_sm_resp and every receipt in a send of
its own, receipts 50 ms after the submit) and the same load tool (every submit in a send of
its own; closed loop of N sessions x window W, or an offered rate) measure (a) the simulator
alone, the ceiling, (b) `smsgw run` with synchronous = "full", (c) Debian's Kannel (bearerbox
+ smsbox; HTTP sendsms upstream, one SMPP transceiver bind to the simulator, dlr-url back to
an HTTP receiver of the load tool). `--nodes N` adds (b') N gateway processes side by side, an
upper bound of the multi-node design (benchmark only: each node its own store, port, SMSC bind
and simulator). A benchmark, not a test: 127.0.0.1 only, bounded in messages and time; exits 1
if a system lost receipts, 2 if setup failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from urllib.parse import quote

import trio
from bench_e2e import (
    Ports,
    Results,
    SetupError,
    free_port,
    load,
    pct,
    proc_cpu,
    sim_stats,
    smsgw_command,
    start,
    stop,
    tail,
    tcp_open,
    wait_ready,
    write_configs,
    write_simulator_config,
)

KANNEL_USER, KANNEL_PASS = "bench", "benchpw"
MS = 1000.0


# --------------------------------------------------------------------------- figures


@dataclass
class Figures:
    """What one system did with the load: the line printed for it."""

    system: str
    accepted: int
    e2e_rate: float  # receipts back per second, from the first submit to the last receipt
    submit_p50: float  # ms
    submit_p99: float
    receipt_p50: float  # ms from submit sent to receipt in
    receipt_p99: float
    cpu_s: float  # CPU seconds of the system's processes (nan for the ceiling)
    cpu_ms_per_msg: float
    peak_rss_mb: float
    missing: int
    errors: dict[str, int]
    timed_out: bool
    loadgen_ms_per_msg: float  # the load tool's own CPU (it shares the two cores)
    threads: dict[str, float] = field(default_factory=dict)  # CPU seconds per thread

    def line(self) -> str:
        cpu = ("-" if math.isnan(self.cpu_ms_per_msg)
               else f"{self.cpu_ms_per_msg:.3f} ms ({self.cpu_s:.1f} s)")
        rss = "-" if math.isnan(self.peak_rss_mb) else f"{self.peak_rss_mb:.0f} MB"
        problems = ", ".join(f"{k} {v}" for k, v in self.errors.items())
        return (f"{self.system:<8} {self.e2e_rate:>7,.0f} msg/s  submit p50/p99 "
                f"{self.submit_p50:6.1f} /{self.submit_p99:7.1f} ms  receipt p50/p99 "
                f"{self.receipt_p50:6.1f} /{self.receipt_p99:7.1f} ms  CPU/msg {cpu}  peak RSS "
                f"{rss}  load tool CPU/msg {self.loadgen_ms_per_msg:.3f} ms  missing {self.missing}"
                + ("\n         CPU s by thread: " + ", ".join(
                    f"{k} {v:.1f}" for k, v in self.threads.items() if v >= 0.05)
                   if self.threads else "")
                + (f"  errors: {problems}" if problems else "")
                + ("  HIT DURATION CAP" if self.timed_out else ""))


def figures(system: str, res: Results, cpu_s: float, rss_mb: float, loadgen_s: float
            ) -> Figures:
    end = res.t_receipts_done or time.perf_counter()
    receipt_lat = [res.receipt_at[m] - t for m, t in res.sent_at.items() if m in res.receipt_at]
    accepted = len(res.sent_at)
    return Figures(
        system=system, accepted=accepted,
        e2e_rate=len(receipt_lat) / max(end - res.t_start, 1e-9),
        submit_p50=pct(res.submit_latency, 50) * MS, submit_p99=pct(res.submit_latency, 99) * MS,
        receipt_p50=pct(receipt_lat, 50) * MS, receipt_p99=pct(receipt_lat, 99) * MS,
        cpu_s=cpu_s, cpu_ms_per_msg=cpu_s / max(accepted, 1) * MS, peak_rss_mb=rss_mb,
        missing=accepted - len(receipt_lat), errors=dict(res.errors), timed_out=res.timed_out,
        loadgen_ms_per_msg=loadgen_s / max(accepted, 1) * MS,
    )  # fmt: skip


def peak_rss_mb(pids: list[int]) -> float:
    """Sum of the processes' peak resident set (VmHWM), in MB."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
    return total


class CpuMeter:
    """CPU seconds (utime + stime from /proc/<pid>/stat) the processes use from now on, in
    all and per thread (/proc/<pid>/task/<tid>/stat): how much of it could use a 2nd core."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.start = {pid: proc_cpu(pid) for pid in pids}
        self.threads_start = {pid: thread_cpu(pid) for pid in pids}

    def used(self) -> float:
        return sum(proc_cpu(pid) - self.start[pid] for pid in self.pids)

    def by_thread(self) -> dict[str, float]:
        """CPU seconds per thread used since the start, by "pid/tid name", largest first."""
        out: dict[str, float] = {}
        for pid in self.pids:
            before = self.threads_start[pid]
            for key, seconds in thread_cpu(pid).items():
                out[f"{pid}/{key}"] = seconds - before.get(key, 0.0)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of a process so far, by "tid name"."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, IndexError, ValueError):
                name = (task / "comm").read_text().strip()
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                ticks = int(fields[11]) + int(fields[12])
                out[f"{task.name} {name}"] = ticks / os.sysconf("SC_CLK_TCK")
    return out


# --------------------------------------------------------------------------- HTTP load (Kannel)


async def read_response(stream: trio.SocketStream, buf: bytearray) -> tuple[int, bool]:
    """One HTTP/1.x response from `stream` (leftover octets stay in `buf`): (status, close)."""
    while (end := buf.find(b"\r\n\r\n")) < 0:
        data = await stream.receive_some(65536)
        if not data:
            raise trio.BrokenResourceError("server closed the connection")
        buf += data
    head = bytes(buf[:end]).decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    length, close = 0, head[0].startswith("HTTP/1.0")
    for header in head[1:]:
        name, _, value = header.partition(":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection":
            close = value == "close"
    del buf[:end + 4]
    while len(buf) < length:
        data = await stream.receive_some(65536)
        if not data:
            raise trio.BrokenResourceError("server closed the connection in a body")
        buf += data
    del buf[:length]
    return status, close


def sendsms_request(n: int, dlr_port: int) -> bytes:
    """GET of smsbox's sendsms for message n, asking a final-delivery report to our receiver."""
    dlr_url = quote(f"http://127.0.0.1:{dlr_port}/dlr?n={n}&t=%d", safe="")
    path = (f"/cgi-bin/sendsms?user={KANNEL_USER}&pass={KANNEL_PASS}&from=BENCH"
            f"&to=3361{n % 10_000_000:07d}&text=Bench+message+{n:08d}&dlr-mask=1"
            f"&dlr-url={dlr_url}")
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode("ascii")


async def http_worker(port: int, dlr_port: int, tickets: trio.MemoryReceiveChannel[int],
                      res: Results) -> None:
    """One keep-alive HTTP connection to smsbox: one sendsms at a time, each in its own send."""
    stream: trio.SocketStream | None = None
    buf = bytearray()
    async for n in tickets:
        t0 = time.perf_counter()
        try:
            if stream is None:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                buf.clear()
            await stream.send_all(sendsms_request(n, dlr_port))
            status, close = await read_response(stream, buf)
        except (OSError, trio.BrokenResourceError) as exc:
            res.errors[type(exc).__name__] += 1
            res.count_submitted()
            stream = None
            continue
        if 200 <= status < 300:
            key = str(n)
            res.submit_latency.append(time.perf_counter() - t0)
            res.sent_at[key] = t0
            if key in res.receipt_at:
                res.matched += 1
        else:
            res.errors[f"HTTP {status}"] += 1
        res.count_submitted()
        if close:
            await stream.aclose()
            stream = None
    if stream is not None:
        await stream.aclose()


async def dlr_receiver(listener: trio.SocketListener, res: Results) -> None:
    """Kannel's dlr-url calls: GET /dlr?n=N&t=TYPE; type 1 (delivered) is the receipt of N."""

    async def serve(stream: trio.SocketStream) -> None:
        buf = bytearray()
        async with stream:
            while True:
                while (end := buf.find(b"\r\n\r\n")) < 0:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buf += data
                head = bytes(buf[:end]).decode("latin-1")
                del buf[:end + 4]
                now = time.perf_counter()
                target = head.split(" ", 2)[1]
                query = dict(p.partition("=")[::2] for p in target.partition("?")[2].split("&"))
                key = query.get("n", "")
                if query.get("t") != "1" or not key:
                    res.receipts_unknown += 1
                elif key in res.receipt_at:
                    res.duplicates += 1
                else:
                    res.receipt_at[key] = now
                    if key in res.sent_at:
                        res.matched += 1
                    res.check_done()
                close = "connection: close" in head.lower()
                await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                if close:
                    return

    await trio.serve_listeners(serve, [listener])


async def http_load(port: int, args: argparse.Namespace, res: Results) -> None:
    """sessions x window HTTP connections take message numbers from a pacer: as fast as they
    are free (closed loop) or at the offered rate (never more than one request per
    connection outstanding, so the tool falls behind if Kannel cannot keep up)."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    dlr_port = listener.socket.getsockname()[1]
    send, receive = trio.open_memory_channel[int](0)
    with trio.move_on_after(args.duration_cap) as cap:
        async with trio.open_nursery() as outer:
            outer.start_soon(dlr_receiver, listener, res)
            async with trio.open_nursery() as nursery:
                for _ in range(args.sessions * args.window):
                    nursery.start_soon(http_worker, port, dlr_port, receive.clone(), res)
                receive.close()
                res.t_start = time.perf_counter()
                async with send:
                    for n in range(res.total):
                        if args.rate:
                            due = res.t_start + n / args.rate
                            await trio.sleep(max(0.0, due - time.perf_counter()))
                        await send.send(n)
            await res.all_in.wait()
            outer.cancel_scope.cancel()
    res.timed_out = cap.cancelled_caught
    if not res.t_submit_done:
        res.t_submit_done = time.perf_counter()


# --------------------------------------------------------------------------- the three systems


def smpp_load(port: int | list[int], args: argparse.Namespace, credentials: tuple[str, str]
              ) -> tuple[Results, float]:
    """The SMPP load against `port` (sessions spread over several ports in turn): its
    results and the load tool's CPU seconds."""
    res = Results(total=args.messages)
    cpu0 = time.process_time()
    trio.run(load, port, args, res, credentials)
    return res, time.process_time() - cpu0


def with_simulator(name: str, args: argparse.Namespace, tmp: Path, ports: Ports,
                   body: Callable[[subprocess.Popen[bytes]], Figures]) -> Figures:
    """Start the independent simulator on `ports`, run `body`, stop it."""
    sim_conf = write_simulator_config(tmp, ports, window=args.smsc_window,
                                      receipt_delay=args.receipt_delay, peer="independent")
    sim_log = tmp / f"simulator-{name}.log"
    sim = None
    try:
        with sim_log.open("wb") as slog:
            sim = start([*smsgw_command(), "simulate-smsc", "--config", str(sim_conf)], slog)
            wait_ready("simulator", sim, sim_log, lambda: sim_stats(ports.sim_control), 20)
            return body(sim)
    finally:
        stop(sim)


def run_ceiling(args: argparse.Namespace, tmp: Path) -> Figures:
    """(a) The load tool bound straight to the simulator: what the peers alone can do."""
    ports = Ports()

    def body(_sim: subprocess.Popen[bytes]) -> Figures:
        res, loadgen = smpp_load(ports.sim, args, ("sim", "simpass"))
        return figures("ceiling", res, math.nan, math.nan, loadgen)

    return with_simulator("alone", args, tmp, ports, body)


def bound_to_simulator(ports: Ports, binds: int) -> Callable[[], bool]:
    def ready() -> bool:
        count = sim_stats(ports.sim_control).get("bound_sessions", 0)
        return isinstance(count, int) and count >= binds
    return ready


def gateway_args(args: argparse.Namespace) -> argparse.Namespace:
    """What bench_e2e.write_configs needs for a gateway with synchronous = "full"."""
    return argparse.Namespace(
        log_level="warning", synchronous="full", sessions=args.sessions,
        deliver_window=args.deliver_window, smsc_binds=args.smsc_binds,
        smsc_window=args.smsc_window, receipt_delay=args.receipt_delay, independent=True)


def gateway_ready(ports: Ports, binds: int) -> Callable[[], bool]:
    """The gateway on `ports` listens and has its binds up at the simulator."""
    bound = bound_to_simulator(ports, binds)
    return lambda: tcp_open(ports.gateway) and bound()


def run_ours(args: argparse.Namespace, tmp: Path) -> Figures:
    """(b) `smsgw run`, synchronous = "full", one process."""
    ports = Ports()
    gw_conf, _ = write_configs(tmp, ports, gateway_args(args))
    gw_log = tmp / "gateway.log"

    def body(_sim: subprocess.Popen[bytes]) -> Figures:
        gw = None
        try:
            with gw_log.open("wb") as glog:
                gw = start([*smsgw_command(), "run", "--config", str(gw_conf)], glog)
                ready = bound_to_simulator(ports, args.smsc_binds)
                wait_ready("gateway", gw, gw_log, lambda: tcp_open(ports.gateway) and ready(), 30)
                cpu = CpuMeter([gw.pid])
                if args.profile:
                    profiler = start(["py-spy", "record", "--gil", "--pid", str(gw.pid),
                                      "--format", "speedscope", "--rate", "100", "-o",
                                      str(args.profile)], glog)
                res, loadgen = smpp_load(ports.gateway, args, ("bench", "benchpw"))
                used = cpu.used()
                if args.profile:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(profiler.pid, 2)  # SIGINT: py-spy writes its file and exits
                    profiler.wait(timeout=60)
                if gw.poll() is not None:
                    raise SetupError(f"gateway exited ({gw.returncode}):\n{tail(gw_log)}")
                out = figures("smsgw", res, used, peak_rss_mb([gw.pid]), loadgen)
                out.threads = cpu.by_thread()
                return out
        finally:
            stop(gw)

    return with_simulator("smsgw", args, tmp, ports, body)


def run_nodes(args: argparse.Namespace, tmp: Path) -> Figures:
    """(b') The upper bound of several gateway processes on one host, WITHOUT the multi-node
    design (benchmark only): `args.nodes` independent `smsgw run`, each with its own SQLite
    file (a shard), its own listener port, its own SMSC bind(s) and its own simulator (the
    simulator hands receipts round-robin to any bound receiver, so one simulator shared by
    the nodes would deliver half the receipts to the node that does not hold the message).
    The load tool spreads its sessions over the nodes' ports in turn; CPU is the nodes' sum.
    Real nodes would share one store and need leases and cross-node receipts (RESULTS.md)."""
    gateways: list[subprocess.Popen[bytes]] = []
    simulators: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        ports_of: list[Ports] = []
        for i in range(1, args.nodes + 1):
            node_dir = tmp / f"node{i}"
            node_dir.mkdir()
            ports = Ports()
            ports_of.append(ports)
            gw_conf, sim_conf = write_configs(node_dir, ports, gateway_args(args))
            sim_log, gw_log = node_dir / "simulator.log", node_dir / "gateway.log"
            slog, glog = sim_log.open("wb"), gw_log.open("wb")
            logs += [slog, glog]
            sim = start([*smsgw_command(), "simulate-smsc", "--config", str(sim_conf)], slog)
            simulators.append(sim)
            wait_ready(f"simulator {i}", sim, sim_log, partial(sim_stats, ports.sim_control),
                       20)
            gw = start([*smsgw_command(), "run", "--config", str(gw_conf)], glog)
            gateways.append(gw)
            wait_ready(f"gateway {i}", gw, gw_log, gateway_ready(ports, args.smsc_binds), 30)
        pids = [gw.pid for gw in gateways]
        cpu = CpuMeter(pids)
        peers = CpuMeter([sim.pid for sim in simulators])
        res, loadgen = smpp_load([p.gateway for p in ports_of], args, ("bench", "benchpw"))
        used = cpu.used()
        for i, gw in enumerate(gateways, 1):
            if gw.poll() is not None:
                raise SetupError(f"gateway {i} exited ({gw.returncode}):\n"
                                 f"{tail(tmp / f'node{i}' / 'gateway.log')}")
        out = figures(f"smsgw x{args.nodes}", res, used, peak_rss_mb(pids), loadgen)
        out.threads = cpu.by_thread()
        out.threads[f"(not counted above: the {args.nodes} simulators)"] = peers.used()
        return out
    finally:
        for proc in [*gateways, *simulators]:
            stop(proc)
        for log in logs:
            log.close()


def kannel_config(tmp: Path, ports: Ports, box: dict[str, int], args: argparse.Namespace) -> Path:
    """bearerbox + smsbox in one file: one SMPP transceiver bind to the simulator, window
    `smsc_window`, HTTP sendsms, DLRs kept in memory, messages in Kannel's file store."""
    conf = tmp / "kannel.conf"
    conf.write_text(f"""\
group = core
admin-port = {box["admin"]}
admin-password = bench
status-password = bench
admin-allow-ip = "127.0.0.1"
smsbox-port = {box["smsbox"]}
box-allow-ip = "127.0.0.1"
log-file = "{tmp}/bearerbox.log"
log-level = 2
dlr-storage = internal
store-type = file
store-location = "{tmp}/kannel.store"

group = smsc
smsc = smpp
smsc-id = sim
host = 127.0.0.1
port = {ports.sim}
transceiver-mode = true
smsc-username = sim
smsc-password = simpass
system-type = ""
max-pending-submits = {args.smsc_window}
enquire-link-interval = 30
reconnect-delay = 1

group = smsbox
bearerbox-host = 127.0.0.1
bearerbox-port = {box["smsbox"]}
sendsms-port = {box["sendsms"]}
sendsms-interface = 127.0.0.1
log-file = "{tmp}/smsbox.log"
log-level = 2

group = sendsms-user
username = {KANNEL_USER}
password = {KANNEL_PASS}
""")
    return conf


def ensure_kannel(install: bool) -> list[str]:
    """bearerbox and smsbox paths, after `apt-get install -y kannel` if they are missing
    (none if missing and not `install`)."""
    found = [shutil.which(b) or shutil.which(b, path="/usr/sbin:/usr/bin") for b in
             ("bearerbox", "smsbox")]
    if all(found):
        return [str(f) for f in found]
    if not install:
        return []
    print("bearerbox/smsbox missing: apt-get install -y kannel (Debian's Kannel)", flush=True)
    done = subprocess.run(["apt-get", "install", "-y", "kannel"], capture_output=True, text=True,
                          check=False)
    if done.returncode:
        raise SetupError(f"apt-get install -y kannel failed:\n{done.stderr[-2000:]}")
    found = [shutil.which(b, path="/usr/sbin:/usr/bin") for b in ("bearerbox", "smsbox")]
    if not all(found):
        raise SetupError("kannel installed but bearerbox/smsbox not found")
    return [str(f) for f in found]


def kannel_version(bearerbox: str) -> str:
    out = subprocess.run([bearerbox, "--version"], capture_output=True, text=True, check=False)
    first = (out.stdout or out.stderr).splitlines()
    return first[0] if first else "?"


def run_kannel(args: argparse.Namespace, tmp: Path, binaries: list[str]) -> Figures:
    """(c) Kannel: bearerbox + smsbox, HTTP sendsms in, dlr-url back to the load tool."""
    ports = Ports()
    box = {"admin": free_port(), "smsbox": free_port(), "sendsms": free_port()}
    conf = kannel_config(tmp, ports, box, args)

    def body(_sim: subprocess.Popen[bytes]) -> Figures:
        bearer = smsbox = None
        out = tmp / "kannel.out"
        try:
            with out.open("wb") as log:
                bearer = start([binaries[0], "-v", "2", str(conf)], log)  # console: warnings
                wait_ready("bearerbox", bearer, tmp / "bearerbox.log",
                           bound_to_simulator(ports, 1), 30)
                smsbox = start([binaries[1], "-v", "2", str(conf)], log)
                wait_ready("smsbox", smsbox, tmp / "smsbox.log",
                           lambda: tcp_open(box["sendsms"]), 30)
                time.sleep(0.5)  # smsbox listens before it has connected to bearerbox
                pids = [bearer.pid, smsbox.pid]
                cpu = CpuMeter(pids)
                res = Results(total=args.messages)
                cpu0 = time.process_time()
                trio.run(http_load, box["sendsms"], args, res)
                loadgen = time.process_time() - cpu0
                used = cpu.used()
                for proc, name in ((bearer, "bearerbox"), (smsbox, "smsbox")):
                    if proc.poll() is not None:
                        raise SetupError(f"{name} exited ({proc.returncode}):\n{tail(out)}")
                found = figures("kannel", res, used, peak_rss_mb(pids), loadgen)
                found.threads = cpu.by_thread()
                return found
        finally:
            stop(smsbox)
            stop(bearer)

    return with_simulator("kannel", args, tmp, ports, body)


# --------------------------------------------------------------------------- report


def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (f"{model}, {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
            f"load average {os.getloadavg()[0]:.1f}")


def ratios(ours: Figures, kannel: Figures) -> dict[str, float]:
    return {
        "throughput": ours.e2e_rate / kannel.e2e_rate if kannel.e2e_rate else math.nan,
        "cpu_per_msg": (ours.cpu_ms_per_msg / kannel.cpu_ms_per_msg
                        if kannel.cpu_ms_per_msg else math.nan),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", "-n", type=int, default=10_000, help="per system")
    p.add_argument("--sessions", "-k", type=int, default=4, help="upstream sessions")
    p.add_argument("--window", "-w", type=int, default=10,
                   help="submits outstanding per session (Kannel: HTTP connections = k x w)")
    p.add_argument("--rate", type=float, default=0.0,
                   help="offered submits/s over all sessions (0: closed loop)")
    p.add_argument("--smsc-binds", type=int, default=1, help="gateway's binds to the simulator")
    p.add_argument("--smsc-window", type=int, default=100,
                   help="window of the SMSC bind(s), both ways (Kannel: max-pending-submits)")
    p.add_argument("--deliver-window", type=int, default=64, help="smsgw listener window")
    p.add_argument("--receipt-delay", type=float, default=0.05, help="simulator, seconds")
    p.add_argument("--duration-cap", type=float, default=60.0, help="per system, seconds")
    p.add_argument("--systems", default="ceiling,smsgw,kannel",
                   help="comma-separated subset of ceiling,smsgw,nodes,kannel")
    p.add_argument("--nodes", type=int, default=1,
                   help="N > 1 adds system 'nodes' after smsgw: N gateway processes, each with "
                        "its own store, port, SMSC bind and simulator (a benchmark-only upper "
                        "bound of the multi-node design; sessions spread over the ports)")
    p.add_argument("--profile", type=Path, default=None,
                   help="record the gateway with py-spy --gil into this speedscope file")
    p.add_argument("--no-install", action="store_true",
                   help="skip Kannel if bearerbox/smsbox are missing instead of apt-get installing")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    args = p.parse_args(argv)
    args.independent = True  # the load tool writes every submit in a send of its own
    args.progress = False
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if args.nodes > 1 and "nodes" not in systems:
        systems.insert(systems.index("smsgw") + 1 if "smsgw" in systems else len(systems),
                       "nodes")
    if "nodes" in systems and args.nodes < 2:
        args.nodes = 2
    unknown = set(systems) - {"ceiling", "smsgw", "nodes", "kannel"}
    if unknown:
        print(f"--systems: unknown {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="smsgw-compare-"))
    results: dict[str, Figures] = {}
    notes: list[str] = []
    try:
        binaries = ensure_kannel(not args.no_install) if "kannel" in systems else []
        if binaries:
            notes.append(f"Kannel: {kannel_version(binaries[0])} ({binaries[0]}, {binaries[1]}); "
                         f"config written to {tmp}/kannel.conf (kept with --keep)")
        elif "kannel" in systems:
            notes.append("Kannel skipped: bearerbox/smsbox not installed (--no-install)")
            systems.remove("kannel")
        runners: dict[str, Callable[[], Figures]] = {
            "ceiling": lambda: run_ceiling(args, tmp),
            "smsgw": lambda: run_ours(args, tmp),
            "nodes": lambda: run_nodes(args, tmp),
            "kannel": lambda: run_kannel(args, tmp, binaries),
        }
        for name in systems:
            results[name] = runners[name]()
            if not args.json:
                print(results[name].line(), flush=True)
    except SetupError as exc:
        print(f"setup failed: {exc}", file=sys.stderr)
        return 2
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    mode = f"offered {args.rate:,.0f} msg/s" if args.rate else "closed loop"
    setup = (f"{args.messages:,} messages per system, {args.sessions} sessions x window "
             f"{args.window} ({mode}), simulator peer = independent, receipt after "
             f"{args.receipt_delay * MS:.0f} ms, SMSC window {args.smsc_window}; machine: "
             f"{machine()}")
    pairs = {"ratios": ("smsgw", "kannel"), "ratios_nodes": ("nodes", "kannel"),
             "ratios_nodes_to_one": ("nodes", "smsgw")}
    found = {key: ratios(results[a], results[b]) for key, (a, b) in pairs.items()
             if a in results and b in results}
    if args.json:
        print(json.dumps({"setup": setup, "notes": notes, **found,
                          "systems": {k: asdict(v) for k, v in results.items()}}))
    else:
        print(f"setup: {setup}")
        for note in notes:
            print(note)
        names = {"ratios": "ours/Kannel", "ratios_nodes": f"{args.nodes} nodes/Kannel",
                 "ratios_nodes_to_one": f"{args.nodes} nodes/one process"}
        for key, ratio in found.items():
            print(f"ratios {names[key]}: throughput {ratio['throughput']:.2f}x, CPU per message "
                  f"{ratio['cpu_per_msg']:.2f}x"
                  + ("  (targets: >= 1.5x, <= 0.6x)" if key != "ratios_nodes_to_one" else ""))
    lost = any(f.missing or f.timed_out for f in results.values())
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
