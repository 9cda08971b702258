"""Binds under attack, through real sockets against the running gateway: a flood of bad
passwords from one address is locked out after a few scrypt runs while a customer on another
address still binds; scrypt runs a few at a time and once per password; refused binds log
bounded lines. The attacker binds from 127.0.0.2 (Linux routes all of 127/8 to lo)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio
from prometheus_client import REGISTRY

from gateway.config import ListenerConfig
from smpp.connection import Connection
from smpp.constants import Status
from smpp.pdu import BindTransceiver, Pdu
from smpp.session import Side
from tests.stack import running_stack

ATTACKER, CUSTOMER = "127.0.0.2", "127.0.0.1"


def listener(**changes: Any) -> tuple[ListenerConfig, ...]:
    # connection limits raised: these tests are about the bind decisions of a whole flood
    fields: dict[str, Any] = {"port": 0, "auth_failure_delay": 0.01, "bind_timeout": 10,
                              "max_unbound_per_address": 100}
    return (ListenerConfig(**(fields | changes)),)


class ScryptWatch:
    """Wraps hashlib.scrypt: counts runs per password and the most running at once."""

    def __init__(self, real: Callable[..., bytes], hold: float) -> None:
        self.real = real
        self.hold = hold  # extra seconds inside each run, so overlapping runs show
        self.runs: Counter[bytes] = Counter()
        self.running = 0
        self.peak = 0
        self._lock = threading.Lock()

    def __call__(self, password: bytes, **kwargs: Any) -> bytes:
        with self._lock:
            self.runs[bytes(password)] += 1
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            time.sleep(self.hold)
            return self.real(password, **kwargs)
        finally:
            with self._lock:
                self.running -= 1


@pytest.fixture
def scrypt(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScryptWatch]:
    watch = ScryptWatch(hashlib.scrypt, hold=0.02)
    monkeypatch.setattr(hashlib, "scrypt", watch)
    yield watch


async def _ignore(_conn: Connection, _pdu: Pdu) -> None:
    return None


async def bind(port: int, source: str, system_id: str = "demo",
               password: str = "demopass") -> int:
    """Bind from `source`; the bind_resp status (an accepted bind is unbound again)."""
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    conn = Connection(trio.SocketStream(sock), Side.ESME)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.run, _ignore)
        with trio.fail_after(30):
            resp = await conn.request(BindTransceiver(system_id=system_id, password=password))
            if resp.status == Status.ESME_ROK:
                await conn.unbind()
        await conn.aclose()
    return resp.status


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_flood_from_one_address_is_locked_out_and_a_clean_address_still_binds(
        tmp_path: Path, scrypt: ScryptWatch) -> None:
    lockouts = sample("smsgw_bind_lockouts_total")
    failures = {reason: sample("smsgw_bind_failures_total", reason=reason)
                for reason in ("bad_password", "locked_out")}
    statuses: list[int] = []

    async def guess(port: int) -> None:
        statuses.append(await bind(port, ATTACKER, password="guess"))

    lst = listener(auth_lockout_threshold=3, auth_failure_delay_max=0.05)
    async with running_stack(tmp_path, listeners=lst) as (gw, _):
        with structlog.testing.capture_logs() as logs:
            async with trio.open_nursery() as nursery:
                for _ in range(40):
                    nursery.start_soon(guess, gw.smpp_port)
                await trio.sleep(0.05)
                assert await bind(gw.smpp_port, CUSTOMER) == Status.ESME_ROK
    assert scrypt.runs[b"guess"] == 3  # the other 37 were refused without scrypt
    assert Counter(statuses) == {Status.ESME_RINVPASWD: 3, Status.ESME_RBINDFAIL: 37}
    events = Counter(e["event"] for e in logs)
    assert events["upstream.bind_lockout"] == 1 and events["upstream.bind_refused"] == 3
    assert sample("smsgw_bind_lockouts_total") == lockouts + 1
    counted = {reason: sample("smsgw_bind_failures_total", reason=reason) - before
               for reason, before in failures.items()}
    assert counted == {"bad_password": 3, "locked_out": 37}


async def test_scrypt_runs_at_most_auth_concurrency_at_once(
        tmp_path: Path, scrypt: ScryptWatch) -> None:
    async def guess(port: int, source: str) -> None:
        await bind(port, source, password="guess")

    # no failure delay: the answers to 16 failures against "demo" would otherwise grow to 16 s
    lst = listener(auth_concurrency=2, auth_failure_delay=0.0)
    async with running_stack(tmp_path, listeners=lst) as (gw, _), trio.open_nursery() as nursery:
        for i in range(2, 10):
            for _ in range(2):
                nursery.start_soon(guess, gw.smpp_port, f"127.0.0.{i}")
    assert scrypt.runs[b"guess"] == 16 and scrypt.peak == 2


async def test_parallel_binds_and_reconnects_of_one_customer_run_scrypt_once(
        tmp_path: Path, scrypt: ScryptWatch) -> None:
    cached = sample("smsgw_bind_verifications_total", how="cached")
    statuses: list[int] = []

    async def customer(port: int) -> None:
        statuses.append(await bind(port, CUSTOMER))

    async with running_stack(tmp_path) as (gw, _sim):
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(customer, gw.smpp_port)
        await customer(gw.smpp_port)  # a reconnect
    assert statuses == [Status.ESME_ROK] * 5
    assert scrypt.runs[b"demopass"] == 1
    assert sample("smsgw_bind_verifications_total", how="cached") == cached + 4


async def test_a_refused_bind_logs_a_bounded_line(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as (gw, _sim):
        with structlog.testing.capture_logs() as logs:
            # (a bind before the session is bound may be held to about 1 KiB by the session)
            status = await bind(gw.smpp_port, CUSTOMER, system_id="x" * 900)
    [refused] = [e for e in logs if e["event"] == "upstream.bind_refused"]
    assert len(json.dumps(refused)) < 400
    assert status == Status.ESME_RINVPASWD
