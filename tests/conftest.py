"""Shared pytest fixtures: one throwaway PostgreSQL server per test session, a fresh database
per test that asks for one (`pg_dsn`), dropped after it.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator

import pytest

from tests.pgserver import PgServer, scratch_dir


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A PostgreSQL server for the session, in a new directory under /tmp (fsync on; initdb
    without its sync, which only a crash of the machine would need), stopped and deleted at the
    end. Fails, not skips, without the server binaries: `make test` installs them."""
    tmp = scratch_dir()
    server = PgServer()
    try:
        server.start(tmp / "data", initdb_sync=False)
        yield server
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> Iterator[str]:
    """The DSN of a new empty database on the session's server, dropped after the test."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    dsn = pg_server.create_database(name)
    try:
        yield dsn
    finally:
        pg_server.drop_database(name)
