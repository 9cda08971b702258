"""Configuration reload (SIGHUP): accounts, routes and rules change while the daemon runs;
unchanged upstream sessions and SMSC binds stay up; a config that does not load or cannot be
applied is refused with a logged error and the running one is kept whole.

The daemon runs in the test's trio run from a real TOML file (the reload reads the file
again), smpplib is the ESME, the built-in simulator the SMSC; the last test sends SIGHUP to a
real daemon process and reads its systemd notifications.
"""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import smpplib.consts
import trio

from gateway import daemon, metrics
from gateway.config import SimulatorConfig, load_config
from gateway.reload import Outcome, reload
from gateway.simulator import SmscSimulator
from tests.procs import Proc, free_port
from tests.stack import SmpplibEsme, password_hash, wait_for
from tests.test_systemd import NotifySocket

_HEAD = """\
[gateway]
node = "reload-test"
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
initial_delay = "200ms"
max_delay = "1s"

[[smsc]]
name = "a"
host = "127.0.0.1"
port = {sim_port}
system_id = "sim"
password = "simpass"
binds = 1
reconnect_delay = "50ms"

[[smsc]]
name = "b"
host = "127.0.0.1"
port = {sim_port}
system_id = "sim"
password = "simpass"
binds = 1
reconnect_delay = "50ms"
"""

_ACCOUNT = """
[[account]]
system_id = "{name}"
password_hash = "{hash}"
throughput = 0
"""

_ROUTE = """
[[route]]
name = "default"
smscs = ["{smsc}"]
"""

_SEGMENTS_RULE = """
[rules]
pipeline = ["segments"]
max_segments = 1
"""


def write_config(path: Path, sim_port: int, accounts: dict[str, str], smsc: str = "a",
                 extra: str = "") -> None:
    text = _HEAD.format(store=path.parent / "smsgw.sqlite3", sim_port=sim_port)
    for name, password in accounts.items():
        text += _ACCOUNT.format(name=name, hash=password_hash(password))
    text += _ROUTE.format(smsc=smsc) + extra
    path.write_text(text)
    path.chmod(0o600)


@asynccontextmanager
async def daemon_from_file(tmp_path: Path, accounts: dict[str, str]
                           ) -> AsyncIterator[tuple[daemon.Running, Path, int]]:
    sim_config = SimulatorConfig(port=0, control_port=0, receipt_delay=0.05, seed=7)
    async with trio.open_nursery() as nursery:
        simulator = SmscSimulator(sim_config, window=sim_config.window)
        await nursery.start(simulator.serve)
        assert simulator.port is not None
        path = tmp_path / "gw.toml"
        write_config(path, simulator.port, accounts)
        stop = trio.Event()
        running: daemon.Running = await nursery.start(
            functools.partial(daemon.run, load_config(path), stop.wait))
        await wait_for(lambda: all(c.is_up() for c in running.connectors.values()))
        yield running, path, simulator.port
        stop.set()
        nursery.cancel_scope.cancel()


def esme(running: daemon.Running, system_id: str, password: str) -> SmpplibEsme:
    return SmpplibEsme(running.smpp_port, system_id=system_id, password=password)


async def bind(client: SmpplibEsme) -> None:
    await trio.to_thread.run_sync(client.bind)


async def bind_refused(client: SmpplibEsme) -> bool:
    def attempt() -> bool:
        try:
            client.bind()
        except smpplib.exceptions.PDUError:
            return True
        finally:
            client.client.disconnect()
        return False
    return await trio.to_thread.run_sync(attempt)


async def submit(client: SmpplibEsme, text: bytes = b"hello") -> int:
    """Submit one message on a bound client; its submit_sm_resp command_status."""
    def go() -> int:
        resps, errors = len(client.resps), len(client.errors)
        client.submit("33612345678", text)
        client.read_until(lambda: len(client.resps) > resps or len(client.errors) > errors)
        return int(client.errors[-1].status) if len(client.errors) > errors else 0
    return await trio.to_thread.run_sync(go)


def attempts(smsc: str) -> float:
    return metrics.ATTEMPTS.labels(smsc)._value.get()


