"""Fixtures of the reliability suite: a PostgreSQL of our own that tests may kill."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from rel_server import KillablePostgres


@pytest.fixture(scope="session")
def killable_pg() -> Iterator[KillablePostgres]:
    """A PostgreSQL server for this session only, which tests may SIGKILL and restart."""
    folder = Path(tempfile.mkdtemp(prefix="shareddb-rel-pg-"))
    server = KillablePostgres(folder / "data")
    server.start()
    try:
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def killable_pg_url(killable_pg: KillablePostgres) -> str:
    """A fresh database on the killable server."""
    return killable_pg.fresh_database()
