"""Several gateway nodes on one PostgreSQL store, against the SQLite node, in one run.

For each configuration (the SQLite node; 1, 2 and 3 PostgreSQL nodes sharing a fresh database
on one throwaway server) starts the SMSC simulator and the nodes, spreads bench_e2e's upstream
sessions round-robin over the nodes' SMPP ports and prints one table: msg/s with receipts,
submit and receipt p50/p99, CPU per message (gateways summed, PostgreSQL, the sum).
A script, not a test: exits 1 if a receipt was lost or duplicated, 2 if setup failed.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trio
from bench_e2e import (
    PASSWORD,
    PgStore,
    Ports,
    Results,
    SetupError,
    free_port,
    gateway_config,
    load,
    pct,
    proc_cpu,
    q,
    sim_stats,
    smsgw_command,
    start,
    stop,
    store_config,
    tail,
    tcp_open,
    wait_ready,
    write_simulator_config,
)

from gateway.passwords import hash_password


@dataclass
class Row:
    """One configuration's figures."""

    label: str
    accepted: int = 0
    receipts: int = 0
    duplicates: int = 0
    unknown: int = 0
    errors: str = ""
    e2e_rate: float = math.nan
    submit_p50: float = math.nan
    submit_p99: float = math.nan
    receipt_p50: float = math.nan
    receipt_p99: float = math.nan
    gw_cpu: float = math.nan
    pg_cpu: float = math.nan
    sim_submits: object = None
    timed_out: bool = False
    receipts_in: Counter[str] = field(default_factory=Counter)  # METRICS, all nodes

    def per_msg(self, cpu: float) -> float:
        return cpu / max(self.accepted, 1) * 1000.0

    @property
    def lost(self) -> int:
        return self.accepted - self.receipts


METRICS = {"handed_over": "smsgw_receipts_handed_over_total",
           "held": "smsgw_receipts_held_total", "orphan": "smsgw_orphan_receipts_total"}


def scrape(port: int) -> Counter[str]:
    """The receipt counters of one node's /metrics (summed over their labels; empty if it
    does not answer)."""
    found: Counter[str] = Counter()
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5.0).text
    except httpx.HTTPError:
        return found
    for line in text.splitlines():
        for key, name in METRICS.items():
            if line.startswith(name) and not line.startswith("#"):
                with contextlib.suppress(ValueError, IndexError):
                    found[key] += int(float(line.split()[-1]))
    return found


def node_config(tmp: Path, name: str, port: int, ports: Ports, args: argparse.Namespace,
                dsn: str | None, metrics_port: int) -> Path:
    """One node's configuration: SQLite in `tmp` (dsn None) or the shared PostgreSQL store."""
    hold = f"receipt_hold = {q(args.receipt_hold)}" if args.receipt_hold else ""
    return gateway_config(
        tmp / f"{name}.toml", node=name, log_level="warning",
        store=store_config(tmp, "full", dsn, shared=True, admin=f"{name}.sock"), port=port,
        window=64, sim_port=ports.sim, args=args, password_hash=args.password_hash,
        http=f"metrics_port = {metrics_port}", smsc=hold)