def reloads(outcome: str) -> float:
    return metrics.CONFIG_RELOADS.labels(outcome)._value.get()


async def test_reload_adds_an_account_and_keeps_the_sessions_of_unchanged_ones_bound(
        tmp_path: Path) -> None:
    async with daemon_from_file(tmp_path, {"demo": "demopass"}) as (gw, path, sim_port):
        demo = esme(gw, "demo", "demopass")
        await bind(demo)
        assert await bind_refused(esme(gw, "newbie", "newpass"))
        write_config(path, sim_port, {"demo": "demopass", "newbie": "newpass"})
        assert await reload(gw) is Outcome.APPLIED
        newbie = esme(gw, "newbie", "newpass")
        await bind(newbie)
        assert await submit(newbie) == 0
        assert await submit(demo) == 0  # the session bound before the reload is untouched
        assert len(gw.account_states["demo"].binds) == 1
        demo.client.disconnect()
        newbie.client.disconnect()


async def test_reload_unbinds_the_sessions_of_an_account_whose_password_changed(
        tmp_path: Path) -> None:
    async with daemon_from_file(tmp_path, {"demo": "demopass", "other": "otherpw"}) as (
            gw, path, sim_port):
        demo, other = esme(gw, "demo", "demopass"), esme(gw, "other", "otherpw")
        await bind(demo)
        await bind(other)
        write_config(path, sim_port, {"demo": "newpw123", "other": "otherpw"})
        assert await reload(gw) is Outcome.APPLIED
        await wait_for(lambda: not gw.account_states["demo"].binds)
        assert len(gw.account_states["other"].binds) == 1  # unchanged: still bound
        assert await bind_refused(esme(gw, "demo", "demopass"))
        renewed = esme(gw, "demo", "newpw123")
        await bind(renewed)
        assert await submit(renewed) == 0
        assert await submit(other) == 0
        renewed.client.disconnect()
        other.client.disconnect()


async def test_reload_unbinds_a_removed_account_and_refuses_its_binds(tmp_path: Path) -> None:
    async with daemon_from_file(tmp_path, {"demo": "demopass", "gone": "gonepass"}) as (
            gw, path, sim_port):
        gone = esme(gw, "gone", "gonepass")
        await bind(gone)
        write_config(path, sim_port, {"demo": "demopass"})
        assert await reload(gw) is Outcome.APPLIED
        await wait_for(lambda: "gone" not in gw.account_states)
        assert await bind_refused(esme(gw, "gone", "gonepass"))
        assert gw.config.accounts.keys() == {"demo"}


async def test_reload_changes_the_route_without_dropping_smsc_binds(tmp_path: Path) -> None:
    async with daemon_from_file(tmp_path, {"demo": "demopass"}) as (gw, path, sim_port):
        demo = esme(gw, "demo", "demopass")
        await bind(demo)
        a, b = attempts("a"), attempts("b")
        assert await submit(demo) == 0
        await wait_for(lambda: attempts("a") == a + 1)
        sessions = {name: c.sessions for name, c in gw.connectors.items()}
        write_config(path, sim_port, {"demo": "demopass"}, smsc="b")
        assert await reload(gw) is Outcome.APPLIED
        assert gw.dispatcher.routing is gw.routing  # its breakers, limits, backoff, trackers
        assert await submit(demo) == 0
        await wait_for(lambda: attempts("b") == b + 1)
        assert attempts("a") == a + 1
        assert {name: c.sessions for name, c in gw.connectors.items()} == sessions
        demo.client.disconnect()


async def test_reload_changes_the_rules_of_the_next_submits(tmp_path: Path) -> None:
    async with daemon_from_file(tmp_path, {"demo": "demopass"}) as (gw, path, sim_port):
        demo = esme(gw, "demo", "demopass")
        await bind(demo)
        long_text = b"x" * 200  # two SMS
        assert await submit(demo, long_text) == 0
        write_config(path, sim_port, {"demo": "demopass"}, extra=_SEGMENTS_RULE)
        assert await reload(gw) is Outcome.APPLIED
        assert await submit(demo, long_text) == smpplib.consts.SMPP_ESME_RINVMSGLEN
        assert await submit(demo, b"short") == 0
        demo.client.disconnect()


