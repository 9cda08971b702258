"""Rule: three gateway processes on one PostgreSQL store, one of them SIGKILLed five times at
random points under load (once during its restart): no acknowledged message is lost, each
gets one final state and its final receipt upstream (on a node that lives), and the SMSC sees
at most the killed node's in-flight windows again."""

from __future__ import annotations

import collections
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

from gateway.model import FINAL_STATES
from gateway.passwords import hash_password
from smpp.receipt import parse_receipt
from tests.procs import Proc, free_port, start_simulator
from tests.stack import SmpplibEsme
from tests.test_durability import GATEWAY_TOML, SIMULATOR_TOML

KILLS = 5
WINDOW, BINDS = 10, 3  # per SMSC bind; the SMSC's binds, one slot per node
FINAL = {state.value for state in FINAL_STATES}


class Upstream:
    """Submitting sessions on the nodes that live and one receiver on node a (never
    killed): what was acknowledged, and the receipts per message id."""

    def __init__(self) -> None:
        self.acked: dict[str, str] = {}  # message id -> destination
        self.receipts: dict[str, list[str]] = collections.defaultdict(list)
        self.lock = threading.Lock()
        self.sent = 0

    def submit_for(self, port: int, seconds: float, prefix: str) -> None:
        """Submit on a node for that long (or until its connection breaks under a kill)."""
        esme = SmpplibEsme(port)
        pending: dict[int, str] = {}  # sequence number -> destination

        def answered(pdu: Any, **_kw: Any) -> None:
            destination = pending.pop(pdu.sequence, None)
            if destination is not None and pdu.status == 0:
                with self.lock:
                    self.acked[pdu.message_id.decode()] = destination

        esme.client.set_message_sent_handler(answered)
        try:
            esme.bind("transmitter")
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                with self.lock:
                    self.sent += 1
                    destination = f"{prefix}{self.sent:07d}"
                pdu = esme.client.send_message(
                    source_addr_ton=5, source_addr="ACME", dest_addr_ton=1, dest_addr_npi=1,
                    destination_addr=destination, short_message=b"kill test",
                    registered_delivery=1)
                pending[pdu.sequence] = destination
                while len(pending) > 20:  # a window of 20: read answers as they come
                    esme.client.read_once()
            esme.read_until(lambda: not pending, timeout=10)
            esme.close()
        except Exception:  # killed under it: what was not answered was not acknowledged
            return

    def receive(self, esme: SmpplibEsme, stop: threading.Event) -> None:
        """Read receipts until the socket is closed under it (at the end)."""

        def received(pdu: Any, **_kw: Any) -> None:
            parsed = parse_receipt(pdu.short_message)
            if parsed is not None:
                with self.lock:
                    self.receipts[parsed.id].append(parsed.stat)

        esme.client.set_message_received_handler(received)
        while not stop.is_set():
            try:
                esme.client.read_once()
            except Exception:
                if stop.is_set():
                    return
                raise


def test_a_node_killed_five_times_under_load_loses_nothing_acknowledged(
        tmp_path: Path, pg_dsn: str) -> None:
    seed = int(os.environ.get("SMSGW_KILL_SEED") or random.SystemRandom().randrange(10**9))
    print(f"\nthree-node kill test seed {seed}; logs in {tmp_path}")
    rnd = random.Random(seed)
    (tmp_path / "sim.toml").write_text(SIMULATOR_TOML.format(seed=seed))
    procs: list[Proc] = []
    upstream = Upstream()
    stop_receiving = threading.Event()
    receiver: threading.Thread | None = None
    try:
        sim, ready = start_simulator(tmp_path / "sim.toml")
        procs.append(sim)
        control = f"http://127.0.0.1:{ready['control_port']}"
        password = hash_password("demopass")
        ports = {name: free_port() for name in "abc"}
        for name, port in ports.items():
            store = (f'backend = "postgresql"\ndsn = "{pg_dsn}"\nshared = true\n'
                     f'[admin]\nsocket = "{tmp_path / f"{name}.sock"}"')
            (tmp_path / f"{name}.toml").write_text(GATEWAY_TOML.format(
                node=name, store=store, port=port, listener_window=20,
                password_hash=password, sim_port=ready["port"], binds=BINDS, throughput=0,
                window=WINDOW))
            (tmp_path / f"{name}.toml").chmod(0o600)

        def start(name: str, life: int) -> Proc:
            proc = Proc(f"{name}-{life}", ["run", "--config", str(tmp_path / f"{name}.toml")],
                        tmp_path)
            procs.append(proc)
            return proc

        for name in "ab":
            start(name, 0).wait_event("daemon.ready", timeout=30)
        receiving = SmpplibEsme(ports["a"])
        receiving.bind("receiver")
        receiver = threading.Thread(target=upstream.receive, args=(receiving, stop_receiving),
                                    daemon=True)
        receiver.start()
        during_restart = rnd.randrange(1, KILLS + 1)
        for life in range(1, KILLS + 1):
            victim = start("c", life)
            if life == during_restart:  # killed while it starts (adopting, binding)
                victim.wait_event("store.node_registered", timeout=30)
                time.sleep(rnd.uniform(0.0, 0.3))  # the drawn kill point
                victim.kill()
                continue
            victim.wait_event("daemon.ready", timeout=30)
            load = [threading.Thread(target=upstream.submit_for,
                                     args=(ports[n], rnd.uniform(1.0, 2.0), f"33{life}{i}"))
                    for i, n in enumerate("abc")]
            for thread in load:
                thread.start()
            time.sleep(rnd.uniform(0.3, 1.5))  # the drawn kill point, under load
            victim.kill()
            for thread in load:
                thread.join(timeout=60)
        start("c", KILLS + 1).wait_event("daemon.ready", timeout=30)  # back for good
        acked = dict(upstream.acked)
        deadline = time.monotonic() + 90
        while True:  # every acknowledged message final, its receipt upstream
            with psycopg.connect(pg_dsn) as conn:
                states = dict(conn.execute(
                    "SELECT id, state FROM messages WHERE id = ANY(%s)", (list(acked),)))
            with upstream.lock:
                missing = [m for m in acked if m not in upstream.receipts]
            if all(states.get(m) in FINAL for m in acked) and not missing:
                break
            assert time.monotonic() < deadline, (
                f"seed {seed}: {sum(states.get(m) not in FINAL for m in acked)} of {len(acked)}"
                f" not final, {len(missing)} without a receipt upstream")
            time.sleep(0.2)
        operator = httpx.get(f"{control}/messages", params={"limit": 100_000}, timeout=10)
        operator.raise_for_status()
    finally:
        stop_receiving.set()
        if receiver is not None:
            receiving.client._socket.close()  # its blocking read ends
            receiver.join(timeout=10)
        for proc in reversed(procs):
            proc.stop(timeout=10)
    assert len(acked) > 100, f"seed {seed}: too little load ({len(acked)} acknowledged)"
    assert set(states) == set(acked), f"seed {seed}: acknowledged messages lost"
    by_destination = collections.Counter(r["destination_addr"] for r in operator.json()["messages"])
    sent_twice = sum(n - 1 for n in by_destination.values())
    bound = KILLS * WINDOW * BINDS  # each death: at most the dead node's windows again
    assert sent_twice <= bound, f"seed {seed}: {sent_twice} submits sent again (bound {bound})"
    receipts_twice = sum(len(r) - 1 for m, r in upstream.receipts.items() if m in acked)
    print(f"acknowledged {len(acked)}; submits sent again {sent_twice}; receipts upstream "
          f"sent again {receipts_twice}")
