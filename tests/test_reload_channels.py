"""Reloading [[rcs]] and [[voice]] (SIGHUP): an agent or voice connector added by a reload
takes the routers' traffic at once and its provider's reports reach the gateway; one removed
takes no new message, and a message that was waiting on it is still revoked through it, then
goes on to SMS; the SMSC bind and the upstream session stay up throughout.

The daemon runs in the test's trio run from a real TOML file; the built-in simulator (started
by the test) is the SMSC, the RBM platform and the voice provider on 127.0.0.1.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from gateway import daemon
from gateway.config import SimulatorConfig, load_config
from gateway.rbm_simulator import CAPABLE, OFFLINE, RbmSimulator
from gateway.reload import Outcome, reload
from gateway.simulator import SmscSimulator
from tests.omni import receipt_stat
from tests.procs import free_port
from tests.stack import SmpplibEsme, password_hash, wait_for

PHONE = "33612345678"
TOKEN = "0123456789abcdef0123456789abcdef"

_HEAD = """\
[gateway]
node = "reload-channels-test"
shutdown_timeout = "1s"

[store]
path = "{store}"

[http]
host = "127.0.0.1"
port = {http_port}

[[listener]]
host = "127.0.0.1"
port = 0

[[account]]
system_id = "omni"
password_hash = "{hash}"
throughput = 0
channels = ["rcs", "sms"]
rcs_wait = "2s"

[[smsc]]
name = "sim"
host = "127.0.0.1"
port = {smpp_port}
system_id = "sim"
password = "simpass"

[[route]]
name = "default"
smscs = ["sim"]
"""

_RCS = """
[[rcs]]
name = "rbm"
agent_id = "smsgw-demo-agent"
credentials_file = "{credentials}"
base_url = "http://127.0.0.1:{rcs_port}"
token_url = "http://127.0.0.1:{rcs_port}/token"
sms_sender = "ACME"
push_token = "{token}"

[[router]]
name = "omni"
type = "account"
accounts = ["omni"]
channels = ["rcs:rbm", "sms:sim"]
"""


class World:
    def __init__(self, gw: daemon.Running, sim: SmscSimulator, path: Path, values: dict[str, object]
                 ) -> None:
        self.gw, self.sim, self.path, self.values = gw, sim, path, values

    @property
    def rbm(self) -> RbmSimulator:
        assert self.sim.rcs is not None
        return self.sim.rcs.rbm

    def write(self, rcs: bool) -> None:
        self.path.write_text(_HEAD.format(**self.values) + (_RCS.format(**self.values)
                                                           if rcs else ""))
        self.path.chmod(0o600)

    async def send(self, esme: SmpplibEsme) -> None:
        """Submit one message on a bound session and read until its receipt."""
        before = len(esme.delivered)

        def go() -> None:
            esme.submit(PHONE, b"hello", source_addr="SHOP")
            esme.read_until(lambda: len(esme.delivered) > before, timeout=20)

        await trio.to_thread.run_sync(go)


@asynccontextmanager
async def world(tmp_path: Path, rcs: bool) -> AsyncIterator[World]:
    credentials = tmp_path / "rbm.json"
    credentials.write_text(json.dumps({"client_id": "smsgw", "client_secret": "smsgw-secret"}))
    sim_config = SimulatorConfig(port=0, control_port=0, receipt_delay=0.05, seed=7, rcs=True,
                                 rcs_port=0, rcs_deliver_delay=0.2, rcs_read_delay=0.2,
                                 rcs_push_token=TOKEN)
    async with trio.open_nursery() as nursery:
        sim = SmscSimulator(sim_config, window=sim_config.window)
        await nursery.start(sim.serve)
        values: dict[str, object] = {
            "store": tmp_path / "smsgw.sqlite3", "http_port": free_port(),
            "hash": password_hash("omnipass"), "smpp_port": sim.port,
            "credentials": credentials, "rcs_port": sim.rcs_port, "token": TOKEN}
        w = World(None, sim, tmp_path / "gw.toml", values)  # type: ignore[arg-type]
        w.write(rcs)
        stop = trio.Event()
        w.gw = await nursery.start(functools.partial(daemon.run, load_config(w.path), stop.wait))
        assert sim.rcs is not None and w.gw.http_port is not None
        sim.rcs.gateway_listening("127.0.0.1", w.gw.http_port)
        await wait_for(lambda: all(c.is_up() for c in w.gw.connectors.values()))
        yield w
        stop.set()
        nursery.cancel_scope.cancel()


async def test_a_reload_adds_an_rcs_agent_whose_events_reach_the_gateway(tmp_path: Path) -> None:
    async with world(tmp_path, rcs=False) as w:
        esme = SmpplibEsme(w.gw.smpp_port, system_id="omni", password="omnipass")
        await trio.to_thread.run_sync(esme.bind)
        sms_session = w.gw.connectors["sim"].sessions
        await w.send(esme)  # no agent yet: SMS
        assert [r.source_addr for r in w.sim.submitted] == ["SHOP"]
        w.write(rcs=True)
        assert await reload(w.gw) is Outcome.APPLIED
        w.rbm.set_state("+" + PHONE, CAPABLE)
        await w.send(esme)  # the new agent takes it; its DELIVERED event comes back
        assert receipt_stat_of(esme, -1) == "DELIVRD"
        assert len(w.rbm.messages) == 1 and len(w.sim.submitted) == 1
        assert w.gw.connectors["sim"].sessions == sms_session  # the SMSC bind stayed up
        esme.client.disconnect()


async def test_a_reload_removing_an_agent_still_revokes_its_waiting_message_then_sends_sms(
        tmp_path: Path) -> None:
    async with world(tmp_path, rcs=True) as w:
        w.rbm.set_state("+" + PHONE, OFFLINE)  # the RCS message waits: never delivered
        esme = SmpplibEsme(w.gw.smpp_port, system_id="omni", password="omnipass")
        await trio.to_thread.run_sync(esme.bind)
        await trio.to_thread.run_sync(
            functools.partial(esme.submit, PHONE, b"hello", source_addr="SHOP"))
        await wait_for(lambda: bool(w.rbm.messages))
        w.write(rcs=False)
        assert await reload(w.gw) is Outcome.APPLIED
        assert "rbm" not in w.gw.dispatcher.channels
        await trio.to_thread.run_sync(
            functools.partial(esme.read_until, lambda: bool(esme.delivered), 20))
        assert receipt_stat(esme) == "DELIVRD" and len(esme.delivered) == 1
        (held,) = w.rbm.messages.values()
        assert held.state == "REVOKED"  # revoked through the removed agent: never both
        assert [(r.source_addr, r.destination_addr) for r in w.sim.submitted] == [
            ("ACME", PHONE)]
        await w.send(esme)  # the next one: SMS only, no agent any more
        assert len(w.rbm.messages) == 1
        esme.client.disconnect()


def receipt_stat_of(esme: SmpplibEsme, index: int) -> str:
    text = esme.delivered[index].short_message.decode()
    return text.split("stat:")[1].split()[0]
