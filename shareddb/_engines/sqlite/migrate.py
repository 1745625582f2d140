"""Migrations on SQLite: the ledger's SQL, and the write lock as the migration lock.

Each file's transaction is ``BEGIN IMMEDIATE``, which takes the database's write
lock (waiting up to the busy timeout); the runner re-reads and verifies the ledger
inside it, so concurrent processes apply every file exactly once.
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any, Literal, LiteralString

from shareddb._engines.base import MigrationSession
from shareddb._engines.sqlite.locking import write_transaction
from shareddb._migrations.files import MigrationFile
from shareddb._migrations.ledger import LedgerRow
from shareddb._migrations.sqlsplit import Statement
from shareddb.errors import MigrationLockTimeout

CREATE_LEDGER = """\
CREATE TABLE IF NOT EXISTS schema_migrations (
    namespace TEXT NOT NULL,
    version INTEGER NOT NULL,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at TEXT NOT NULL,
    execution_ms REAL NOT NULL,
    PRIMARY KEY (namespace, version)
)"""
READ_LEDGER = (
    "SELECT namespace, version, name, checksum, applied_at, execution_ms "
    "FROM schema_migrations ORDER BY namespace, version"
)
INSERT_LEDGER = (
    "INSERT INTO schema_migrations (namespace, version, name, checksum, execution_ms, "
    "applied_at) VALUES (?, ?, ?, ?, ?, ?)"
)
LEDGER_EXISTS = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
RECORDED = "SELECT 1 FROM schema_migrations WHERE namespace = ? AND version = ?"


def read_ledger(conn: sqlite3.Connection) -> list[LedgerRow] | None:
    """The ledger's rows, or None when the table does not exist yet."""
    try:
        rows = conn.execute(READ_LEDGER).fetchall()
    except sqlite3.OperationalError:
        # One result code covers every failed statement: ask the catalog, not the message.
        if conn.execute(LEDGER_EXISTS).fetchone() is None:
            return None
        # Another process created the ledger between the two statements: read it now.
        rows = conn.execute(READ_LEDGER).fetchall()
    return [
        LedgerRow(ns, version, name, digest, datetime.fromisoformat(at), ms)
        for ns, version, name, digest, at, ms in rows
    ]


class SqliteMigrationSession(MigrationSession):
    """The shared connection, held by this thread, for one `initialize()`."""

    kind = "sqlite"
    create_ledger_sql = CREATE_LEDGER
    record_sql = INSERT_LEDGER
    recorded_sql = RECORDED

    def __init__(self, conn: sqlite3.Connection, where: str, timeout: float) -> None:
        self.conn = conn
        self.where = where
        self.timeout = timeout

    def transaction(self) -> AbstractContextManager[None]:
        return write_transaction(self.conn, self._busy)

    def _busy(self, error: sqlite3.OperationalError) -> MigrationLockTimeout:
        return MigrationLockTimeout(
            f"couldn't take the write lock on {self.where} after {self.timeout:.2f} sec: "
            "another process holds a write transaction",
            fix="wait for it to finish, or raise timeout=",
        )

    def run(self, statement: LiteralString, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self.conn.execute(statement, params).fetchall()

    def ledger(self) -> list[LedgerRow] | None:
        return read_ledger(self.conn)

    def ledger_values(self, migration: MigrationFile, elapsed_ms: float) -> tuple[Any, ...]:
        return (*super().ledger_values(migration, elapsed_ms), datetime.now(UTC).isoformat())

    def execute(self, statement: Statement) -> None:
        self.conn.execute(statement.text)

    def prepare(self) -> None:
        """SQLite needs nothing beyond the ledger."""

    def sqlstate(self, error: Exception) -> str | Literal[False] | None:
        if not isinstance(error, sqlite3.Error):
            return False
        return getattr(error, "sqlite_errorname", None)
