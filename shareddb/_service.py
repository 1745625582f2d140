"""DbService: the one entry point every domain of an application shares."""

from __future__ import annotations

import dataclasses
import logging
import os
import select
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import psycopg
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool, PoolTimeout

from . import _embedded, _migrate, _migrate_pg, _migrate_sqlite
from ._pg import (
    PgConnection,
    connect,
    connect_kwargs,
    lost_connection,
    register_types,
    unavailable,
)
from ._url import BackendType, DbTarget, parse_url
from .errors import ConfigError, DatabaseUnavailableError, MigrationError, ShareddbError

if TYPE_CHECKING:
    from ._config import DbConfig

logger = logging.getLogger("shareddb")

# What connection() yields: psycopg.Connection on PostgreSQL, sqlite3.Connection on SQLite.
Connection = Any

# A wait for a pooled connection is cut into slices of this many seconds (see _checkout).
_POOL_WAIT_SLICE = 1.0
# Longest psycopg_pool keeps retrying one lost connection before giving up (it tries
# again as soon as a client asks for a connection).
_RECONNECT_TIMEOUT = 5.0

IDLE = TransactionStatus.IDLE

# Pools and SQLite connections a forked child inherited and let go of in close(): kept
# referenced so that garbage collection never closes what the parent still uses.
_inherited: list[tuple[object, object]] = []


def _usable(conn: PgConnection) -> bool:
    """False for a pooled connection whose server went away while it sat idle.

    An idle connection's socket has nothing to read unless the server closed it (or
    sent a message before closing it): a poll that does not wait costs one system
    call, and only a readable socket costs a round trip to the server.
    """
    if conn.closed or conn.broken:
        return False
    try:
        if not _readable(conn.fileno()):
            return True
        ConnectionPool.check_connection(conn)
    except (psycopg.Error, OSError, ValueError):
        return False
    return True


def _readable(fd: int) -> bool:
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([fd], [], [], 0)[0])  # pragma: no cover - Windows


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
            if not _migrate_sqlite.is_busy(e) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


class _Autocommit:
    """The context manager of `DbService._autocommit()`: a class, cheaper than a generator."""

    __slots__ = ("_conn", "_db", "_pool")

    def __init__(self, db: DbService) -> None:
        self._db = db

    def __enter__(self) -> PgConnection:
        db = self._db
        pool = db._pool
        if pool is None or db._pid != os.getpid():
            db._ensure_open()
            pool = db._pool
            if pool is None:
                raise ShareddbError(f"{db!r} is not a PostgreSQL service")
        conn, pooled = db._checkout(pool)
        if not conn.autocommit:
            try:
                conn.autocommit = True  # left out of autocommit by a raw user of the pool
            except BaseException:
                db._release(conn, pool if pooled else None)
                raise
        self._conn = conn
        self._pool = pool if pooled else None
        return conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn = self._conn
        db = self._db
        try:
            if isinstance(exc, psycopg.OperationalError) and conn.broken:
                raise lost_connection(db._target, exc) from exc
        finally:
            db._release(conn, self._pool)


