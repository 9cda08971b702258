"""The systemd unit and the notify protocol, as systemd sees them.

`systemd-analyze verify` and `security --offline` on systemd/smsgw.service (in a directory
laid out as a root file system, with the host's system units and the unit's executables), and
the daemon as a real process talking to a datagram socket the test owns (NOTIFY_SOCKET):
READY once listeners and connectors run (an unreachable SMSC does not hold it back), STATUS
with live counts, WATCHDOG pings that come from the event loop, STOPPING, exit 0.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.passwords import hash_password
from tests.procs import Proc, free_port

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "smsgw.service"
BLOCKING_DAEMON = Path(__file__).resolve().parent / "blocking_daemon.py"
SYSTEM_UNITS = (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
EXPOSURE_MAX = 2.0  # `systemd-analyze security`: 0-10, lower is safer; the unit scores 1.1
SHUTDOWN_TIMEOUT = 5.0
WATCHDOG_USEC = 200_000  # pings every 0.1 s
BLOCK_SECONDS = 1.5  # the event loop is blocked for 15 ping intervals

_GW_TOML = """\
[gateway]
node = "systemd-test"
shutdown_timeout = "{shutdown_timeout}s"

[store]
path = "{store}"

[http]
enabled = false

[[listener]]
host = "127.0.0.1"
port = 0

[[account]]
system_id = "demo"
password_hash = "{password_hash}"

[[smsc]]
name = "unreachable"
host = "127.0.0.1"
port = {closed_port}
system_id = "gw"
password = "secret"

