"""Fixtures shared by the test modules: the store backends a store test runs against."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

StoreAt = str | Path  # what Store.open takes: an SQLite file or a postgresql:// URI


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    base = os.environ["SMSGW_TEST_PG"]
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base + "/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield f"{base}/{name}"
    with psycopg.connect(base + "/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_at(request: pytest.FixtureRequest, tmp_path: Path) -> StoreAt:
    """Where a store test opens its store: each such test runs against both backends."""
    if request.param == "sqlite":
        return tmp_path / "gw.sqlite"
    dsn: str = request.getfixturevalue("pg_dsn")
    return dsn
