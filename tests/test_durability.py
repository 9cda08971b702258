"""Durability: a gateway SIGKILLed while a client is submitting loses nothing it acknowledged.

The rule: every message whose submit_sm_resp was OK reaches the operator and its receipt
reaches the upstream, even if the gateway is killed without warning mid-traffic. Operator
duplicates are allowed only for what could have been in flight at the kill (binds x window).
The simulator and the gateway run as real processes; smpplib's Client is the upstream ESME.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import smpplib.client
import smpplib.consts
import smpplib.exceptions

from gateway.passwords import hash_password
from smpp.receipt import parse_receipt
from tests.procs import Proc, ProcessExited, free_port

TOTAL_MAX = 2000  # submits at most, over the whole test
KILL_AFTER = 600  # OK submit_sm_resp before the gateway is SIGKILLed
CLIENT_WINDOW = 20  # submit_sm the client keeps outstanding
SMSC_BINDS, SMSC_WINDOW = 2, 50  # the gateway's operator side: at most 100 in flight
RECEIPT_DEADLINE = 40.0

_SIM_TOML = """\
[simulator]
host = "127.0.0.1"
port = 0
system_id = "sim"
password = "simpass"
control_host = "127.0.0.1"
control_port = 0
receipt_delay = "200ms"
delivered = 1.0
seed = 11
"""

_GW_TOML = """\
[gateway]
node = "durability"
log_level = "info"

[store]
path = "{store}"

[metrics]
enabled = false

[retry]
initial_delay = "200ms"
max_delay = "1s"

[[listener]]
host = "127.0.0.1"
port = {port}
auth_failure_delay = "10ms"
response_timeout = "5s"

[[account]]
system_id = "demo"
password_hash = "{password_hash}"

[[smsc]]
name = "sim"
host = "127.0.0.1"
port = {sim_port}
system_id = "sim"
password = "simpass"
binds = {binds}
window = {window}
reconnect_delay = "50ms"
reconnect_delay_max = "500ms"
response_timeout = "5s"
receipt_hold = "2s"