async def test_a_config_that_does_not_load_is_refused_and_the_running_one_kept(
        tmp_path: Path) -> None:
    async with daemon_from_file(tmp_path, {"demo": "demopass"}) as (gw, path, sim_port):
        demo = esme(gw, "demo", "demopass")
        await bind(demo)
        before = gw.config
        refused = reloads("refused")
        path.write_text(path.read_text() + "\n[[account]]\nsystem_id = 42\n")
        assert await reload(gw) is Outcome.REFUSED
        assert reloads("refused") == refused + 1
        assert metrics.CONFIG_RELOAD_OK._value.get() == 0
        assert gw.config is before
        assert await submit(demo) == 0
        # fixed: the next reload applies, and says so
        write_config(path, sim_port, {"demo": "demopass", "x": "xpass"})
        assert await reload(gw) is Outcome.APPLIED
        assert metrics.CONFIG_RELOAD_OK._value.get() == 1
        demo.client.disconnect()


_VOICE = """
[[router]]
name = "spoken"
type = "account"
accounts = ["demo"]
channels = ["tts:voice", "sms:a"]

[[voice]]
name = "voice"
caller_id = "+33100000000"
callback_token = "voice-callback-token-1"
voices = { fr = "Celine" }
[voice.place]
url = "http://127.0.0.1:1/calls"
body = { to = "{to_e164}", text = "{text}" }
[voice.status]
status_field = "status"
id_field = "id"
"""


async def test_a_voice_connector_added_by_a_reload_joins_and_a_router_may_name_it(
        tmp_path: Path) -> None:
    """[[voice]] (like [[rcs]], tests/test_reload_channels.py) is applied by a reload: the
    new connector joins the dispatcher, the SMSC binds stay as they were."""
    async with daemon_from_file(tmp_path, {"demo": "demopass"}) as (gw, path, sim_port):
        sessions = {name: c.sessions for name, c in gw.connectors.items()}
        write_config(path, sim_port, {"demo": "demopass"}, extra=_VOICE)
        assert await reload(gw) is Outcome.APPLIED
        assert set(gw.dispatcher.channels) == {"a", "b", "voice"}
        assert {name: c.sessions for name, c in gw.connectors.items()} == sessions


_SMSC_C = """
[[smsc]]
name = "c"
host = "127.0.0.1"
port = {port}
system_id = "sim"
password = "simpass"
"""


def test_sighup_reloads_a_running_daemon_and_tells_systemd(tmp_path: Path) -> None:
    """A real process: SIGHUP -> RELOADING=1 (with MONOTONIC_USEC) then READY=1 and the
    `config.reloaded` log line (here with an SMSC added and the route moved to it); a broken
    file -> `config.reload_refused`, still running."""
    notify = NotifySocket(tmp_path / "notify.sock")
    path = tmp_path / "gw.toml"
    closed = free_port()
    write_config(path, closed, {"demo": "demopass"})
    proc = Proc("gateway", ["run", "--config", str(path)], tmp_path,
                env={"NOTIFY_SOCKET": str(notify.path)})
    try:
        notify.wait_for("READY", "1")
        write_config(path, closed, {"demo": "demopass", "newbie": "newpass"}, smsc="c",
                     extra=_SMSC_C.format(port=closed))
        os.kill(proc.pid, signal.SIGHUP)
        reloading = notify.wait_for("RELOADING", "1")
        assert int(reloading["MONOTONIC_USEC"]) > 0
        notify.wait_for("READY", "1")
        assert proc.wait_event("config.reloaded")["accounts"] == 2
        assert proc.wait_event("config.smsc_started")["smsc"] == "c"
        path.write_text("this is not TOML [")
        os.kill(proc.pid, signal.SIGHUP)
        notify.wait_for("RELOADING", "1")
        notify.wait_for("READY", "1")
        refused = proc.wait_event("config.reload_refused")
        assert str(path) in refused["detail"] or refused["file"] == str(path)
        assert proc.popen.poll() is None
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.popen.wait(timeout=15) == 0
    finally:
        proc.stop()
        notify.close()
