"""Reloading [[smsc]] (SIGHUP): an added SMSC binds and takes the route at once, unchanged
binds and upstream sessions stay up (the same connections), a removed SMSC drains (its queued
submits fail over, those on the wire are answered, their receipts still come in and reach the
upstream once) and then unbinds, a changed one rebinds, and one that cannot be built is
refused with nothing changed.

The daemon runs in the test's trio run from a real TOML file, two SMSC simulators on
127.0.0.1 are the operators, smpplib is the upstream ESME (as in tests/test_reload.py).
"""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog
import structlog.testing
import trio
import trustme

from gateway import daemon, lifecycle, metrics, shared_config
from gateway.config import SimulatorConfig, load_config
from gateway.model import State
from gateway.reload import Outcome, reload
from gateway.simulator import SmscSimulator
from tests.stack import SmpplibEsme, password_hash, wait_for

_HEAD = """\
[gateway]
node = "reload-smsc-test"
shutdown_timeout = "1s"

[store]
path = "{store}"

[http]
enabled = false

[[listener]]
host = "127.0.0.1"
port = 0
auth_failure_delay = "10ms"

[retry]
initial_delay = "100ms"
max_delay = "1s"

[[account]]
system_id = "demo"
password_hash = "{hash}"
throughput = 0

[[route]]
name = "default"
smscs = [{route}]
"""

_SMSC = """
[[smsc]]
name = "{name}"
host = "127.0.0.1"
port = {port}
system_id = "sim"
password = "simpass"
binds = 1
reconnect_delay = "50ms"
{extra}
"""


@dataclass
class Sims:
    a: SmscSimulator
    b: SmscSimulator

    def port(self, name: str) -> int:
        port = getattr(self, name).port
        assert port is not None
        return port


def write_config(path: Path, sims: Sims, smscs: dict[str, str], route: str) -> None:
    """[[smsc]] by name (on the simulator of that name) with their extra lines; the default
    route to `route`."""
    text = _HEAD.format(store=path.parent / "smsgw.sqlite3", hash=password_hash("demopass"),
                        route=f'"{route}"')
    for name, extra in smscs.items():
        text += _SMSC.format(name=name, port=sims.port(name), extra=extra)
    path.write_text(text)
    path.chmod(0o600)


@asynccontextmanager
async def gateway(tmp_path: Path, smscs: dict[str, str], route: str, *,
                  receipt_delay: float = 0.05, no_receipt: float = 0.0,
                  ) -> AsyncIterator[tuple[daemon.Running, Path, Sims]]:
    async with trio.open_nursery() as nursery:
        made = []
        for seed in (1, 2):
            sim = SmscSimulator(SimulatorConfig(
                port=0, control_port=0, receipt_delay=receipt_delay, seed=seed,
                no_receipt=no_receipt, delivered=1.0 - no_receipt))
            await nursery.start(sim.serve)
            made.append(sim)
        sims = Sims(*made)
        path = tmp_path / "gw.toml"
        write_config(path, sims, smscs, route)
        stop = trio.Event()
        running: daemon.Running = await nursery.start(
            functools.partial(daemon.run, load_config(path), stop.wait))
        await wait_for(lambda: all(c.is_up() for c in running.connectors.values()))
        yield running, path, sims
        stop.set()
        nursery.cancel_scope.cancel()


@pytest.fixture(autouse=True)
def quick_drain_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lifecycle, "DRAIN_POLL", 0.02)


async def bound(running: daemon.Running) -> SmpplibEsme:
    client = SmpplibEsme(running.smpp_port)
    await trio.to_thread.run_sync(client.bind)
    return client


async def submit(client: SmpplibEsme) -> str:
    """One message submitted and accepted; its gateway id."""
    def go() -> str:
        resps = len(client.resps)
        client.submit("33612345678", b"hello")
        client.read_until(lambda: len(client.resps) > resps)
        assert not client.errors
        message_id = client.resps[-1].message_id
        return message_id.decode() if isinstance(message_id, bytes) else str(message_id)
    return await trio.to_thread.run_sync(go)


async def receipts(client: SmpplibEsme, count: int) -> None:
    await trio.to_thread.run_sync(lambda: client.read_until(
        lambda: len(client.delivered) >= count))