class DbService:
    """One database for the whole application: a psycopg pool or one shared sqlite3 connection.

    The constructor does no I/O; `open()` connects (and `initialize()` and
    `connection()` open on demand). Use `connection()` or `transaction()` for SQL,
    and pass the service to domain classes (`VectorStorage(db)`,
    `SessionStorage(db)`) rather than letting them open their own connections.
    In a process that wants one service per target, use `get_shared_db()`.

    :param url: ``sqlite:///relative.db``, ``sqlite:////absolute.db``,
        ``sqlite:///:memory:`` or a libpq URI ``postgresql://user:pass@host:5432/db``.
    :param schema_dirs: extra migration namespaces: ``{"myapp": "path/to/migrations"}``.
    :param min_size: connections the PostgreSQL pool keeps open.
    :param max_size: most connections the PostgreSQL pool opens.
    :param timeout: seconds to wait for a connection (PostgreSQL) or a lock (SQLite).
    """

    def __init__(
        self,
        url: str,
        *,
        schema_dirs: Mapping[str, str | os.PathLike[str]] | None = None,
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 30.0,
    ) -> None:
        self._target: DbTarget = parse_url(url)
        if not (isinstance(min_size, int) and isinstance(max_size, int) and min_size >= 0):
            raise ConfigError(f"min_size={min_size!r} must be a whole number >= 0")
        if max_size < max(min_size, 1):
            raise ConfigError(
                f"max_size={max_size!r} must be >= 1 and >= min_size={min_size}; raise max_size"
            )
        if not isinstance(timeout, int | float) or not timeout > 0:
            raise ConfigError(f"timeout={timeout!r} must be a number of seconds > 0")
        self._schema_dirs = {ns: Path(folder) for ns, folder in (schema_dirs or {}).items()}
        self._min_size = min_size
        self._max_size = max_size
        self._timeout = float(timeout)
        self._open_lock = threading.Lock()
        self._pid: int | None = None
        self._pool: ConnectionPool[PgConnection] | None = None
        # Connections of the pool checked out through connection(), to tell a pool
        # that is full from one that lost its connections.
        self._in_use = 0
        self._in_use_lock = threading.Lock()
        self._vector_types_missing = False
        self._pgvector_version: str | None = None
        self._sqlite: sqlite3.Connection | None = None
        # One sqlite3 connection shared by threads: the RLock serialises its use and
        # _sqlite_depth counts nested connection() blocks (they become savepoints).
        self._sqlite_lock = threading.RLock()
        self._sqlite_depth = 0

    @classmethod
    def from_config(cls, config: DbConfig, **kwargs: Any) -> Self:
        """A DbService for `config.url`; keyword arguments as for the constructor."""
        return cls(config.url, **kwargs)

    def __repr__(self) -> str:
        state = "open" if self._is_open() else "closed"
        return f"<DbService {self.get_backend_type()} {self._target.masked!r} {state}>"

    @property
    def url(self) -> str:
        """The target URL with the password masked (safe to log)."""
        return self._target.masked

    @property
    def timeout(self) -> float:
        return self._timeout

    @property
    def pgvector_version(self) -> str | None:
        """pgvector's installed version once `initialize()` ran on PostgreSQL, else None."""
        return self._pgvector_version

    def get_backend_type(self) -> BackendType:
        """``"sqlite"`` or ``"postgres"``."""
        return self._target.backend

    # -- lifecycle ---------------------------------------------------------------------

    def open(self) -> None:
        """Connect: open the pool (waiting up to `timeout` for a first connection) or the file.

        Calling it on an open service does nothing. Raises DatabaseUnavailableError
        when the database can't be reached. An embedded PostgreSQL URL
        (``postgresql+embedded://``) starts the local server here, or reuses the one
        running on that folder (ConfigError names the install command when the
        ``embedded`` extra is missing).
        """
        with self._open_lock:
            if self._is_open():
                return
            # _pid first: other threads see the service open once _pool/_sqlite is set.
            self._pid = os.getpid()
            if self._target.backend == "postgres":
                if self._target.embedded_dir is not None:
                    uri = _embedded.start(self._target.embedded_dir)
                    self._target = dataclasses.replace(self._target, conninfo=uri)
                self._pool = self._open_pool()
            else:
                self._sqlite = self._open_sqlite()
            logger.debug("opened %r", self)

    def close(self) -> None:
        """Close the pool or the SQLite connection; the service can be opened again."""
        with self._open_lock:
            pool, self._pool = self._pool, None
            conn, self._sqlite = self._sqlite, None
            if self._pid is not None and self._pid != os.getpid():
                # Inherited across fork(): the parent still uses these. Closing them here
                # would end the parent's PostgreSQL sessions, so keep them referenced
                # (never finalized) and forget them; the child may open() its own.
                _inherited.append((pool, conn))
                self._sqlite_lock = threading.RLock()
                self._sqlite_depth = 0
                self._in_use_lock = threading.Lock()
                self._in_use = 0
                self._pid = None
                logger.debug("forgot %r inherited across fork()", self)
                return
            if pool is not None:
                pool.close()
            if conn is not None:
                with self._sqlite_lock:
                    conn.close()
            self._pid = None
            logger.debug("closed %r", self)

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _is_open(self) -> bool:
        return self._pool is not None or self._sqlite is not None

    def _open_pool(self) -> ConnectionPool[PgConnection]:
        def configure(conn: PgConnection) -> None:
            # Pooled connections rest in autocommit mode: a single statement (a search,
            # a one-row write) is one round trip with no mode switches, and
            # connection() switches to a transaction for its block and back.
            conn.autocommit = True
            if not register_types(conn):
                self._vector_types_missing = True

        pool: ConnectionPool[PgConnection] = ConnectionPool(
            self._target.conninfo,
            min_size=self._min_size,
            max_size=self._max_size,
            timeout=self._timeout,
            kwargs=connect_kwargs(self._target, self._timeout),
            configure=configure,
            # psycopg_pool retries a failed connection with a delay that doubles each
            # time; bounded, a pool that lost its server tries again within a second
            # or two of the server's return, not minutes later.
            reconnect_timeout=min(self._timeout, _RECONNECT_TIMEOUT),
            name="shareddb",
            open=False,
        )
        # Fail here with libpq's reason rather than later with a bare pool timeout.
        connect(self._target, self._timeout).close()
        # Wait for min_size connections: a first request that found the pool still
        # connecting would make it grow, leaving one connection more than needed.
        try:
            pool.open(wait=True, timeout=self._timeout)
        except PoolTimeout as e:  # the pool is closed again
            raise unavailable(self._target, e) from None
        return pool

    def _open_sqlite(self) -> sqlite3.Connection:
        path = self._target.sqlite_path
        try:
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                ":memory:" if path is None else path,
                timeout=self._timeout,
                isolation_level=None,  # we issue BEGIN / COMMIT ourselves
                check_same_thread=False,  # shared by threads behind _sqlite_lock
            )
        except (OSError, sqlite3.Error) as e:
            raise DatabaseUnavailableError(
                f"couldn't open SQLite database {self._target.url}: {e}; check that the "
                "folder exists and is writable"
            ) from None
        try:
            if path is not None:
                _enable_wal(conn, self._timeout)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
        except (OSError, sqlite3.Error) as e:
            conn.close()
            raise DatabaseUnavailableError(
                f"couldn't set up SQLite database {self._target.url} within "
                f"{self._timeout:.2f} sec: {e}; check that the file is writable and that no "
                "other process keeps it locked, or raise timeout"
            ) from None
        return conn

    def _ensure_open(self) -> None:
        if not self._is_open():
            self.open()
        if self._pid != os.getpid():
            raise ShareddbError(
                f"{self!r} was opened in process {self._pid} and used in process "
                f"{os.getpid()} after fork(); open a new DbService in the child, or use "
                "get_shared_db(), which does"
            )

    # -- SQL access --------------------------------------------------------------------

    def get_sql(self) -> ConnectionPool[PgConnection] | sqlite3.Connection:
        """The underlying client: the psycopg `ConnectionPool`, or the `sqlite3.Connection`.

        Prefer `connection()`: on SQLite it serialises threads and manages the
        transaction; raw use of the sqlite3 connection bypasses both. The pool's
        connections are in autocommit mode (each statement commits on its own, as
        after ``psycopg.connect(..., autocommit=True)``): open ``conn.transaction()``
        for a transaction on one, and leave it in autocommit mode when returning it.
        """
        self._ensure_open()
        if self._pool is not None:
            return self._pool
        assert self._sqlite is not None
        return self._sqlite

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """A DB-API connection in a transaction: committed on success, rolled back on error.

        On PostgreSQL a pooled psycopg connection with pgvector's types registered
        (placeholders ``%s``); on SQLite the shared sqlite3 connection inside
        ``BEGIN IMMEDIATE`` (placeholders ``?``); a nested block on the same thread
        becomes a savepoint. Use `transaction()` for a unit of work across domains.
        """
        self._ensure_open()
        if self._pool is not None:
            with self._pg_connection() as conn:
                yield conn
        else:
            with self._sqlite_transaction() as sqlite_conn:
                yield sqlite_conn

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        """`connection()` for domain reads: on SQLite a deferred transaction.

        ``BEGIN IMMEDIATE`` would take the file's write lock, so a read would wait
        for (and time out behind) another process's write; a deferred read
        transaction sees a WAL snapshot instead. Don't write inside it.
        """
        self._ensure_open()
        if self._pool is not None:
            with self._pg_connection() as conn:
                yield conn
        else:
            with self._sqlite_transaction(immediate=False) as sqlite_conn:
                yield sqlite_conn

    def transaction(self) -> Any:
        """The same as `connection()`, named for units of work that span domains.

        Pass the connection to domain methods as ``conn=`` so they join it::

            with db.transaction() as conn:
                sessions.add(record, conn=conn)
                vectors.upsert("md#253", embedding, conn=conn)
        """
        return self.connection()

    @contextmanager
    def _pg_connection(self) -> Iterator[PgConnection]:
        pool = self._pool
        assert pool is not None
        conn, pooled = self._checkout(pool)
        try:
            # Out of autocommit for the block: the first statement starts the
            # transaction (psycopg sends BEGIN), and the caller may commit() in it.
            conn.autocommit = False
            try:
                # Commit on success, roll back on error; a pooled connection stays open,
                # a direct one (see _checkout) is closed.
                with conn:
                    yield conn
            except psycopg.OperationalError as e:
                # Also covers a connection lost during the commit itself.
                if conn.broken:
                    raise lost_connection(self._target, e) from e
                raise
            finally:
                if not conn.closed and conn.info.transaction_status == IDLE:
                    conn.autocommit = True  # how pooled connections rest
        finally:
            self._release(conn, pool if pooled else None)

    def _autocommit(self) -> _Autocommit:
        """``with db._autocommit() as conn``: a pooled connection in autocommit mode.

        For domain code that runs single statements (each commits on its own, one
        round trip each, no BEGIN / COMMIT): the lean path of searches and one-row
        writes. Errors as in `connection()`: DatabaseUnavailableError when the
        server can't be reached or the connection breaks while in use.
        """
        return _Autocommit(self)

    def _release(self, conn: PgConnection, pool: ConnectionPool[PgConnection] | None) -> None:
        """Give back what `_checkout` handed out: to its pool, or close a direct connection."""
        with self._in_use_lock:
            self._in_use -= 1
        if pool is not None:
            pool.putconn(conn)
        else:
            conn.close()

    def _checkout(self, pool: ConnectionPool[PgConnection]) -> tuple[PgConnection, bool]:
        """A live connection within `timeout` and whether it is pooled, or an error saying why.

        The wait is cut in slices. After a slice without a connection while the pool
        still has room, one direct connection attempt tells a server that is down
        (its reason is raised at the deadline) from one that is back while the pool
        still waits to reconnect (psycopg_pool retries lost connections with a
        growing delay): rather than fail then, the call runs on that direct
        connection, which is closed afterwards. Connections whose server went away
        while they sat idle are dropped here, so the first calls after a restart
        don't fail on them.
        """
        deadline = time.monotonic() + self._timeout
        down: DatabaseUnavailableError | None = None
        while True:
            remaining = deadline - time.monotonic()
            try:
                conn = pool.getconn(timeout=max(min(remaining, _POOL_WAIT_SLICE), 0.001))
            except PoolTimeout:
                with self._in_use_lock:
                    full = self._in_use >= self._max_size
                if full:
                    down = None
                else:
                    probe, down = self._probe(deadline)
                    if probe is not None:
                        if time.monotonic() < deadline:
                            probe.close()  # the pool will reconnect now: ask it again
                        else:
                            logger.info("serving a call on a direct connection to %s", self.url)
                            with self._in_use_lock:
                                self._in_use += 1
                            return probe, False
                if time.monotonic() >= deadline:
                    raise self._no_connection(down) from None
                continue
            if _usable(conn):
                with self._in_use_lock:
                    self._in_use += 1
                return conn, True
            logger.info("dropping a pooled connection to %s that the server closed", self.url)
            pool.putconn(conn)  # broken: the pool closes it and opens another

    def _probe(
        self, deadline: float
    ) -> tuple[PgConnection | None, DatabaseUnavailableError | None]:
        """A direct connection, configured like the pool's, or the reason there is none."""
        budget = min(max(deadline - time.monotonic(), 1.0), 5.0)
        try:
            conn = connect(self._target, budget, autocommit=True)
        except DatabaseUnavailableError as e:
            return None, e
        try:
            register_types(conn)
        except psycopg.Error as e:
            conn.close()
            return None, unavailable(self._target, e)
        return conn, None

    def _no_connection(self, down: DatabaseUnavailableError | None) -> DatabaseUnavailableError:
        """Tell an unreachable server from a pool whose connections are all in use."""
        if down is not None:
            return down
        return DatabaseUnavailableError(
            f"couldn't get a connection to {self._target.masked} after {self._timeout:.2f} "
            f"sec: all {self._max_size} connections of the pool are in use; return "
            "connections sooner (keep transactions short) or raise max_size or timeout"
        )

    @contextmanager
    def _sqlite_transaction(self, *, immediate: bool = True) -> Iterator[sqlite3.Connection]:
        conn = self._sqlite
        assert conn is not None
        if not self._sqlite_lock.acquire(timeout=self._timeout):
            raise DatabaseUnavailableError(
                f"couldn't get the SQLite connection to {self._target.url} after "
                f"{self._timeout:.2f} sec: another thread kept it in a transaction; keep "
                "transactions short or raise timeout"
            )
        try:
            depth = self._sqlite_depth
            savepoint = f"shareddb_{depth}"
            if depth == 0 and immediate:
                self._begin_immediate(conn)
            elif depth == 0:
                conn.execute("BEGIN")
            else:
                conn.execute(f'SAVEPOINT "{savepoint}"')
            self._sqlite_depth += 1
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    if depth == 0:
                        conn.execute("ROLLBACK")
                    else:
                        conn.execute(f'ROLLBACK TO "{savepoint}"')
                        conn.execute(f'RELEASE "{savepoint}"')
                raise
            else:
                if conn.in_transaction:
                    try:
                        conn.execute("COMMIT" if depth == 0 else f'RELEASE "{savepoint}"')
                    except BaseException:
                        # A failed COMMIT (a deferred constraint, a full disk) leaves the
                        # transaction open: end it, or the shared connection stays stuck.
                        if depth == 0 and conn.in_transaction:
                            conn.execute("ROLLBACK")
                        raise
            finally:
                self._sqlite_depth = depth
        finally:
            self._sqlite_lock.release()

    def _begin_immediate(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            if not _migrate_sqlite.is_busy(e):
                raise
            raise DatabaseUnavailableError(
                f"SQLite database {self._target.url} stayed locked by another process for "
                f"{self._timeout:.2f} sec ({e}); keep write transactions short or raise timeout"
            ) from e

    # -- schema ------------------------------------------------------------------------

    def _migration_files(self) -> list[_migrate.MigrationFile]:
        backend = self.get_backend_type()
        return _migrate.discover_all(_migrate.migration_folders(backend, self._schema_dirs))

    def initialize(
        self, *, lock_timeout: float = 600.0, on_applied: _migrate.OnApplied | None = None
    ) -> _migrate.MigrationReport:
        """Bring the schema up to date: verify the ledger, ensure pgvector, apply pending files.

        Connects if needed. Idempotent and safe to call from many processes at
        once; on an up-to-date database it costs one query and runs no DDL.
        Raises MigrationError (or ChecksumMismatchError) before any DDL runs when an
        applied file was edited or removed, or a new file is numbered below an
        applied one; ExtensionMissingError when pgvector is unavailable.

        :param lock_timeout: seconds to wait for another process's migration.
        :param on_applied: called with each `AppliedMigration` as soon as it is
            committed, for live progress (the report lists them all at the end).
        """
        self._ensure_open()
        files = self._migration_files()
        if self._pool is not None:
            return self._initialize_postgres(files, lock_timeout, on_applied)
        return self._initialize_sqlite(files, on_applied)

    def _initialize_postgres(
        self,
        files: list[_migrate.MigrationFile],
        lock_timeout: float,
        on_applied: _migrate.OnApplied | None,
    ) -> _migrate.MigrationReport:
        assert self._pool is not None
        with self._autocommit() as conn:
            fast = _migrate_pg.read_ledger_fast(conn)
        if fast is not None:
            ledger, pgvector = fast
            if pgvector is not None and not _migrate.verify(files, ledger):
                self._pgvector_version = pgvector
                self._refresh_vector_types()
                return _migrate.MigrationReport()
        applied, self._pgvector_version = _migrate_pg.migrate(
            self._target,
            files,
            timeout=self._timeout,
            lock_timeout=lock_timeout,
            on_applied=on_applied,
        )
        self._refresh_vector_types()
        return _migrate.MigrationReport(applied)

    def _refresh_vector_types(self) -> None:
        """Replace pooled connections made before pgvector existed (they lack its types).

        The extension may have been created by this process or by another one since.
        """
        if self._vector_types_missing and self._pool is not None:
            self._vector_types_missing = False
            self._pool.drain()

    def _initialize_sqlite(
        self, files: list[_migrate.MigrationFile], on_applied: _migrate.OnApplied | None
    ) -> _migrate.MigrationReport:
        conn = self._sqlite
        assert conn is not None
        with self._sqlite_lock:
            if self._sqlite_depth:
                raise MigrationError(
                    "initialize() was called inside connection() or transaction() on the same "
                    "thread; call it before opening a transaction"
                )
            ledger = _migrate_sqlite.read_ledger(conn)
            if ledger is not None and not _migrate.verify(files, ledger):
                return _migrate.MigrationReport()
            applied = _migrate_sqlite.migrate(
                conn,
                files,
                where=f"SQLite database {self._target.url}",
                timeout=self._timeout,
                on_applied=on_applied,
            )
        return _migrate.MigrationReport(applied)

    def migration_status(self) -> list[_migrate.MigrationInfo]:
        """Every known migration with its state (applied, pending, changed, …); read-only."""
        self._ensure_open()
        files = self._migration_files()
        ledger: list[_migrate.LedgerRow] = []
        if self._pool is not None:
            with self._autocommit() as conn:
                fast = _migrate_pg.read_ledger_fast(conn)
            ledger = fast[0] if fast else []
        else:
            assert self._sqlite is not None
            with self._sqlite_lock:
                ledger = _migrate_sqlite.read_ledger(self._sqlite) or []
        return _migrate.status(files, ledger)