[[route]]
name = "default"
smscs = ["unreachable"]
"""


# --- the unit file --------------------------------------------------------------------------

def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing: .ci/run installs Debian's systemd package")
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd); "
                    "CI installs it")
    return found


def _root_with(tmp_path: Path, unit_text: str) -> Path:
    """A directory laid out as a root file system for `systemd-analyze --root`: the unit in
    /etc/systemd/system, the host's system units (the targets it names), and an executable
    at each path its Exec lines run."""
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/smsgw.service").write_text(unit_text)
    units = next(p for p in SYSTEM_UNITS if p.is_dir())
    shutil.copytree(units, root / "usr/lib/systemd/system", symlinks=True)
    for line in unit_text.splitlines():
        if re.match(r"Exec\w+=", line):
            program = root / line.split("=", 1)[1].split()[0].lstrip("-@+!:").lstrip("/")
            program.parent.mkdir(parents=True, exist_ok=True)
            program.write_text("#!/bin/sh\n")
            program.chmod(0o755)
    return root


def _verify(tmp_path: Path, unit_text: str) -> subprocess.CompletedProcess[str]:
    root = _root_with(tmp_path, unit_text)
    return subprocess.run([_systemd_analyze(), "verify", f"--root={root}", "smsgw.service"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)


def test_the_unit_passes_systemd_analyze_verify_without_a_warning(tmp_path: Path) -> None:
    result = _verify(tmp_path, UNIT.read_text())
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        f"exit {result.returncode}:\n{result.stdout}{result.stderr}")


def test_verify_reports_a_misspelt_directive(tmp_path: Path) -> None:
    """The check above can fail: verify prints what it ignores, even with exit status 0."""
    text = UNIT.read_text().replace("\nProtectHome=yes", "\nProtectHom=yes")
    result = _verify(tmp_path, text)
    assert "Unknown key 'ProtectHom'" in result.stdout + result.stderr


def test_the_units_hardening_is_rated_ok_by_systemd_analyze_security(tmp_path: Path) -> None:
    root = _root_with(tmp_path, UNIT.read_text())
    result = subprocess.run([_systemd_analyze(), "security", "--offline=true", f"--root={root}",
                             "--no-pager", "smsgw.service"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=60)
    found = re.search(r"Overall exposure level for smsgw\.service: (\d+\.\d+)", result.stdout)
    assert found, f"exit {result.returncode}:\n{result.stdout}{result.stderr}"
    assert float(found.group(1)) <= EXPOSURE_MAX, result.stdout


def test_the_unit_asks_for_what_the_daemon_does() -> None:
    settings = dict(line.split("=", 1) for line in UNIT.read_text().splitlines()
                    if re.match(r"\w+=", line))
    assert settings["Type"] == "notify" and settings["Restart"] == "on-failure"
    assert settings["KillSignal"] == "SIGTERM"
    assert {"WatchdogSec", "StateDirectory", "ConfigurationDirectory", "User"} <= set(settings)
    # systemd waits longer than the daemon's own default drain before it kills it
    assert float(settings["TimeoutStopSec"]) > 10.0


# --- the notify protocol, from a real process -----------------------------------------------

class NotifySocket:
    """The datagram socket systemd listens on (NOTIFY_SOCKET): every notification received,
    parsed into its KEY=VALUE lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.received: list[dict[str, str]] = []

    def close(self) -> None:
        self.sock.close()

    def next(self, timeout: float) -> dict[str, str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096)
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        self.received.append(fields)
        return fields

    def wait_for(self, key: str, value: str | None = None, timeout: float = 20.0,
                 ) -> dict[str, str]:
        """The next notification that sets ``key`` (to ``value``, if given)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                fields = self.next(left)
            except TimeoutError:
                break
            if key in fields and (value is None or fields[key] == value):
                return fields
        raise TimeoutError(f"no {key}={value or '*'} within {timeout}s; received "
                           f"{self.received[-10:]}")


def _start(tmp_path: Path, notify: NotifySocket, *, watchdog: bool = False,
           command: list[str] | None = None) -> Proc:
    config = tmp_path / "gw.toml"
    config.write_text(_GW_TOML.format(
        shutdown_timeout=SHUTDOWN_TIMEOUT, store=tmp_path / "store" / "smsgw.sqlite3",
        password_hash=hash_password("demopass"), closed_port=free_port()))
    config.chmod(0o600)
    env = {"NOTIFY_SOCKET": str(notify.path), "SMSGW_TEST_BLOCK_SECONDS": str(BLOCK_SECONDS)}
    if watchdog:
        env["WATCHDOG_USEC"] = str(WATCHDOG_USEC)
    return Proc("gateway", ["run", "--config", str(config)], tmp_path, env=env,
                command=command)


def _stop(proc: Proc, notify: NotifySocket) -> None:
    """SIGTERM: STOPPING=1, a last STATUS, exit 0 within the shutdown timeout."""
    os.kill(proc.pid, signal.SIGTERM)
    notify.wait_for("STOPPING", "1")
    while not (status := notify.wait_for("STATUS")["STATUS"]).startswith("stopped: "):
        assert status.startswith("stopping: "), status
    assert status.startswith("stopped: upstream binds 0, SMSC binds 0, "), status
    code = proc.popen.wait(timeout=SHUTDOWN_TIMEOUT + 5)
    assert code == 0, f"exit {code}:\n{proc.tail()}"
    assert proc.events()[-1]["event"] == "daemon.stopped"


def test_ready_is_sent_once_listeners_and_connectors_run_even_with_the_smsc_down(
        tmp_path: Path) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    proc = _start(tmp_path, notify)
    try:
        ready = notify.wait_for("READY", "1")
        assert ready["STATUS"] == ("upstream binds 0, SMSC binds 0, unfinished messages 0, "
                                   "reports pending 0, webhooks pending 0")
        # Ready means listening: a connection is accepted at once...
        port = int(proc.wait_event("listener.ready", timeout=1)["port"])
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        # ... and the connector's task runs: it keeps trying the SMSC that is down.
        proc.wait_event("smsc.connect_failed")
        _stop(proc, notify)
    finally:
        proc.stop()
        notify.close()


def test_watchdog_pings_come_from_the_event_loop_and_stop_while_it_is_blocked(
        tmp_path: Path) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    proc = _start(tmp_path, notify, watchdog=True,
                  command=[sys.executable, str(BLOCKING_DAEMON)])
    try:
        notify.wait_for("READY", "1")
        for _ in range(3):
            notify.wait_for("WATCHDOG", "1", timeout=5)
        os.kill(proc.pid, signal.SIGUSR1)  # blocks the main thread, where trio's loop runs
        notify.wait_for("TEST_LOOP_BLOCKED", "1", timeout=5)
        start = len(notify.received)
        notify.wait_for("TEST_LOOP_BLOCKED", "0", timeout=BLOCK_SECONDS + 5)
        during = [n for n in notify.received[start:-1] if "WATCHDOG" in n]
        assert not during, f"{len(during)} watchdog pings while the event loop was blocked"
        for _ in range(3):  # the loop runs again: so do the pings
            notify.wait_for("WATCHDOG", "1", timeout=5)
        # STATUS is refreshed periodically, not only at READY and STOPPING
        refreshed = notify.wait_for("STATUS", timeout=15)
        assert "READY" not in refreshed and refreshed["STATUS"].startswith("upstream binds 0")
        _stop(proc, notify)
    finally:
        proc.stop()
        notify.close()