def receipted(client: SmpplibEsme) -> list[str]:
    """The gateway ids the receipts the upstream got name, in order."""
    ids = []
    for pdu in client.delivered:
        match = re.search(rb"id:(\S+)", pdu.short_message)
        assert match is not None
        ids.append(match.group(1).decode())
    return ids


async def state_of(running: daemon.Running, message_id: str) -> State:
    msg = await running.store.get_message(message_id)
    assert msg is not None
    return msg.state


async def wait_final(running: daemon.Running, message_id: str) -> State:
    with trio.fail_after(10):
        while not (state := await state_of(running, message_id)).final:
            await trio.sleep(0.02)
    return state


def binds_gauge(name: str) -> float:
    return metrics.SMSC_BINDS.labels(name)._value.get()


async def test_reload_adds_an_smsc_and_routes_to_it_without_dropping_any_bind(
        tmp_path: Path) -> None:
    async with gateway(tmp_path, {"a": ""}, "a") as (gw, path, sims):
        esme = await bound(gw)
        first = await submit(esme)
        assert await wait_final(gw, first) is State.DELIVERED
        a_connector = gw.connectors["a"]
        a_sessions = sims.a.bound_sessions()
        upstream = set(gw.account_states["demo"].binds)
        assert len(a_sessions) == 1 and len(upstream) == 1
        write_config(path, sims, {"a": "", "b": ""}, "b")
        assert await reload(gw) is Outcome.APPLIED
        await wait_for(lambda: gw.connectors["b"].is_up())
        second = await submit(esme)
        assert await wait_final(gw, second) is State.DELIVERED
        assert (sims.a.stats.submits, sims.b.stats.submits) == (1, 1)
        await receipts(esme, 2)
        # nothing was rebound: the same operator and upstream connections, one each
        assert gw.connectors["a"] is a_connector
        assert sims.a.bound_sessions() == a_sessions and sims.a.stats.binds == 1
        assert set(gw.account_states["demo"].binds) == upstream
        assert binds_gauge("b") == 1
        assert set(gw.dispatcher.channels) == {"a", "b"}
        esme.client.disconnect()


async def test_a_removed_smsc_drains_its_receipts_then_unbinds_and_its_queue_fails_over(
        tmp_path: Path) -> None:
    """"a" sends one submit in 5 s: the first message is on it (accepted, receipt owed, the
    simulator sends it 2 s later) and the second queued, unsent, when the reload removes it:
    the second goes to "b", the first's receipt still comes in through "a" and is answered,
    the upstream gets one receipt for each, and "a" unbinds once it owes none."""
    async with gateway(tmp_path, {"a": "throughput = 0.2", "b": ""}, "a",
                       receipt_delay=2.0) as (gw, path, sims):
        esme = await bound(gw)
        first = await submit(esme)
        await wait_for(lambda: sims.a.stats.accepted == 1)
        second = await submit(esme)
        await wait_for(lambda: gw.connectors["a"].queued == 1)
        old = gw.connectors["a"]
        write_config(path, sims, {"b": ""}, "b")
        assert await reload(gw) is Outcome.APPLIED
        assert "a" not in gw.dispatcher.channels and gw.draining == [old]
        await wait_for(lambda: sims.b.stats.accepted == 1)  # the second failed over to "b"
        assert old.sessions == 1  # still bound: the first's receipt is owed
        assert sims.a.stats.submits == 1 and sims.a.stats.receipts_sent == 0
        assert await wait_final(gw, second) is State.DELIVERED
        assert await wait_final(gw, first) is State.DELIVERED
        msg = await gw.store.get_message(first)
        assert msg is not None and msg.connector == "a"  # it kept its plan
        await wait_for(lambda: not gw.draining)
        await wait_for(lambda: not sims.a.bound_sessions())
        assert sims.a.stats.receipts_sent == 1 and old.sessions == 0
        assert "a" not in gw.connectors
        # one receipt each upstream: a third message's receipt comes after them, no other
        third = await submit(esme)
        await receipts(esme, 3)
        assert sorted(receipted(esme)) == sorted([first, second, third])
        assert gw.config.smscs.keys() == {"b"}
        esme.client.disconnect()


