"""The SQLite engine: one WAL-mode connection shared by the process's threads.

An RLock serialises the threads; the outermost block of a thread runs in
``BEGIN IMMEDIATE`` (writes) or a deferred transaction (reads, which see a WAL
snapshot and never wait for another process's write lock), and nested blocks
become savepoints. ``SQLITE_BUSY`` becomes DatabaseUnavailableError here.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from typing import Any, ClassVar

from shareddb._engines.base import Dialect, Engine, MigrationSession, TableProblem
from shareddb._engines.sqlite.locking import is_busy, write_transaction
from shareddb._engines.sqlite.migrate import SqliteMigrationSession, read_ledger
from shareddb._migrations.ledger import LedgerRow
from shareddb._vectors.ops import VectorOps
from shareddb.errors import DatabaseUnavailableError, MigrationError

# Connections a forked child inherited and let go of: kept referenced so that garbage
# collection never closes what the parent still uses.
_inherited: list[object] = []

SQLITE_DIALECT = Dialect(
    placeholder="?",
    in_keys="IN ({keys})",
    # seq = max + 1 is safe on SQLite: every write runs under BEGIN IMMEDIATE (one writer).
    session_insert=(
        "INSERT INTO sessions (session, repo_name, repo_url, branch, task_id, created_at, "
        "updated_at, seq) VALUES (?, ?, ?, ?, ?, ?, ?, "
        "(SELECT coalesce(max(seq), 0) + 1 FROM sessions)) ON CONFLICT (session) DO NOTHING"
    ),
    session_for_update="",  # BEGIN IMMEDIATE already holds the write lock
)


def quote_identifier(name: str) -> str:
    """``"name"`` with embedded quotes doubled: the one way identifiers reach SQLite SQL."""
    return '"' + name.replace('"', '""') + '"'


class SqliteEngine(Engine[sqlite3.Connection]):
    kind: ClassVar = "sqlite"
    dialect: ClassVar = SQLITE_DIALECT
    connection_type: ClassVar = sqlite3.Connection
    driver_errors: ClassVar = (sqlite3.OperationalError,)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._depth = 0  # nested transaction() blocks of the thread holding _lock

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    def _connect(self) -> None:
        path = self.target.sqlite_path
        try:
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                ":memory:" if path is None else path,
                timeout=self.timeout,
                isolation_level=None,  # we issue BEGIN / COMMIT ourselves
                check_same_thread=False,  # shared by threads behind _lock
            )
        except (OSError, sqlite3.Error) as e:
            raise DatabaseUnavailableError(
                f"couldn't open SQLite database {self.target.url}: {e}",
                fix="check that the folder exists and is writable",
            ) from None
        try:
            if path is not None:
                _enable_wal(conn, self.timeout)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
        except (OSError, sqlite3.Error) as e:
            conn.close()
            raise DatabaseUnavailableError(
                f"couldn't set up SQLite database {self.target.url} within "
                f"{self.timeout:.2f} sec: {e}",
                fix="check that the file is writable and that no other process keeps it "
                "locked, or raise timeout",
            ) from None
        self._conn = conn

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with self._lock:
                conn.close()

    def _forget(self) -> None:
        _inherited.append(self._conn)
        self._conn = None
        self._lock = threading.RLock()
        self._depth = 0

    def client(self) -> sqlite3.Connection:
        self.ensure_open()
        assert self._conn is not None
        return self._conn

    # -- connections -----------------------------------------------------------------------

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._block(immediate=True)

    def reading(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._block(immediate=False)

    def statement(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._block(immediate=True)

    @contextmanager
    def _block(self, *, immediate: bool) -> Iterator[sqlite3.Connection]:
        with self.holding() as conn:
            depth = self._depth
            self._depth += 1
            try:
                if depth:
                    with self.savepoint(conn, f"shareddb_{depth}"):
                        yield conn
                else:
                    with self._begin(conn, immediate=immediate):
                        yield conn
            finally:
                self._depth = depth

    @contextmanager
    def holding(self) -> Iterator[sqlite3.Connection]:
        """The connection, held by this thread (no transaction is opened)."""
        self.ensure_open()
        conn = self._conn
        assert conn is not None
        if not self._lock.acquire(timeout=self.timeout):
            raise DatabaseUnavailableError(
                f"couldn't get the SQLite connection to {self.target.url} after "
                f"{self.timeout:.2f} sec: another thread kept it in a transaction",
                fix="keep transactions short or raise timeout",
            )
        try:
            yield conn
        finally:
            self._lock.release()

    def _begin(self, conn: sqlite3.Connection, *, immediate: bool) -> AbstractContextManager[None]:
        return write_transaction(conn, self._busy, immediate=immediate)

    def _busy(self, error: sqlite3.OperationalError) -> DatabaseUnavailableError:
        return DatabaseUnavailableError(
            f"SQLite database {self.target.url} stayed locked by another process for "
            f"{self.timeout:.2f} sec ({error})",
            fix="keep write transactions short or raise timeout",
        )

    def begin(
        self, conn: sqlite3.Connection, *, rollback: bool = False
    ) -> AbstractContextManager[None]:
        return self._begin(conn, immediate=True) if not rollback else _rolled_back(conn)

    def in_transaction(self, conn: sqlite3.Connection) -> bool:
        return conn.in_transaction

    def can_roll_back(self, conn: sqlite3.Connection) -> bool:
        return conn.in_transaction

    def control(self, conn: sqlite3.Connection, statement: str) -> None:
        conn.execute(statement)

    # -- errors ----------------------------------------------------------------------------

    def table_problem(self, error: Exception, table: str) -> TableProblem | None:
        """By the catalog, not the message: sqlite3 gives both problems one result code."""
        if not isinstance(error, sqlite3.OperationalError) or is_busy(error):
            return None
        with self.reading() as conn:
            if not self.table_exists(conn, table):
                return "missing"
            columns = {
                row[1] for row in conn.execute("SELECT * FROM pragma_table_info(?)", (table,))
            }
        return None if columns >= _EMBEDDING_COLUMNS else "other layout"

    def table_exists(self, conn: sqlite3.Connection, table: str) -> bool:
        row = conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
        ).fetchone()
        return bool(row[0])

    # -- migrations ------------------------------------------------------------------------

    def read_ledger(self) -> list[LedgerRow] | None:
        with self.holding() as conn:
            return read_ledger(conn)

    @contextmanager
    def migration_session(self, lock_timeout: float) -> Iterator[MigrationSession]:
        with self.holding() as conn:
            if self._depth:
                raise MigrationError(
                    "initialize() was called inside connection() or transaction() on the same "
                    "thread",
                    fix="call it before opening a transaction",
                )
            yield SqliteMigrationSession(conn, f"SQLite database {self.target.url}", self.timeout)

    # -- domains ---------------------------------------------------------------------------

    def vector_ops(self, table: str) -> VectorOps:
        from shareddb._engines.sqlite.vectors import SqliteVectors

        return SqliteVectors(self, table)

    def write_time(self, value: datetime) -> str:
        # Fixed width ('2025-01-31T09:30:00.000000+00:00'), so text order is time order.
        return value.astimezone(UTC).isoformat(timespec="microseconds")

    def read_time(self, value: Any) -> datetime:
        return datetime.fromisoformat(value).astimezone(UTC)

    # -- administration --------------------------------------------------------------------

    def server_version(self, conn: sqlite3.Connection) -> str:
        return f"SQLite {sqlite3.sqlite_version}"


_EMBEDDING_COLUMNS = frozenset(
    {"id", "qualified_task_id", "backend", "dimension", "embedding", "created_at", "updated_at"}
)


@contextmanager
def _rolled_back(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN")
    try:
        yield
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def _enable_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Put the file in WAL mode, retrying for up to `timeout` sec while others hold locks.

    Switching needs an exclusive lock, and when several processes switch a fresh file
    at the same moment SQLite answers "database is locked" at once, without waiting in
    the busy handler (it would deadlock). Reading the mode first keeps the usual case,
    a file already in WAL mode, free of any write lock.
    """
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            row = conn.execute("PRAGMA journal_mode").fetchone()
            if row is None or str(row[0]).lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if not is_busy(e) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
