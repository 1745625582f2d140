"""Applying migrations on PostgreSQL under a session advisory lock.

The lock is taken on a dedicated autocommit connection outside the pool, and
waited for by polling `pg_try_advisory_lock`: a blocked `pg_advisory_lock` call
is an open statement, which `CREATE INDEX CONCURRENTLY` would wait for forever.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import psycopg

from ._migrate import (
    AppliedMigration,
    LedgerRow,
    MigrationFile,
    OnApplied,
    split_statements,
    statement_error,
    verify,
)
from ._pg import PgConnection, connect, ensure_pgvector
from ._sqlsplit import Statement
from ._url import DbTarget
from .errors import MigrationLockTimeout

logger = logging.getLogger("shareddb.migrate")

# int.from_bytes(b"shareddb"): one cluster-wide key per database for the runner.
LOCK_KEY = 0x7368617265646462

CREATE_LEDGER = """\
CREATE TABLE IF NOT EXISTS schema_migrations (
    namespace text NOT NULL,
    version integer NOT NULL,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    execution_ms double precision NOT NULL,
    PRIMARY KEY (namespace, version)
)"""
# The up-to-date check: the ledger and pgvector's version in one round trip. The outer
# join yields one all-NULL ledger row when the ledger is empty, so the version still comes.
READ_LEDGER_AND_PGVECTOR = (
    "SELECT m.namespace, m.version, m.name, m.checksum, m.applied_at, m.execution_ms, "
    "(SELECT extversion FROM pg_extension WHERE extname = 'vector') "
    "FROM (SELECT) AS one LEFT JOIN schema_migrations AS m ON true "
    "ORDER BY m.namespace, m.version"
)
INSERT_LEDGER = (
    "INSERT INTO schema_migrations (namespace, version, name, checksum, execution_ms) "
    "VALUES (%s, %s, %s, %s, %s)"
)
# The server runs a statement to its end even when the client died meanwhile, holding
# the migration lock and the file's transaction: a process killed during a slow file
# would block every other initialize() until then. With this setting (PostgreSQL 14+)
# the server looks for its client every second and ends the session when it is gone.
CHECK_CLIENT = "SELECT set_config('client_connection_check_interval', '1s', false)"
CHECK_CLIENT_SINCE = 140000
TRY_LOCK = "SELECT pg_try_advisory_lock(%s)"
UNLOCK = "SELECT pg_advisory_unlock(%s)"
LOCK_HOLDER = """\
SELECT a.pid, a.application_name, a.client_addr::text, a.backend_start
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.database = (
    SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = %s AND l.objid = %s AND l.objsubid = 1"""


def read_ledger_fast(conn: PgConnection) -> tuple[list[LedgerRow], str | None] | None:
    """Ledger rows and the pgvector version, or None when there is no ledger yet."""
    try:
        rows = conn.execute(READ_LEDGER_AND_PGVECTOR).fetchall()
    except psycopg.errors.UndefinedTable:
        return None
    version = rows[0][6] if rows else None
    return [LedgerRow(*row[:6]) for row in rows if row[0] is not None], version


def migrate(
    target: DbTarget,
    files: Sequence[MigrationFile],
    *,
    timeout: float,
    lock_timeout: float,
    on_applied: OnApplied | None = None,
) -> tuple[list[AppliedMigration], str]:
    """Lock, verify, ensure pgvector, apply pending files; returns them and pgvector's version.

    Nothing is created before the ledger is verified and pgvector is known to be
    available: a refused run leaves the database as it found it.
    """
    with connect(target, timeout, autocommit=True) as conn:
        if conn.info.server_version >= CHECK_CLIENT_SINCE:
            conn.execute(CHECK_CLIENT)
        _lock(conn, target, lock_timeout)
        try:
            fast = read_ledger_fast(conn)
            pending = verify(files, fast[0] if fast is not None else [])
            pgvector = ensure_pgvector(conn, target)
            if fast is None:
                conn.execute(CREATE_LEDGER)
            applied: list[AppliedMigration] = []
            for migration in pending:
                applied.append(_apply(conn, migration))
                if on_applied is not None:
                    on_applied(applied[-1])
            return applied, pgvector
        finally:
            if not conn.broken:
                conn.execute(UNLOCK, (LOCK_KEY,))


def _lock(conn: PgConnection, target: DbTarget, lock_timeout: float) -> None:
    deadline = time.monotonic() + lock_timeout
    delay = 0.05
    while not _try_lock(conn):
        if time.monotonic() >= deadline:
            raise MigrationLockTimeout(_lock_timeout_message(conn, target, lock_timeout))
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def _try_lock(conn: PgConnection) -> bool:
    row = conn.execute(TRY_LOCK, (LOCK_KEY,)).fetchone()
    return bool(row and row[0])


def _lock_timeout_message(conn: PgConnection, target: DbTarget, lock_timeout: float) -> str:
    holder = conn.execute(LOCK_HOLDER, (LOCK_KEY >> 32, LOCK_KEY & 0xFFFFFFFF)).fetchone()
    who = "another session"
    if holder is not None:
        pid, app, addr, since = holder
        who = (
            f"pid {pid} ({app or 'no application_name'}, from {addr or 'local socket'}, "
            f"connected {since:%Y-%m-%d %H:%M:%S})"
        )
    return (
        f"couldn't take the migration lock on {target.masked} after {lock_timeout:.2f} sec: "
        f"held by {who}; wait for that migration to finish, or if it is stuck, end it "
        "with SELECT pg_terminate_backend(<pid>) and run initialize() again"
    )


def _apply(conn: PgConnection, migration: MigrationFile) -> AppliedMigration:
    statements = split_statements(migration, "postgres")
    started = time.perf_counter()
    if migration.transactional:
        note = "nothing of this file was applied and schema_migrations is unchanged"
        with conn.transaction():
            for stmt in statements:
                _execute(conn, migration, stmt, note)
            elapsed = (time.perf_counter() - started) * 1000
            _record(conn, migration, elapsed)
    else:
        note = (
            "earlier statements of this no-transaction file stay applied and the file is "
            "not recorded; make it idempotent (IF NOT EXISTS) and run initialize() again"
        )
        for stmt in statements:
            _execute(conn, migration, stmt, note)
        elapsed = (time.perf_counter() - started) * 1000
        _record(conn, migration, elapsed)
    logger.info("applied migration %s in %.1f ms", migration.label, elapsed)
    return AppliedMigration(migration.namespace, migration.version, migration.filename, elapsed)


def _execute(conn: PgConnection, migration: MigrationFile, stmt: Statement, note: str) -> None:
    try:
        # Migration files are trusted SQL from disk; bytes keep psycopg from parsing %.
        conn.execute(stmt.text.encode())
    except psycopg.Error as e:
        raise statement_error(migration, stmt, e, e.sqlstate, note) from e


def _record(conn: PgConnection, migration: MigrationFile, elapsed_ms: float) -> None:
    conn.execute(
        INSERT_LEDGER,
        (
            migration.namespace,
            migration.version,
            migration.filename,
            migration.checksum,
            elapsed_ms,
        ),
    )
