"""Helpers of the test suite, in one place: import them from here.

conftest.py holds only fixtures (and imports what they need from this module). A helper
that only one test module uses stays in that module.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool
from pytest_postgresql.janitor import DatabaseJanitor

from shareddb import DbService

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# -- test servers ----------------------------------------------------------------------------

PG_URL_ENV = "SHAREDDB_TEST_PG_URL"
# This machine kind runs a PostgreSQL 15 without pgvector here; elsewhere it is absent.
PLAIN_PG_URL = os.environ.get(
    "SHAREDDB_TEST_PLAIN_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def with_dbname(url: str, dbname: str) -> str:
    """`url` pointing at another database (the URI's path)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{dbname}"))


def fresh_database(server_url: str) -> Iterator[str]:
    """A new empty database on `server_url`, dropped when the generator is closed."""
    params = conninfo_to_dict(server_url)
    dbname = f"shareddb_test_{uuid.uuid4().hex[:12]}"
    janitor = DatabaseJanitor(
        user=str(params.get("user") or "postgres"),
        host=str(params.get("host") or "localhost"),
        port=str(params.get("port") or 5432),
        password=str(params["password"]) if params.get("password") else None,
        dbname=dbname,
        maintenance_dbname=str(params.get("dbname") or "postgres"),
    )
    janitor.init()
    try:
        yield with_dbname(server_url, dbname)
    finally:
        janitor.drop()


# -- pools -----------------------------------------------------------------------------------


def pool_of(db: DbService) -> ConnectionPool[Any]:
    """The psycopg pool of a PostgreSQL service."""
    pool = db.get_sql()
    assert isinstance(pool, ConnectionPool)
    return pool


def settle(pool: ConnectionPool[Any]) -> None:
    """Wait until the pool's worker has made every connection it set out to make.

    initialize() on a new database drains the pool and a first request that waits
    grows it; the worker then connects in the background, and each new connection
    draws from the global `random` (expiry jitter), which Hypothesis reports as a
    strategy using `random` when it overlaps a draw.
    """
    deadline = time.monotonic() + 30
    while True:
        stats = pool.get_stats()
        if stats["pool_available"] == stats["pool_size"] >= stats["pool_min"]:
            return
        assert time.monotonic() < deadline, f"pool never settled: {stats}"
        time.sleep(0.005)


# -- migrations and the ledger ---------------------------------------------------------------


class AppMigrations:
    """A folder of an application's migrations, written file by file by a test."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, name: str, text: str, *, newline: str = "\n", bom: bool = False) -> Path:
        path = self.folder / name
        data = text.replace("\n", newline).encode("utf-8")
        path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
        return path

    def service(self, url: str, **kwargs: Any) -> DbService:
        return DbService(url, schema_dirs={"app": self.folder}, **kwargs)


def ledger(db: DbService, namespace: str = "app") -> list[tuple[int, str]]:
    """(version, name) rows of `namespace` in schema_migrations."""
    ph = "?" if db.get_backend_type() == "sqlite" else "%s"
    with db.connection() as conn:
        rows = conn.execute(
            "SELECT version, name FROM schema_migrations WHERE namespace = "
            + ph
            + " ORDER BY version",
            (namespace,),
        ).fetchall()
    return [(int(v), str(n)) for v, n in rows]


def builtin_files(backend: str) -> list[str]:
    """The names of shareddb's own migrations for `backend`, read from the source tree."""
    folder = PROJECT_ROOT / "shareddb" / "schema" / backend
    return sorted(p.name for p in folder.glob("*.sql"))


# -- reading the database --------------------------------------------------------------------


def table_exists(db: DbService, table: str) -> bool:
    with db.connection() as conn:
        if db.get_backend_type() == "sqlite":
            row = conn.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
            ).fetchone()
            return bool(row[0])
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"public.{table}",)).fetchone()
        return bool(row[0])


def index_exists(db: DbService, index: str) -> bool:
    with db.connection() as conn:
        if db.get_backend_type() == "sqlite":
            row = conn.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = ?", (index,)
            ).fetchone()
            return bool(row[0])
        row = conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = 'public' AND indexname = %s",
            (index,),
        ).fetchone()
        return bool(row[0])


def scalar(cursor: Any) -> Any:
    """The first column of the first row of a cursor's result."""
    row = cursor.fetchone()
    assert row is not None
    return row[0]


# -- other processes -------------------------------------------------------------------------


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """``python -m shareddb ARGS`` with this test's environment (isolated config/data dirs)."""
    return subprocess.run(
        [sys.executable, "-m", "shareddb", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def run_in_child(fn: Callable[[], str]) -> str:
    """Run `fn` in a forked child and return what it returned (or its error's repr)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.close(read_fd)
            try:
                result = fn()
            except BaseException as e:
                result = f"{type(e).__name__}: {e}"
            os.write(write_fd, result.encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()


# -- data sets (the bench's, also read by the recall and tuning tests) ------------------------

DATA_DIR = PROJECT_ROOT / "bench" / "data"


def run_bench(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python bench/SCRIPT ARGS`` from the project root; fails the test if it fails."""
    env = {k: v for k, v in os.environ.items() if k != "SHAREDDB_BENCH_URL"}
    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "bench" / script), *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
    return result
