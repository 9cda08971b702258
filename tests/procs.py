"""Test helpers: run `smsgw` subcommands as real OS processes and watch their JSON-line logs.

A `Proc` writes its stdout and stderr to a file; readiness is a log event looked for with a
deadline (never a fixed sleep); stop() is SIGTERM, then SIGKILL if the deadline passes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

POLL = 0.02  # seconds between two looks at a condition


def smsgw_command() -> str:
    """The `smsgw` console script of the running interpreter's environment."""
    beside = Path(sys.executable).parent / "smsgw"
    if beside.exists():
        return str(beside)
    found = shutil.which("smsgw")
    if found is None:
        raise RuntimeError("the smsgw console script is not installed")
    return found


def free_port() -> int:
    """A TCP port of 127.0.0.1 free right now (the caller must cope with losing a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ProcessExited(RuntimeError):
    """The process ended while a condition was being waited for."""

    def __init__(self, proc: Proc) -> None:
        super().__init__(f"{proc.name} exited with {proc.popen.returncode} before it was ready; "
                         f"its output ends with:\n{proc.tail()}")
        self.proc = proc


class Proc:
    """One `smsgw ...` process whose output goes to ``<directory>/<name>.out``."""

    def __init__(self, name: str, args: list[str], directory: Path, *,
                 env: dict[str, str] | None = None, command: list[str] | None = None) -> None:
        """``env``: variables added to this process's environment; ``command``: what runs
        instead of the smsgw console script (``args`` follow it)."""
        self.name = name
        self.log_path = directory / f"{name}.out"
        self._log: IO[bytes] = self.log_path.open("wb")
        environ = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.popen = subprocess.Popen([*(command or [smsgw_command()]), *args], stdout=self._log,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      env=environ)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (other lines, e.g. tracebacks, are skipped)."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_event(self, event: str, timeout: float = 15.0) -> dict[str, Any]:
        """The first log line whose "event" is ``event``, waiting for it up to ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            for entry in self.events():
                if entry.get("event") == event:
                    return entry
            if self.popen.poll() is not None:
                raise ProcessExited(self)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no {event!r} within {timeout}s; output ends "
                                   f"with:\n{self.tail()}")
            time.sleep(POLL)

    def wait_open(self, path: Path, timeout: float = 15.0, poll: float = 0.001) -> None:
        """Wait until the process has ``path`` open (Linux: read from /proc/<pid>/fd), e.g.
        to act at the moment a store is being opened, before anything is logged."""
        deadline = time.monotonic() + timeout
        fds = Path(f"/proc/{self.pid}/fd")
        target = str(path.absolute())
        while True:
            with contextlib.suppress(OSError):  # fds come and go while we look
                for fd in fds.iterdir():
                    with contextlib.suppress(OSError):
                        if os.readlink(fd) == target:
                            return
            if self.popen.poll() is not None:
                raise ProcessExited(self)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: {path} not open within {timeout}s")
            time.sleep(poll)

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean anything up."""
        if self.popen.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> tuple[int, bool]:
        """SIGTERM, then SIGKILL after ``timeout``. (exit code, whether SIGTERM sufficed)."""
        clean = True
        if self.popen.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                clean = False
                self.kill()
        self._log.close()
        return self.popen.returncode, clean


def start_simulator(config: Path) -> tuple[Proc, dict[str, Any]]:
    """`smsgw simulate-smsc --config config` (output beside the file), once it is ready; its
    simulator.ready log line (port, control_port)."""
    sim = Proc("simulator", ["simulate-smsc", "--config", str(config)], config.parent)
    try:
        return sim, sim.wait_event("simulator.ready", timeout=20)
    except BaseException:
        sim.stop(timeout=10)
        raise
