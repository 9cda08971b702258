"""Tests of tests/pgserver.py, the throwaway PostgreSQL server of the tests and benchmarks:
it starts and takes connections, a crash (SIGKILL) and restart keeps what was committed, and
stop() leaves no process behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.pgserver import INSTALL_HINT, PgNotFound, PgServer, find_bindir, pid_alive, scratch_dir
from tests.procs import free_port

REPO = Path(__file__).resolve().parent.parent


def test_server_takes_connections_with_the_test_settings(pg_dsn: str) -> None:
    """Rule: the session's server listens on 127.0.0.1 only, fsync and synchronous_commit on,
    room for 200 connections, and each test's database starts empty."""
    with psycopg.connect(pg_dsn) as conn:
        settings = {name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
                    for name in ("listen_addresses", "fsync", "synchronous_commit",
                                 "max_connections", "server_encoding")}
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
    assert settings == {"listen_addresses": "127.0.0.1", "fsync": "on",
                        "synchronous_commit": "on", "max_connections": "200",
                        "server_encoding": "UTF8"}
    assert tables == (0,)


def test_each_test_has_its_own_database(pg_dsn: str, pg_server: PgServer) -> None:
    """Rule: pg_dsn names a database made for this test, on the session's server."""
    assert pg_dsn.startswith(pg_server.dsn(""))
    with psycopg.connect(pg_dsn) as conn:
        name = conn.execute("SELECT current_database()").fetchone()
    assert name is not None and name[0].startswith("test_")


def test_kill_and_restart_keeps_committed_data(own_pg: PgServer) -> None:
    """Rule: a crash of the server (SIGKILL to all its processes) loses nothing committed:
    restart() runs crash recovery and the row is there, on the same port."""
    dsn = own_pg.create_database("crash")
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, body bytea NOT NULL)")
        conn.execute("INSERT INTO t VALUES (1, %s)", (b"committed",))
        conn.commit()
    port, pids = own_pg.port, own_pg.pids()
    assert len(pids) > 1  # the postmaster and its auxiliary processes
    own_pg.kill()
    assert not any(pid_alive(p) for p in pids)
    own_pg.restart()
    assert own_pg.port == port
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT body FROM t WHERE id = 1").fetchone() == (b"committed",)


def test_stop_leaves_no_process(own_pg: PgServer) -> None:
    """Rule: stop() ends the postmaster and every process it started (checked by PID)."""
    pids = own_pg.pids()
    assert pids and all(pid_alive(p) for p in pids)
    own_pg.stop()
    assert not any(pid_alive(p) for p in pids)
    assert not own_pg.running and own_pg.pids() == []


def test_cli_start_is_idempotent_and_stop_ends_it() -> None:
    """Rule: `python -m tests.pgserver start` leaves a server running after it returns, says so
    when one already runs, and `stop` ends it (its PID gone)."""
    tmp = scratch_dir()
    data, port = tmp / "pg", free_port()
    cli = [sys.executable, "-m", "tests.pgserver"]

    def run(*args: str) -> str:
        done = subprocess.run([*cli, *args, "--data", str(data)], cwd=REPO, capture_output=True,
                              text=True, timeout=120, check=True)
        return done.stdout

    try:
        assert "started" in run("start", "--port", str(port))
        server = PgServer()
        assert server.attach(data) and server.port == port
        pid = server.pid
        assert pid is not None
        assert "already running" in run("start", "--port", str(port))
        with psycopg.connect(server.dsn()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert f"stopped PostgreSQL over {data} (pid {pid})" in run("stop")
        assert not pid_alive(pid)
        assert "nothing to stop" in run("stop")
    finally:
        leftover = PgServer()
        if leftover.attach(data):
            leftover.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def test_missing_binaries_name_the_package(tmp_path: Path) -> None:
    """Rule: without server binaries the error says how to install them."""
    with pytest.raises(PgNotFound) as caught:
        find_bindir(str(tmp_path / "none"), search_path=str(tmp_path))
    assert str(caught.value) == INSTALL_HINT
    assert "apt-get install postgresql" in INSTALL_HINT


def test_highest_version_wins(tmp_path: Path) -> None:
    """Rule: of several /usr/lib/postgresql/<version>/bin, the highest version is used."""
    for version in ("9.6", "15", "16", "10"):
        bindir = tmp_path / version / "bin"
        bindir.mkdir(parents=True)
        (bindir / "postgres").touch(mode=0o755)
    assert find_bindir(str(tmp_path), search_path="") == tmp_path / "16" / "bin"
    assert os.access(tmp_path / "16" / "bin" / "postgres", os.X_OK)