async def test_a_removed_smsc_that_owes_receipts_unbinds_after_the_drain_limit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lifecycle, "RECEIPT_DRAIN", 0.3)
    async with gateway(tmp_path, {"a": "", "b": ""}, "a", no_receipt=1.0) as (gw, path, sims):
        esme = await bound(gw)
        message_id = await submit(esme)
        await wait_for(lambda: sims.a.stats.accepted == 1)
        await wait_for(lambda: gw.connectors["a"].unanswered == 0)
        write_config(path, sims, {"b": ""}, "b")
        started = trio.current_time()
        assert await reload(gw) is Outcome.APPLIED
        await wait_for(lambda: not gw.draining)
        assert trio.current_time() - started >= 0.3
        assert not sims.a.bound_sessions()
        # its receipt never came: the message stays in flight (until its validity ends)
        assert await state_of(gw, message_id) is State.IN_FLIGHT
        esme.client.disconnect()


async def test_a_changed_smsc_rebinds_under_its_name(tmp_path: Path) -> None:
    async with gateway(tmp_path, {"a": ""}, "a") as (gw, path, sims):
        esme = await bound(gw)
        old, old_sessions = gw.connectors["a"], sims.a.bound_sessions()
        write_config(path, sims, {"a": "window = 5"}, "a")
        assert await reload(gw) is Outcome.APPLIED
        new = gw.connectors["a"]
        assert new is not old and new.config.window == 5
        assert gw.dispatcher.channels["a"].capacity == 5
        await wait_for(lambda: not gw.draining and new.is_up())
        sessions = sims.a.bound_sessions()
        assert len(sessions) == 1 and sessions[0] not in old_sessions
        assert old.sessions == 0 and binds_gauge("a") == 1
        message_id = await submit(esme)
        assert await wait_final(gw, message_id) is State.DELIVERED
        await receipts(esme, 1)
        esme.client.disconnect()


async def test_an_smsc_whose_tls_files_do_not_load_is_refused_and_nothing_changes(
        tmp_path: Path) -> None:
    async with gateway(tmp_path, {"a": ""}, "a") as (gw, path, sims):
        esme = await bound(gw)
        before, connectors = gw.config, dict(gw.connectors)
        sessions = sims.a.bound_sessions()
        bad_ca = tmp_path / "ca.pem"
        bad_ca.write_text("not a certificate\n")
        write_config(path, sims, {"a": "", "b": f'tls = true\ntls_ca = "{bad_ca}"'}, "b")
        assert await reload(gw) is Outcome.REFUSED
        assert gw.config is before and gw.connectors == connectors
        assert set(gw.dispatcher.channels) == {"a"} and not gw.draining
        assert sims.a.bound_sessions() == sessions and not sims.b.bound_sessions()
        message_id = await submit(esme)
        assert await wait_final(gw, message_id) is State.DELIVERED
        assert sims.a.stats.submits == 1
        esme.client.disconnect()


async def test_an_smsc_whose_tls_files_go_away_before_it_is_built_is_refused_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CA file is readable when the file is checked and gone when the connector is
    built: nothing is applied, not even the other new SMSC nor the route."""
    async with gateway(tmp_path, {"a": ""}, "a") as (gw, path, sims):
        before = gw.config
        ca = tmp_path / "ca.pem"
        trustme.CA().cert_pem.write_to_path(str(ca))
        write_config(path, sims, {"a": "", "b": f'tls = true\ntls_ca = "{ca}"'}, "b")

        def load_then_lose_the_ca(source: Path) -> object:
            config = load_config(source)
            ca.unlink()
            return config
        monkeypatch.setattr(shared_config, "load_config", load_then_lose_the_ca)
        with structlog.testing.capture_logs() as logs:
            assert await reload(gw) is Outcome.REFUSED
        refused = [e for e in logs if e["event"] == "config.reload_refused"]
        assert len(refused) == 1 and 'smsc "b".tls_ca: expected' in refused[0]["detail"]
        assert "cannot read" in refused[0]["detail"]
        assert gw.config is before and set(gw.connectors) == {"a"}
        assert set(gw.dispatcher.channels) == {"a"}
