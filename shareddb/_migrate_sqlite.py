"""Applying migrations on SQLite, one ``BEGIN IMMEDIATE`` transaction per file.

``BEGIN IMMEDIATE`` takes the database's write lock (waiting up to the busy
timeout), so the ledger is re-read and verified under the lock before each file:
concurrent processes apply every file exactly once.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from ._migrate import (
    AppliedMigration,
    LedgerRow,
    MigrationFile,
    OnApplied,
    split_statements,
    statement_error,
    verify,
)
from ._sqlsplit import Statement
from .errors import MigrationLockTimeout

logger = logging.getLogger("shareddb.migrate")

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
    "INSERT INTO schema_migrations (namespace, version, name, checksum, applied_at, "
    "execution_ms) VALUES (?, ?, ?, ?, ?, ?)"
)


def read_ledger(conn: sqlite3.Connection) -> list[LedgerRow] | None:
    """The ledger's rows, or None when the table does not exist yet."""
    try:
        rows = conn.execute(READ_LEDGER).fetchall()
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return None
        raise
    return [
        LedgerRow(ns, version, name, digest, datetime.fromisoformat(at), ms)
        for ns, version, name, digest, at, ms in rows
    ]


def migrate(
    conn: sqlite3.Connection,
    files: Sequence[MigrationFile],
    *,
    where: str,
    timeout: float,
    on_applied: OnApplied | None = None,
) -> list[AppliedMigration]:
    """Apply pending files one transaction at a time; the caller holds the connection lock."""
    applied: list[AppliedMigration] = []
    while True:
        _begin_immediate(conn, where, timeout)
        try:
            conn.execute(CREATE_LEDGER)
            pending = verify(files, read_ledger(conn) or [])
            if not pending:
                conn.execute("COMMIT")
                return applied
            migration = pending[0]
            done = _apply_in_transaction(conn, migration) if migration.transactional else None
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if done is None:
            done = _apply_without_transaction(conn, migration, where, timeout)
        applied.append(done)
        if on_applied is not None:
            on_applied(done)


def is_busy(error: sqlite3.Error) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED (primary result codes): another connection holds a lock."""
    primary = getattr(error, "sqlite_errorcode", 0) & 0xFF
    return primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _begin_immediate(conn: sqlite3.Connection, where: str, timeout: float) -> None:
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as e:
        if not is_busy(e):
            raise
        raise MigrationLockTimeout(
            f"couldn't take the write lock on {where} after {timeout:.2f} sec: another "
            "process holds a write transaction; wait for it to finish, or raise timeout="
        ) from e


def _apply_in_transaction(conn: sqlite3.Connection, migration: MigrationFile) -> AppliedMigration:
    started = time.perf_counter()
    note = "nothing of this file was applied and schema_migrations is unchanged"
    for stmt in split_statements(migration, "sqlite"):
        _execute(conn, migration, stmt, note)
    elapsed = (time.perf_counter() - started) * 1000
    _record(conn, migration, elapsed)
    logger.info("applied migration %s in %.1f ms", migration.label, elapsed)
    return AppliedMigration(migration.namespace, migration.version, migration.filename, elapsed)


def _apply_without_transaction(
    conn: sqlite3.Connection, migration: MigrationFile, where: str, timeout: float
) -> AppliedMigration:
    """Run the statements in autocommit mode, then record the file if nobody else did."""
    started = time.perf_counter()
    note = (
        "earlier statements of this no-transaction file stay applied and the file is not "
        "recorded; make it idempotent (IF NOT EXISTS) and run initialize() again"
    )
    for stmt in split_statements(migration, "sqlite"):
        _execute(conn, migration, stmt, note)
    elapsed = (time.perf_counter() - started) * 1000
    _begin_immediate(conn, where, timeout)
    try:
        recorded = conn.execute(
            "SELECT 1 FROM schema_migrations WHERE namespace = ? AND version = ?",
            (migration.namespace, migration.version),
        ).fetchone()
        if recorded is None:
            _record(conn, migration, elapsed)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    logger.info("applied migration %s in %.1f ms", migration.label, elapsed)
    return AppliedMigration(migration.namespace, migration.version, migration.filename, elapsed)


def _execute(
    conn: sqlite3.Connection, migration: MigrationFile, stmt: Statement, note: str
) -> None:
    try:
        conn.execute(stmt.text)
    except sqlite3.Error as e:
        sqlstate = getattr(e, "sqlite_errorname", None)
        raise statement_error(migration, stmt, e, sqlstate, note) from e


def _record(conn: sqlite3.Connection, migration: MigrationFile, elapsed_ms: float) -> None:
    conn.execute(
        INSERT_LEDGER,
        (
            migration.namespace,
            migration.version,
            migration.filename,
            migration.checksum,
            datetime.now(UTC).isoformat(),
            elapsed_ms,
        ),
    )
