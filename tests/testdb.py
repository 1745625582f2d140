"""Helpers shared by conftest.py and test modules (import from here, not from conftest)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from psycopg.conninfo import conninfo_to_dict
from pytest_postgresql.janitor import DatabaseJanitor

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = PROJECT_ROOT.parent / "shared" / "data"


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
