"""Shared pytest fixtures: one throwaway PostgreSQL server per test session, a fresh database
per test that asks for one (`pg_dsn`), and `store_at`, which runs a store test against both
backends (an SQLite file, a PostgreSQL database).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pgserver import PgServer, throwaway

StoreAt = str | Path  # what Store.open takes: an SQLite file or a postgresql:// URI


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A PostgreSQL server for the session (tests/pgserver.py's throwaway()). Fails, not
    skips, without the server binaries: `make test` installs them."""
    with throwaway() as server:
        yield server


@pytest.fixture
def own_pg() -> Iterator[PgServer]:
    """A PostgreSQL server of this test alone (the test kills, freezes or stops it)."""
    with throwaway() as server:
        yield server


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> Iterator[str]:
    """The DSN of a new empty database on the session's server, dropped after the test."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    dsn = pg_server.create_database(name)
    try:
        yield dsn
    finally:
        pg_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_at(request: pytest.FixtureRequest, tmp_path: Path) -> StoreAt:
    """Where a store test opens its store: each such test runs against both backends."""
    if request.param == "sqlite":
        return tmp_path / "gw.sqlite"
    dsn: str = request.getfixturevalue("pg_dsn")
    return dsn
