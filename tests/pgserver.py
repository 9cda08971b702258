"""A throwaway PostgreSQL server for the tests, the benchmarks and the demo.

`PgServer` runs initdb and `postgres` from the machine's server binaries on 127.0.0.1 (as the
`postgres` user when we are root), waits for it with a deadline, and stops it by PID. Also a
CLI: `python -m tests.pgserver start|stop --data DIR [--port N]`.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import psycopg
from psycopg import sql

from tests.procs import free_port

POLL = 0.05  # seconds between two looks at a condition
START_TIMEOUT = 60.0  # initdb, crash recovery and the first connection on a crowded machine
STOP_TIMEOUT = 30.0  # a fast shutdown (SIGINT) writes a checkpoint
SUPERUSER = "postgres"  # initdb -U: the same role name whoever runs the server
INSTALL_HINT = ("no PostgreSQL server binaries found (looked in /usr/lib/postgresql/*/bin, "
                "`pg_config --bindir` and PATH): install them with "
                "`apt-get install postgresql` (or `make pg-server`)")


class PgNotFound(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


class PgFailed(RuntimeError):
    """initdb or postgres failed, or the server did not become ready in time."""


def _version_key(bindir: str) -> tuple[int, ...]:
    """(15,) for /usr/lib/postgresql/15/bin: directories sort by their version number."""
    name = Path(bindir).parent.name
    return tuple(int(p) for p in re.findall(r"\d+", name)) or (0,)


def find_bindir(root: str = "/usr/lib/postgresql", *, search_path: str | None = None) -> Path:
    """The directory holding `postgres` and `initdb`: the highest ``root/*/bin``, else
    `pg_config --bindir`, else PATH (``search_path`` replaces $PATH, for tests)."""
    found = [d for d in glob.glob(os.path.join(root, "*", "bin"))
             if os.access(os.path.join(d, "postgres"), os.X_OK)]
    if found:
        return Path(max(found, key=_version_key))
    pg_config = shutil.which("pg_config", path=search_path)
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                 check=True, timeout=10).stdout.strip()
            if out and os.access(os.path.join(out, "postgres"), os.X_OK):
                return Path(out)
    postgres = shutil.which("postgres", path=search_path)
    if postgres is not None and shutil.which("initdb", path=search_path) is not None:
        return Path(postgres).parent
    raise PgNotFound(INSTALL_HINT)


def _run_as() -> pwd.struct_passwd | None:
    """Who runs the server processes: the `postgres` user when we are root (initdb and
    postgres refuse root), else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise PgFailed("running as root, but there is no `postgres` user to run the server "
                       "as: install Debian's postgresql (`apt-get install postgresql`)") from None


def _check_traversable(path: Path, user: pwd.struct_passwd) -> None:
    """Each parent of ``path`` must let ``user`` through, or postgres cannot reach its data."""
    for parent in path.parents:
        st = parent.stat()
        if st.st_uid == user.pw_uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid == user.pw_gid:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            raise PgFailed(f"the user {user.pw_name} cannot traverse {parent} to reach {path}: "
                           f"`chmod o+x {parent}`, or use a directory under /tmp")


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (field 3 onwards), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def children(pid: int) -> list[int]:
    """The PIDs whose parent is ``pid`` (the postmaster's backends and auxiliary processes)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _proc_stat(int(entry))
            if fields is not None and fields[1] == str(pid):
                out.append(int(entry))
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU (user + system) of the process ``pid`` and its children, the live ones and the ones
    it has reaped (its cutime/cstime): the server's CPU, whichever backends came and went."""
    tick = os.sysconf("SC_CLK_TCK")
    fields = _proc_stat(pid)
    if fields is None:
        return 0.0
    # After the name: state(3) ppid(4) ... utime(14) stime(15) cutime(16) cstime(17).
    total = sum(int(fields[i]) for i in (11, 12, 13, 14))
    for child in children(pid):
        cf = _proc_stat(child)
        if cf is not None:
            total += int(cf[11]) + int(cf[12])
    return total / tick


def read_postmaster_pid(datadir: Path) -> tuple[int, int] | None:
    """(PID, port) from ``datadir/postmaster.pid`` if that server runs, else None."""
    try:
        lines = (datadir / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (FileNotFoundError, IndexError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return None
    if not pid_alive(pid) or not cmdline or not cmdline[0].endswith(b"postgres"):
        return None  # a stale file, or its PID reused by another program
    return pid, port


class PgServer:
    """One PostgreSQL server over one data directory, on 127.0.0.1 and a unix socket inside
    that directory, with trust authentication for the `postgres` role."""

    def __init__(self, bindir: Path | None = None) -> None:
        """``bindir``: where initdb and postgres are (found by find_bindir() at start if None)."""
        self._bindir = bindir
        self.datadir: Path | None = None
        self.port: int | None = None
        self.pid: int | None = None
        self.log_path: Path | None = None
        self._popen: subprocess.Popen[bytes] | None = None
        self._start_args: dict[str, Any] = {}

    @property
    def bindir(self) -> Path:
        if self._bindir is None:
            self._bindir = find_bindir()
        return self._bindir

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, datadir: Path | str, port: int | None = None, *, fsync: bool = True,
              initdb_sync: bool = True, detach: bool = False,
              timeout: float = START_TIMEOUT) -> None:
        """initdb ``datadir`` if it is empty (or missing), then start `postgres` on
        ``port`` (a free one if None) and wait until it accepts connections.

        ``fsync=False`` and ``initdb_sync=False`` (initdb --no-sync) are for tests only: a
        crash of the machine would lose commits. ``detach``: the server outlives this
        process (its own session; the CLI)."""
        datadir = Path(datadir).absolute()
        self._start_args = {"fsync": fsync, "initdb_sync": initdb_sync, "detach": detach}
        user = _run_as()
        self._prepare_datadir(datadir, user, initdb_sync=initdb_sync)
        self.datadir = datadir
        logdir = datadir / "log"
        logdir.mkdir(exist_ok=True)
        self.log_path = logdir / "postgres.log"
        if user is not None:
            os.chown(logdir, user.pw_uid, user.pw_gid)
        tries = 3 if port is None else 1  # an ephemeral port may be taken before postgres binds
        for attempt in range(tries):
            chosen = port if port is not None else free_port()
            try:
                self._spawn(chosen, user, fsync=fsync, detach=detach, timeout=timeout)
                return
            except PgFailed:
                if attempt == tries - 1:
                    raise

    def _prepare_datadir(self, datadir: Path, user: pwd.struct_passwd | None, *,
                         initdb_sync: bool) -> None:
        datadir.mkdir(parents=True, exist_ok=True)
        if (datadir / "PG_VERSION").exists():
            if read_postmaster_pid(datadir) is not None:
                raise PgFailed(f"a server already runs over {datadir}")
            return
        if any(datadir.iterdir()):
            raise PgFailed(f"{datadir} is neither empty nor a PostgreSQL data directory")
        if user is not None:
            _check_traversable(datadir, user)
            os.chown(datadir, user.pw_uid, user.pw_gid)
        datadir.chmod(0o700)
        args = [str(self.bindir / "initdb"), "-D", str(datadir), "-U", SUPERUSER,
                "--auth-local=trust", "--auth-host=trust", "--encoding=UTF8", "--locale=C"]
        if not initdb_sync:
            args.append("--no-sync")
        done = subprocess.run(args, capture_output=True, text=True, cwd=datadir,
                              **self._as_user(user))
        if done.returncode != 0:
            raise PgFailed(f"initdb failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    @staticmethod
    def _as_user(user: pwd.struct_passwd | None) -> dict[str, Any]:
        """subprocess arguments that run a child as ``user`` (nothing if None)."""
        if user is None:
            return {}
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
        return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [], "env": env}

    def _spawn(self, port: int, user: pwd.struct_passwd | None, *, fsync: bool, detach: bool,
               timeout: float) -> None:
        assert self.datadir is not None and self.log_path is not None
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.datadir),
            "max_connections": "200",
            "fsync": "on" if fsync else "off",
            "full_page_writes": "on" if fsync else "off",
            "synchronous_commit": "on",
            "logging_collector": "off",
        }
        args = [str(self.bindir / "postgres"), "-D", str(self.datadir), "-p", str(port)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        log: IO[bytes] = self.log_path.open("ab")
        try:
            popen = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, cwd=self.datadir,
                                     start_new_session=detach, **self._as_user(user))
        finally:
            log.close()
        self._popen, self.pid, self.port = popen, popen.pid, port
        try:
            self._wait_ready(timeout)
        except BaseException:
            self._halt(signal.SIGKILL, STOP_TIMEOUT)
            raise

    def _wait_ready(self, timeout: float) -> None:
        """Until a connection succeeds (a deadline, not a sleep); PgFailed if postgres exits
        first or the deadline passes."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._popen is not None and self._popen.poll() is not None:
                raise PgFailed(f"postgres exited with {self._popen.returncode}; "
                               f"its log ends with:\n{self.log_tail()}")
            try:
                with psycopg.connect(self.dsn("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError as exc:
                last = exc
            time.sleep(POLL)
        raise PgFailed(f"postgres did not accept connections within {timeout:.0f} s ({last}); "
                       f"its log ends with:\n{self.log_tail()}")

    def attach(self, datadir: Path | str) -> bool:
        """Take over the server already running over ``datadir`` (started by another process,
        e.g. the CLI); False if none runs."""
        datadir = Path(datadir).absolute()
        found = read_postmaster_pid(datadir)
        if found is None:
            return False
        self.datadir, self.log_path = datadir, datadir / "log" / "postgres.log"
        self.pid, self.port = found
        self._popen = None
        return True

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Fast shutdown (SIGINT: clients disconnected, a checkpoint, exit), waited for with a
        deadline; SIGKILL to it and its children if that passes. Nothing if not running."""
        self._halt(signal.SIGINT, timeout)

    def kill(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGKILL to the postmaster and all its processes, as a crash would: the next start
        runs crash recovery from the WAL."""
        self._halt(signal.SIGKILL, timeout)

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        """Stop if running, then start again over the same directory and on the same port."""
        if self.datadir is None or self.port is None:
            raise PgFailed("restart() of a server never started")
        self.stop()
        self.start(self.datadir, self.port, timeout=timeout, **self._start_args)

    def _halt(self, sig: signal.Signals, timeout: float) -> None:
        pid = self.pid
        if pid is None:
            return
        procs = [pid, *children(pid)]
        if sig == signal.SIGKILL:
            for p in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if not self._wait_gone(procs, timeout) and sig != signal.SIGKILL:
            for p in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
            self._wait_gone(procs, timeout)
        self.pid, self._popen = None, None

    def _wait_gone(self, pids: list[int], timeout: float) -> bool:
        """Until none of ``pids`` exists (our own child reaped); False at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            if self._popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._popen.wait(timeout=POLL)
            if not any(pid_alive(p) for p in pids):
                return True
            if time.monotonic() >= deadline:
                return False
            if self._popen is None or self._popen.returncode is not None:
                time.sleep(POLL)

    # -- use -------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.pid is not None and pid_alive(self.pid)

    def pids(self) -> list[int]:
        """The postmaster's PID and its children's (empty when not running)."""
        return [] if self.pid is None or not pid_alive(self.pid) else [self.pid,
                                                                        *children(self.pid)]

    def cpu_seconds(self) -> float:
        """CPU used so far by the server's processes (see tree_cpu_seconds)."""
        return 0.0 if self.pid is None else tree_cpu_seconds(self.pid)

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq URL (psycopg and asyncpg both take it) for ``dbname`` over TCP."""
        if self.port is None:
            raise PgFailed("the server was not started")
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        """A new empty database ``name``; its DSN."""
        self._admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def ensure_database(self, name: str) -> bool:
        """Create the database ``name`` unless it exists; True if it was created."""
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                return False
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return True

    def drop_database(self, name: str) -> None:
        """Drop ``name``, disconnecting its clients; nothing if it does not exist."""
        self._admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def _admin(self, statement: sql.Composed) -> None:
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(statement)

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    @contextlib.contextmanager
    def running_in(self, datadir: Path | str, port: int | None = None,
                   **kwargs: Any) -> Iterator[PgServer]:
        """start() ... stop(), as a context manager."""
        self.start(datadir, port, **kwargs)
        try:
            yield self
        finally:
            self.stop()


def scratch_dir(prefix: str = "smsgw-pg-") -> Path:
    """A new directory under /tmp that the server's user can traverse (0711): the data
    directory goes inside it, e.g. ``scratch_dir() / "data"``."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o711)
    return path


@contextlib.contextmanager
def throwaway() -> Iterator[PgServer]:
    """A server started in a new scratch_dir (fsync on; initdb without its sync, which only a
    crash of the machine would need), stopped by PID and its directory deleted afterwards."""
    tmp = scratch_dir()
    server = PgServer()
    try:
        server.start(tmp / "data", initdb_sync=False)
        yield server
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.pgserver", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start a detached server over --data (initdb if empty)")
    start.add_argument("--data", type=Path, required=True)
    start.add_argument("--port", type=int, default=5433)
    start.add_argument("--database", action="append", default=[], metavar="NAME",
                       help="create this database if missing (repeatable)")
    stop = sub.add_parser("stop", help="stop the server running over --data")
    stop.add_argument("--data", type=Path, required=True)
    args = parser.parse_args(argv)
    server = PgServer()
    if server.attach(args.data):
        if args.command == "start":
            print(f"PostgreSQL already running over {args.data} (pid {server.pid}) on "
                  f"127.0.0.1:{server.port}: {server.dsn()}")
            if server.port != args.port:
                print(f"note: on port {server.port}, not {args.port}", file=sys.stderr)
            _databases(server, args.database)
            return 0
        pid = server.pid
        server.stop()
        print(f"stopped PostgreSQL over {args.data} (pid {pid})")
        return 0
    if args.command == "stop":
        print(f"no PostgreSQL running over {args.data}: nothing to stop")
        return 0
    fresh = not (args.data / "PG_VERSION").exists()
    try:
        server.start(args.data, args.port, detach=True)
    except (PgFailed, PgNotFound, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{'initialised and started' if fresh else 'started'} PostgreSQL "
          f"({server.bindir}) over {args.data} (pid {server.pid}) on "
          f"127.0.0.1:{server.port}, log {server.log_path}: {server.dsn()}")
    _databases(server, args.database)
    return 0


def _databases(server: PgServer, names: list[str]) -> None:
    for name in names:
        made = server.ensure_database(name)
        print(f"database {name} {'created' if made else 'exists'}: {server.dsn(name)}")


if __name__ == "__main__":
    sys.exit(main())
