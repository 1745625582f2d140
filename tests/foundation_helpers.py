"""Helpers for the foundation tests: migration folders, ledger reads, forked children."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shareddb import DbService


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


def builtin_files(backend: str) -> list[str]:
    folder = Path(__file__).resolve().parent.parent / "schema" / backend
    return sorted(p.name for p in folder.glob("*.sql"))


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


def scalar(cursor: Any) -> Any:
    """The first column of the first row of a cursor's result."""
    row = cursor.fetchone()
    assert row is not None
    return row[0]
