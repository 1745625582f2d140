"""Migrations on PostgreSQL: the ledger's SQL and a session advisory lock.

The lock is taken on a dedicated autocommit connection outside the pool, and
waited for by polling `pg_try_advisory_lock`: a blocked `pg_advisory_lock` call
is an open statement, which `CREATE INDEX CONCURRENTLY` would wait for forever.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, LiteralString, Self

import psycopg
from psycopg.pq import TransactionStatus

from shareddb._async.bridge import pause
from shareddb._core.types import PgConnection
from shareddb._core.url import DbTarget
from shareddb._engines.base import MigrationSession
from shareddb._engines.postgres.connect import connect
from shareddb._engines.postgres.pgvector import ensure_pgvector
from shareddb._migrations.ledger import LedgerRow
from shareddb._migrations.sqlsplit import Statement
from shareddb.errors import MigrationLockTimeout

IDLE = TransactionStatus.IDLE

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
READ_LEDGER = (
    "SELECT namespace, version, name, checksum, applied_at, execution_ms "
    "FROM schema_migrations ORDER BY namespace, version"
)
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
LEDGER_EXISTS = "SELECT to_regclass('schema_migrations')"
RECORDED = "SELECT 1 FROM schema_migrations WHERE namespace = %s AND version = %s"
# The server runs a statement to its end even when the client died meanwhile, holding
# the migration lock and the file's transaction: a process killed during a slow file
# would block every other initialize() until then. With this setting (PostgreSQL 14+)
# the server looks for its client every second and ends the session when it is gone.
# It is set for each file's transaction only (is_local), and around each statement of a
# no-transaction file, then reset: a session setting would outlive the run on a server
# connection that a pooler hands to its next client.
CHECK_CLIENT_LOCAL = b"SELECT set_config('client_connection_check_interval', '1s', true)"
CHECK_CLIENT_SESSION = b"SELECT set_config('client_connection_check_interval', '1s', false)"
CHECK_CLIENT_RESET = b"RESET client_connection_check_interval"
CHECK_CLIENT_SINCE = 140000
TRY_LOCK = "SELECT pg_try_advisory_lock(%s)"
UNLOCK = "SELECT pg_advisory_unlock(%s)"
LOCK_HOLDER = """\
SELECT a.pid, a.application_name, a.client_addr::text, a.backend_start
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.database = (
    SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = %s AND l.objid = %s AND l.objsubid = 1"""


def read_ledger(conn: PgConnection) -> tuple[list[LedgerRow], str | None] | None:
    """Ledger rows and the pgvector version, or None when there is no ledger yet."""
    try:
        rows = conn.execute(READ_LEDGER_AND_PGVECTOR).fetchall()
    except psycopg.errors.UndefinedTable:
        return None
    version = rows[0][6] if rows else None
    return [LedgerRow(*row[:6]) for row in rows if row[0] is not None], version


class PostgresMigrationSession(MigrationSession):
    """A dedicated autocommit connection holding the advisory lock for one `initialize()`."""

    kind = "postgres"
    create_ledger_sql = CREATE_LEDGER
    record_sql = INSERT_LEDGER
    recorded_sql = RECORDED

    def __init__(self, conn: PgConnection, target: DbTarget) -> None:
        self.conn = conn
        self.target = target
        self.where = target.masked
        self.pgvector_version: str | None = None
        self._check_client = conn.info.server_version >= CHECK_CLIENT_SINCE

    @classmethod
    @contextmanager
    def locked(
        cls,
        target: DbTarget,
        timeout: float,
        lock_timeout: float,
        *,
        check: Callable[[PgConnection], None] | None = None,
    ) -> Iterator[Self]:
        """A session on a new connection to `target` that `check` accepted, holding the lock."""
        with connect(target, timeout, autocommit=True) as conn:
            if check is not None:
                check(conn)
            _lock(conn, target, lock_timeout)
            try:
                yield cls(conn, target)
            finally:
                if not conn.broken:
                    conn.execute(UNLOCK, (LOCK_KEY,))

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self.conn.transaction():
            if self._check_client:
                self.conn.execute(CHECK_CLIENT_LOCAL)
            yield

    def run(self, statement: LiteralString, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        cursor = self.conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []

    def ledger(self) -> list[LedgerRow] | None:
        # Looked up first: a failed SELECT would abort the file's transaction.
        if self.run(LEDGER_EXISTS)[0][0] is None:
            return None
        return [LedgerRow(*row) for row in self.run(READ_LEDGER)]

    def execute(self, statement: Statement) -> None:
        # Migration files are trusted SQL from disk; bytes keep psycopg from parsing %.
        if not self._check_client or self.conn.info.transaction_status != IDLE:
            self.conn.execute(statement.text.encode())
            return
        # A statement of a no-transaction file (CREATE INDEX CONCURRENTLY): the setting
        # can only be the session's, so it is reset right after.
        self.conn.execute(CHECK_CLIENT_SESSION)
        try:
            self.conn.execute(statement.text.encode())
        finally:
            if not self.conn.broken and self.conn.info.transaction_status == IDLE:
                self.conn.execute(CHECK_CLIENT_RESET)

    def sqlstate(self, error: Exception) -> str | Literal[False] | None:
        return error.sqlstate if isinstance(error, psycopg.Error) else False

    def prepare(self) -> None:
        self.pgvector_version = ensure_pgvector(self.conn, self.target)


def _lock(conn: PgConnection, target: DbTarget, lock_timeout: float) -> None:
    deadline = time.monotonic() + lock_timeout
    delay = 0.05
    while not _try_lock(conn):
        if time.monotonic() >= deadline:
            raise _lock_timeout(conn, target, lock_timeout)
        pause(delay)  # on the async twin, the event loop goes on meanwhile
        delay = min(delay * 2, 1.0)


def _try_lock(conn: PgConnection) -> bool:
    row = conn.execute(TRY_LOCK, (LOCK_KEY,)).fetchone()
    return bool(row and row[0])


def _lock_timeout(
    conn: PgConnection, target: DbTarget, lock_timeout: float
) -> MigrationLockTimeout:
    holder = conn.execute(LOCK_HOLDER, (LOCK_KEY >> 32, LOCK_KEY & 0xFFFFFFFF)).fetchone()
    who = "another session"
    if holder is not None:
        pid, app, addr, since = holder
        who = (
            f"pid {pid} ({app or 'no application_name'}, from {addr or 'local socket'}, "
            f"connected {since:%Y-%m-%d %H:%M:%S})"
        )
    return MigrationLockTimeout(
        f"couldn't take the migration lock on {target.masked} after {lock_timeout:.2f} sec: "
        f"held by {who}",
        fix="wait for that migration to finish, or if it is stuck, end it with SELECT "
        "pg_terminate_backend(<pid>) and run initialize() again",
    )