[[route]]
name = "default"
smscs = ["sim"]
"""

_BROKEN = (smpplib.exceptions.ConnectionError, smpplib.exceptions.PDUError, OSError)


class Upstream:
    """smpplib's Client bound as demo (transceiver); records acks and receipts. Blocking:
    run it in a thread."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.client = smpplib.client.Client("127.0.0.1", port, timeout=timeout,
                                            allow_unknown_opt_params=True)
        self.client.set_message_sent_handler(self._on_resp)
        self.client.set_message_received_handler(self._on_deliver)
        self.client.set_error_pdu_handler(lambda pdu: None)  # status checked in _on_resp
        self.sent: dict[int, str] = {}  # sequence -> destination
        self.acked: dict[str, str] = {}  # gateway message id -> destination (status OK only)
        self.refused = 0  # submit_sm_resp with an error status
        self.responses = 0
        self.receipts: dict[str, str] = {}  # receipted message id -> stat
        self.receipt_pdus = 0
        self.ended_by: BaseException | None = None
        self.reached = threading.Event()  # KILL_AFTER acks seen

    def bind(self) -> None:
        self.client.connect()
        self.client.bind_transceiver(system_id="demo", password="demopass")

    def _on_resp(self, pdu: Any, **_: Any) -> None:
        if pdu.command != "submit_sm_resp":
            return
        self.responses += 1
        destination = self.sent.get(pdu.sequence)
        if pdu.status == smpplib.consts.SMPP_ESME_ROK and destination is not None:
            self.acked[pdu.message_id.rstrip(b"\0").decode()] = destination
            if len(self.acked) >= KILL_AFTER:
                self.reached.set()
        else:
            self.refused += 1

    def _on_deliver(self, pdu: Any, **_: Any) -> None:
        if pdu.command != "deliver_sm" or not pdu.esm_class & 0x04:
            return
        self.receipt_pdus += 1
        parsed = parse_receipt(pdu.short_message)
        message_id = (pdu.receipted_message_id or b"").rstrip(b"\0").decode()
        if not message_id and parsed is not None:
            message_id = parsed.id
        self.receipts[message_id] = parsed.stat if parsed is not None else "?"

    def submit_until_broken(self) -> None:
        """Submit distinct messages (window CLIENT_WINDOW) until the connection breaks; after
        TOTAL_MAX submits, only read. Never raises: the breaking error is kept in ended_by."""
        try:
            self.bind()
            n = 0
            while True:
                while n < TOTAL_MAX and n - self.responses < CLIENT_WINDOW:
                    destination = f"3361{n:07d}"
                    pdu = self.client.send_message(
                        source_addr_ton=smpplib.consts.SMPP_TON_ALNUM, source_addr="ACME",
                        dest_addr_ton=smpplib.consts.SMPP_TON_INTL,
                        dest_addr_npi=smpplib.consts.SMPP_NPI_ISDN,
                        destination_addr=destination, short_message=f"durable {n}".encode(),
                        registered_delivery=1)
                    self.sent[pdu.sequence] = destination
                    n += 1
                self.client.read_once()
        except _BROKEN as exc:
            self.ended_by = exc
        finally:
            self.reached.set()  # never leave the test waiting, whatever happened
            with contextlib.suppress(Exception):
                self.client.disconnect()

    def collect(self, wanted: set[str], already: set[str], timeout: float) -> None:
        """Read receipts (smpplib acks each deliver_sm) until every id of ``wanted`` has one,
        counting ``already`` as had; stops quietly at the deadline."""
        deadline = time.monotonic() + timeout
        try:
            self.bind()
            while not wanted <= already | self.receipts.keys():
                if time.monotonic() > deadline:
                    break
                self.client.read_once()
        except _BROKEN as exc:
            self.ended_by = exc
        finally:
            with contextlib.suppress(Exception):
                self.client.unbind()
            with contextlib.suppress(Exception):
                self.client.disconnect()


def _start_gateway(name: str, config: Path, directory: Path, procs: list[Proc]
                   ) -> tuple[Proc, int]:
    """Start `smsgw run` (kept in ``procs`` for the final cleanup); wait for daemon.ready."""
    gateway = Proc(name, ["run", "--config", str(config)], directory)
    procs.append(gateway)
    ready = gateway.wait_event("daemon.ready", timeout=20)
    return gateway, int(ready["smpp_ports"][0])