def run_config(label: str, nodes: int, dsn: str | None, pg: PgStore | None,
               args: argparse.Namespace) -> Row:
    """Simulator + `nodes` gateway processes, the load over their ports; the figures."""
    tmp = Path(tempfile.mkdtemp(prefix="smsgw-bench-nodes-"))
    ports = Ports()
    args.control_port = ports.sim_control
    node_ports = [ports.gateway] + [free_port() for _ in range(nodes - 1)]
    metrics_ports = [free_port() for _ in range(nodes)]
    sim = None
    gws = []
    row = Row(label)
    files = contextlib.ExitStack()
    try:
        sim_conf = write_simulator_config(tmp, ports, window=args.smsc_window,
                                          receipt_delay=args.receipt_delay)
        sim_log = tmp / "simulator.log"
        sim = start([*smsgw_command(), "simulate-smsc", "--config", str(sim_conf)],
                    files.enter_context(sim_log.open("wb")))
        wait_ready("simulator", sim, sim_log, lambda: sim_stats(ports.sim_control), 20)
        logs = []
        for i, port in enumerate(node_ports):
            name = f"node-{'abc'[i]}" if dsn else "sqlite"
            conf = node_config(tmp, name, port, ports, args, dsn, metrics_ports[i])
            log = tmp / f"{name}.log"
            logs.append(log)
            gws.append(start([*smsgw_command(), "run", "--config", str(conf)],
                             files.enter_context(log.open("wb"))))

        def ready() -> bool:
            binds = sim_stats(ports.sim_control).get("bound_sessions", 0)
            return all(tcp_open(p) for p in node_ports) and isinstance(binds, int) \
                and binds >= args.smsc_binds

        for gw, log in zip(gws, logs, strict=True):
            wait_ready(f"gateway {log.stem}", gw, log, ready, 60)
        cpu0 = sum(proc_cpu(gw.pid) for gw in gws)
        pg0 = pg.cpu() if pg is not None else math.nan
        res = Results(total=args.messages)
        trio.run(load, node_ports, args, res)
        row.gw_cpu = sum(proc_cpu(gw.pid) for gw in gws) - cpu0
        row.pg_cpu = pg.cpu() - pg0 if pg is not None else 0.0
        end = res.t_receipts_done or time.perf_counter()
        wall = max(end - res.t_start, 1e-9)
        receipt_lat = [res.receipt_at[m] - t for m, t in res.sent_at.items()
                       if m in res.receipt_at]
        row.accepted = len(res.sent_at)
        row.receipts = len(receipt_lat)
        row.duplicates = res.duplicates
        row.unknown = res.receipts_unknown
        row.errors = ", ".join(f"{k} {v}" for k, v in res.errors.most_common()) or "none"
        row.e2e_rate = row.receipts / wall
        row.submit_p50 = pct(res.submit_latency, 50) * 1000
        row.submit_p99 = pct(res.submit_latency, 99) * 1000
        row.receipt_p50 = pct(receipt_lat, 50) * 1000
        row.receipt_p99 = pct(receipt_lat, 99) * 1000
        row.timed_out = res.timed_out
        row.sim_submits = sim_stats(ports.sim_control).get("submits")
        for mport in metrics_ports:
            row.receipts_in.update(scrape(mport))
        for gw, log in zip(gws, logs, strict=True):
            if gw.poll() is not None:
                raise SetupError(f"{log.stem} exited early ({gw.returncode}):\n{tail(log)}")
        print(f"{label}: {row.e2e_rate:,.0f} msg/s with receipts, {row.accepted:,} accepted, "
              f"{row.receipts:,} receipts, duplicates {row.duplicates}, errors {row.errors}, "
              f"simulator submits {row.sim_submits}; receipts at the nodes "
              f"{dict(row.receipts_in)}; gateways CPU {row.gw_cpu:.1f} s, "
              f"PostgreSQL CPU {row.pg_cpu:.1f} s", flush=True)
        return row
    finally:
        for gw in gws:
            stop(gw)
        stop(sim)
        files.close()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def table(rows: list[Row], args: argparse.Namespace) -> str:
    head = ("| configuration | msg/s with receipts | submit p50 / p99 ms | receipt p50 / p99 ms "
            "| CPU ms/msg gateways | CPU ms/msg PostgreSQL | CPU ms/msg sum "
            "| receipts (lost / duplicate) | handed over / held |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        pg = "-" if r.label.startswith("SQLite") else f"{r.per_msg(r.pg_cpu):.3f}"
        lines.append(
            f"| {r.label} | {r.e2e_rate:,.0f} | {r.submit_p50:.1f} / {r.submit_p99:.1f} "
            f"| {r.receipt_p50:.1f} / {r.receipt_p99:.1f} | {r.per_msg(r.gw_cpu):.3f} | {pg} "
            f"| {r.per_msg(r.gw_cpu + r.pg_cpu):.3f} "
            f"| {r.receipts:,} of {r.accepted:,} ({r.lost} / {r.duplicates})"
            + (" CAP" if r.timed_out else "")
            + f" | {r.receipts_in['handed_over']:,} / {r.receipts_in['held']:,} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", "-n", type=int, default=6000, help="per configuration")
    p.add_argument("--sessions", "-k", type=int, default=6,
                   help="upstream transceivers, round-robin over the nodes")
    p.add_argument("--window", "-w", type=int, default=20, help="submit_sm outstanding/session")
    p.add_argument("--smsc-binds", type=int, default=6,
                   help="the SMSC's binds, shared by the nodes (at least the node count)")
    p.add_argument("--smsc-window", type=int, default=50)
    p.add_argument("--receipt-delay", type=float, default=0.05)
    p.add_argument("--receipt-hold", help="[[smsc]] receipt_hold (e.g. \"1s\"; default the "
                                          "gateway's, 10 s): how long a receipt that overtook "
                                          "its submit_sm_resp waits")
    p.add_argument("--duration-cap", type=float, default=90.0,
                   help="hard cap per configuration, seconds")
    p.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 3],
                   help="PostgreSQL node counts to run (after the SQLite node)")
    p.add_argument("--no-sqlite", action="store_true", help="skip the SQLite node")
    p.add_argument("--keep", action="store_true", help="keep the temp dirs")
    args = p.parse_args(argv)
    if max(args.nodes) > 3 or min(args.nodes) < 1:
        p.error("--nodes: 1 to 3")
    if args.smsc_binds < max(args.nodes):
        p.error("--smsc-binds: at least the largest node count")
    # load() reads these bench_e2e options.
    args.rate, args.independent, args.progress = 0.0, False, False
    args.password_hash = hash_password(PASSWORD)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows: list[Row] = []
    pg = PgStore(None)
    try:
        if not args.no_sqlite:
            rows.append(run_config("SQLite node (1 process)", 1, None, None, args))
        pg.open()
        for n in args.nodes:
            dsn = pg.dsn if n == args.nodes[0] else pg.server.create_database(f"{pg.name}_{n}")
            rows.append(run_config(f"PostgreSQL, {n} node{'s' if n > 1 else ''}", n, dsn, pg,
                                   args))
    except SetupError as exc:
        print(f"setup failed: {exc}", file=sys.stderr)
        return 2
    finally:
        pg.close(args.keep)
    print(f"\n{args.messages:,} messages per configuration, {args.sessions} transceivers x window "
          f"{args.window} (round-robin over the nodes), SMSC binds {args.smsc_binds} (shared by "
          f"the nodes) window {args.smsc_window}, receipt_delay {args.receipt_delay} s, "
          f"synchronous full; receipt_hold {args.receipt_hold or 'default'}; {pg.where()}\n")
    print(table(rows, args))
    bad = [r.label for r in rows if r.lost or r.duplicates or r.timed_out]
    if bad:
        print(f"FAIL: lost or duplicate receipts in {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