def test_acknowledged_messages_survive_a_sigkill_of_the_gateway(tmp_path: Path) -> None:
    started = time.monotonic()
    procs: list[Proc] = []
    try:
        sim_toml = tmp_path / "sim.toml"
        sim_toml.write_text(_SIM_TOML)
        sim = Proc("simulator", ["simulate-smsc", "--config", str(sim_toml)], tmp_path)
        procs.append(sim)
        sim_ready = sim.wait_event("simulator.ready", timeout=20)
        control = f"http://127.0.0.1:{sim_ready['control_port']}"
        assert httpx.get(f"{control}/stats", timeout=5).status_code == 200

        gw_toml = tmp_path / "gw.toml"
        password_hash = hash_password("demopass")
        for _attempt in range(5):  # a free port can be taken before the gateway binds it
            gw_toml.write_text(_GW_TOML.format(
                store=tmp_path / "store" / "smsgw.sqlite3", port=free_port(),
                password_hash=password_hash, sim_port=sim_ready["port"],
                binds=SMSC_BINDS, window=SMSC_WINDOW))
            try:
                gateway, port = _start_gateway("gateway-1", gw_toml, tmp_path, procs)
            except ProcessExited as exc:
                if "in use" not in exc.proc.tail():
                    raise
                continue
            break
        else:
            raise AssertionError("no free port for the gateway after 5 attempts")

        # Life 1: submit, and SIGKILL the gateway in the middle of it.
        first = Upstream(port)
        submitter = threading.Thread(target=first.submit_until_broken, daemon=True)
        submitter.start()
        assert first.reached.wait(timeout=30), "the client never got its acknowledgements"
        assert first.ended_by is None, f"the client stopped before the kill: {first.ended_by!r}"
        acked_at_kill = len(first.acked)
        gateway.kill()
        at_kill = httpx.get(f"{control}/stats", timeout=5).json()
        submitter.join(timeout=20)
        assert not submitter.is_alive(), "the client did not notice the gateway's death"
        assert first.refused == 0, "the gateway refused submits before the kill"
        acked = dict(first.acked)
        assert len(acked) >= KILL_AFTER
        assert len(first.sent) < TOTAL_MAX, "the kill came after the client had finished"

        # Life 2: same config and store; a new client collects the missing receipts.
        gateway, port = _start_gateway("gateway-2", gw_toml, tmp_path, procs)
        second = Upstream(port, timeout=1.0)
        collector = threading.Thread(
            target=second.collect, args=(set(acked), set(first.receipts), RECEIPT_DEADLINE),
            daemon=True)
        collector.start()
        collector.join(timeout=RECEIPT_DEADLINE + 15)
        assert not collector.is_alive(), "the receipt collector hung"

        receipts = {**first.receipts, **second.receipts}
        reply = httpx.get(f"{control}/messages", params={"limit": 100_000}, timeout=10)
        reply.raise_for_status()
        at_operator = collections.Counter(m["destination_addr"] for m in reply.json()["messages"])
        duplicated = {d: c for d, c in at_operator.items() if c > 1}
        extra_copies = sum(c - 1 for c in duplicated.values())
        missing_receipts = sorted(set(acked) - receipts.keys())
        missing_at_operator = sorted(d for d in acked.values() if d not in at_operator)
        print(f"\nsubmitted {len(first.sent)}, acknowledged {len(acked)} ({acked_at_kill} when "
              f"the kill was decided), client ended by {first.ended_by!r}; the operator had "
              f"{at_kill['records']} submits at the kill")
        print(f"operator received {sum(at_operator.values())} submits for "
              f"{len(at_operator)} destinations; {len(duplicated)} destinations duplicated "
              f"({extra_copies} extra copies; bound {SMSC_BINDS * SMSC_WINDOW})")
        print(f"receipts: {len(first.receipts)} before the kill, {len(second.receipts)} after "
              f"({second.receipt_pdus} deliver_sm, "
              f"{len(first.receipts.keys() & second.receipts.keys())} sent again); "
              f"acknowledged without receipt: "
              f"{len(missing_receipts)}; at operator missing: {len(missing_at_operator)}")

        # (b) the operator got every acknowledged message
        assert not missing_at_operator, (
            f"{len(missing_at_operator)} acknowledged messages never reached the operator, "
            f"e.g. {missing_at_operator[:5]}")
        # (a) and every one of them has its receipt upstream, across both lives
        assert not missing_receipts, (
            f"{len(missing_receipts)} acknowledged messages have no receipt upstream, "
            f"e.g. {missing_receipts[:5]}")
        assert all(receipts[m] == "DELIVRD" for m in acked), "the operator delivered them all"
        # (c) duplicates bounded by what could be in flight towards the operator at the kill
        assert len(duplicated) <= SMSC_BINDS * SMSC_WINDOW
        assert extra_copies <= SMSC_BINDS * SMSC_WINDOW

        # (d) a clean shutdown on SIGTERM
        code, clean = gateway.stop(timeout=15)
        assert clean, "the gateway ignored SIGTERM for 15 s"
        assert code == 0, f"the gateway exited with {code}:\n{gateway.tail()}"
        elapsed = time.monotonic() - started
        print(f"run time {elapsed:.1f}s")
        assert elapsed < 60
    finally:
        for proc in reversed(procs):
            proc.stop(timeout=10)
