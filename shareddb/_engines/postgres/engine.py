"""The PostgreSQL engine: a psycopg pool whose connections rest in autocommit mode.

Where to look for what happens when a pooled connection is lost: `_checkout`
drops connections the server closed while they sat idle and tells a server that is
down from a pool that is still reconnecting; `lost_connection()` turns a connection that
broke while in use into DatabaseUnavailableError (in `transaction()` and in
`statement()`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, ClassVar, Final, TypeVar

import psycopg
from psycopg.pq import PipelineStatus, TransactionStatus
from psycopg_pool import ConnectionPool, PoolTimeout

from shareddb._core.replica_options import DEFAULT_MAX_REPLICA_LAG
from shareddb._core.types import Connection, PgConnection, Pooler
from shareddb._core.url import DbTarget
from shareddb._engines.base import Dialect, Engine, MigrationSession, TableProblem
from shareddb._engines.postgres import embedded
from shareddb._engines.postgres.connect import (
    connect,
    connect_kwargs,
    lost_connection,
    register_types,
    unavailable,
)
from shareddb._engines.postgres.migrate import PostgresMigrationSession, read_ledger
from shareddb._engines.postgres.pooler import behind_pooler, refuse_migration
from shareddb._engines.postgres.replica_routing import ReplicaHealth
from shareddb._engines.postgres.replicas import ReplicaSet
from shareddb._engines.postgres.standby import (
    is_hot_standby,
    parse_lsn,
    read_only_error,
    standby_refuses,
    standby_state,
)
from shareddb._migrations.ledger import LedgerRow
from shareddb._vectors.ops import VectorOps
from shareddb.errors import DatabaseUnavailableError, InvalidArgumentError, ShareddbError

logger = logging.getLogger("shareddb")

IDLE = TransactionStatus.IDLE
INTRANS = TransactionStatus.INTRANS
INERROR = TransactionStatus.INERROR

# A wait for a pooled connection is cut into slices of this many seconds (see _checkout).
_POOL_WAIT_SLICE = 1.0
# Longest psycopg_pool keeps retrying one lost connection before giving up (it tries
# again as soon as a client asks for a connection).
_RECONNECT_TIMEOUT = 5.0
# Where the primary's WAL ends after a commit: at or past the commit record, even with
# synchronous_commit off (pg_current_wal_lsn() may not have reached it then).
_WAL_END: Final = b"SELECT pg_current_wal_insert_lsn()"

T = TypeVar("T")

# Pools a forked child inherited and let go of: kept referenced so that garbage
# collection never closes what the parent still uses.
_inherited: list[object] = []

POSTGRES_DIALECT = Dialect(
    placeholder="%s",
    in_keys="= ANY(%s)",
    session_insert=(
        "INSERT INTO sessions (session, repo_name, repo_url, branch, task_id, created_at, "
        "updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (session) DO NOTHING"
    ),
    session_for_update=" FOR UPDATE",
)


class PostgresEngine(Engine[PgConnection]):
    kind: ClassVar = "postgres"
    dialect: ClassVar = POSTGRES_DIALECT
    connection_type: ClassVar = psycopg.Connection
    driver_errors: ClassVar = (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn)

    def __init__(
        self,
        *args: Any,
        pooler: Pooler | None = None,
        direct: DbTarget | None = None,
        replicas: Sequence[DbTarget] = (),
        max_replica_lag: float = DEFAULT_MAX_REPLICA_LAG,
        read_your_writes: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        # What sits in front of the server (``pooler=``), and the direct URL that
        # migrations use instead of `target` (``direct_url=``).
        self.pooler = pooler
        self.direct = direct
        # Reads that may run on a standby go there (see replicas.py); None: no replicas.
        self._replicas = (
            ReplicaSet(
                replicas,
                max_size=self.max_size,
                max_lag=max_replica_lag,
                read_your_writes=read_your_writes,
                pooler=pooler,
            )
            if replicas
            else None
        )
        self._pool: ConnectionPool[PgConnection] | None = None
        # Connections checked out through us, to tell a pool that is full from one
        # that lost its connections.
        self._in_use = 0
        self._in_use_lock = threading.Lock()
        self._vector_types_missing = False
        self._pgvector_version: str | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._pool is not None

    def _connect(self) -> None:
        if self.target.embedded_dir is not None:
            uri = embedded.start(self.target.embedded_dir)
            self.target = dataclasses.replace(self.target, conninfo=uri)
        self._pool = self._open_pool()

    def _disconnect(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        if self._replicas is not None:
            self._replicas.close()

    def _forget(self) -> None:
        _inherited.append(self._pool)
        if self._replicas is not None:
            _inherited.extend(self._replicas.forget())
        self._pool = None
        self._in_use_lock = threading.Lock()
        self._in_use = 0

    def client(self) -> ConnectionPool[PgConnection]:
        self.ensure_open()
        assert self._pool is not None
        return self._pool

    @property
    def pgvector_version(self) -> str | None:
        return self._pgvector_version

    def _open_pool(self) -> ConnectionPool[PgConnection]:
        def configure(conn: PgConnection) -> None:
            # Pooled connections rest in autocommit mode: a single statement (a search,
            # a one-row write) is one round trip with no mode switches, and
            # transaction() switches to a transaction for its block and back.
            conn.autocommit = True
            if not register_types(conn):
                self._vector_types_missing = True

        pool: ConnectionPool[PgConnection] = ConnectionPool(
            configure=configure, name="shareddb", **self._pool_options()
        )
        # Fail here with libpq's reason rather than later with a bare pool timeout.
        connect(self.target, self.timeout).close()
        # Wait for min_size connections: a first request that found the pool still
        # connecting would make it grow, leaving one connection more than needed.
        try:
            pool.open(wait=True, timeout=self.timeout)
        except PoolTimeout as e:  # the pool is closed again
            raise unavailable(self.target, e) from None
        return pool

    def _pool_options(self) -> dict[str, Any]:
        """What the sync pool and the async twin's pool are both built with (unopened)."""
        return {
            "conninfo": self.target.conninfo,
            "min_size": self.min_size,
            "max_size": self.max_size,
            "timeout": self.timeout,
            "kwargs": connect_kwargs(self.target, self.timeout, self.pooler),
            # psycopg_pool retries a failed connection with a delay that doubles each
            # time; bounded, a pool that lost its server tries again within a second
            # or two of the server's return, not minutes later.
            "reconnect_timeout": min(self.timeout, _RECONNECT_TIMEOUT),
            "open": False,
        }

    # -- connections -----------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[PgConnection]:
        conn, pool = self._checkout()
        try:
            # Out of autocommit for the block: the first statement starts the
            # transaction (psycopg sends BEGIN), and the caller may commit() in it.
            conn.autocommit = False
            try:
                # Commit on success, roll back on error; a pooled connection stays open,
                # a direct one (see _checkout) is closed.
                with conn, self._commits_noted(conn):
                    yield conn
            except psycopg.OperationalError as e:
                # Also covers a connection lost during the commit itself.
                if conn.broken:
                    raise lost_connection(self.target, e) from e
                raise
            except psycopg.errors.ReadOnlySqlTransaction as e:
                refused = read_only_error(self.target, conn, e)
                if refused is None:
                    raise
                raise refused from e
            finally:
                if not conn.closed and conn.info.transaction_status == IDLE:
                    conn.autocommit = True  # how pooled connections rest
                if self._replicas is not None:  # even after an error: the block may commit()
                    self._note_write(conn)
        finally:
            self._release(conn, pool)

    @contextmanager
    def _commits_noted(self, conn: PgConnection) -> Iterator[None]:
        """With replicas, each `conn.commit()` the block calls is read-your-writes too.

        The block's own end is noted by `transaction()`; a read after a commit in the
        middle of it must see that commit. The WAL's end is read in autocommit mode,
        so the block's next statement still starts a transaction of its own.
        """
        if self._replicas is None:
            yield
            return

        def commit() -> None:
            psycopg.Connection.commit(conn)
            conn.autocommit = True
            try:
                self._note_write(conn)
            finally:
                conn.autocommit = False

        setattr(conn, "commit", commit)  # noqa: B010 - an instance's own method, for the block
        try:
            yield
        finally:
            conn.__dict__.pop("commit", None)  # before `with conn` commits at the end

    def reading(self) -> AbstractContextManager[PgConnection]:
        return self.transaction()

    def statement(self) -> AbstractContextManager[PgConnection]:
        """A pooled connection in autocommit mode: the lean path of searches and one-row writes."""
        return _Autocommit(self)

    def read(
        self,
        work: Callable[[PgConnection], T],
        conn: Connection | None = None,
        *,
        error: type[InvalidArgumentError] = InvalidArgumentError,
    ) -> T:
        """`work` on the caller's connection, else on a replica that may serve it, else here.

        Without replicas, one autocommitted statement's checkout of the primary.
        """
        if conn is not None:
            return work(self.checked(conn, error))
        if self._replicas is None:
            with _Autocommit(self, writes=False) as c:
                return work(c)
        if self._pool is None or self.pid != os.getpid():
            self.ensure_open()  # a forked child is told so before any replica is tried
        if lost := self._replicas.routing.lost_writes:
            self._find_lost_writes(lost)

        def on_primary() -> T:
            with _Autocommit(self, writes=False) as c:
                return work(c)

        return self._replicas.read(work, on_primary)

    @contextmanager
    def streaming(self, conn: Connection | None, start: Callable[[PgConnection], T]) -> Iterator[T]:
        """`start(c)` (a server-side cursor's DECLARE and first page) in a transaction that
        stays open while the caller streams.

        On the caller's connection, or a replica that may serve reads (one that fails
        before `start` returns is skipped, as by `read()`), or the primary.
        """
        if conn is not None:
            yield start(self.checked(conn))
            return
        if self._replicas is not None:
            if self._pool is None or self.pid != os.getpid():
                self.ensure_open()
            if lost := self._replicas.routing.lost_writes:
                self._find_lost_writes(lost)
            with self._replicas.held(start) as held:
                if held is not None:
                    yield held[0]
                    return
        with self.transaction() as c:
            yield start(c)

    def _note_write(self, conn: PgConnection) -> None:
        """Remember where the primary's WAL ends after a commit, for read-your-writes.

        One round trip on the connection that wrote, before it goes back to the pool.
        When it can't be asked (the connection broke), the next read asks the primary.
        Never raises: the write itself is done.
        """
        assert self._replicas is not None
        routing = self._replicas.routing
        if conn.closed or conn.broken:
            routing.lost_write()
            return
        if conn.info.transaction_status != IDLE or is_hot_standby(conn):
            return  # nothing committed yet, or a standby: nothing is written there
        try:
            row = conn.execute(_WAL_END).fetchone()
        except psycopg.Error:
            routing.lost_write()
            return
        assert row is not None
        routing.wrote(parse_lsn(str(row[0])))

    def _find_lost_writes(self, lost: int) -> None:
        """Writes whose WAL end is unknown end at or before the primary's WAL end now."""
        assert self._replicas is not None
        with _Autocommit(self, writes=False) as conn:
            row = conn.execute(_WAL_END).fetchone()
        assert row is not None
        self._replicas.routing.wrote(parse_lsn(str(row[0])), found=lost)

    def replica_health(self) -> list[ReplicaHealth]:
        """Each replica checked now (state, replay lag); empty without replicas."""
        if self._replicas is None:
            return []
        self.ensure_open()  # a forked child is told so before the parent's connections are used
        return self._replicas.health()

    def in_transaction(self, conn: PgConnection) -> bool:
        return not (conn.autocommit and conn.info.transaction_status == IDLE)

    def can_roll_back(self, conn: PgConnection) -> bool:
        return not conn.broken and conn.info.transaction_status in (INTRANS, INERROR)

    def begin(self, conn: PgConnection, *, rollback: bool = False) -> AbstractContextManager[Any]:
        return conn.transaction(force_rollback=rollback)

    def control(self, conn: PgConnection, statement: str) -> None:
        conn.execute(statement.encode())  # our own constant text: bytes skip psycopg's parsing

    def _release(self, conn: PgConnection, pool: ConnectionPool[PgConnection] | None) -> None:
        """Give back what `_checkout` handed out: to its pool, or close a direct connection."""
        with self._in_use_lock:
            self._in_use -= 1
        if conn.pgconn.pipeline_status != PipelineStatus.OFF:
            # A pipeline cut short (a cancelled task, Ctrl-C) can leave libpq in pipeline
            # mode with results uncollected: closed, the pool replaces it.
            conn.close()
        if pool is not None:
            pool.putconn(conn)
        else:
            conn.close()

    def _checkout(self) -> tuple[PgConnection, ConnectionPool[PgConnection] | None]:
        """A live connection within `timeout` and its pool (None: a direct one), or why not.

        The wait is cut in slices. After a slice without a connection while the pool
        still has room, one direct connection attempt tells a server that is down
        (its reason is raised at the deadline) from one that is back while the pool
        still waits to reconnect (psycopg_pool retries lost connections with a
        growing delay): rather than fail then, the call runs on that direct
        connection, which is closed afterwards. Connections whose server went away
        while they sat idle are dropped here, so the first calls after a restart
        don't fail on them.
        """
        pool = self._pool
        if pool is None or self.pid != os.getpid():
            self.ensure_open()
            pool = self._pool
            assert pool is not None
        deadline = time.monotonic() + self.timeout
        down: DatabaseUnavailableError | None = None
        while True:
            remaining = deadline - time.monotonic()
            try:
                conn = pool.getconn(timeout=max(min(remaining, _POOL_WAIT_SLICE), 0.001))
            except PoolTimeout:
                with self._in_use_lock:
                    full = self._in_use >= self.max_size
                if full:
                    down = None
                else:
                    probe, down = self._probe(deadline)
                    if probe is not None:
                        if time.monotonic() < deadline:
                            probe.close()  # the pool will reconnect now: ask it again
                        else:
                            logger.info(
                                "serving a call on a direct connection to %s", self.target.masked
                            )
                            with self._in_use_lock:
                                self._in_use += 1
                            return probe, None
                if time.monotonic() >= deadline:
                    raise self._no_connection(down) from None
                continue
            if _usable(conn):
                with self._in_use_lock:
                    self._in_use += 1
                return conn, pool
            logger.info(
                "dropping a pooled connection to %s that the server closed", self.target.masked
            )
            pool.putconn(conn)  # broken: the pool closes it and opens another

    def _probe(
        self, deadline: float
    ) -> tuple[PgConnection | None, DatabaseUnavailableError | None]:
        """A direct connection, configured like the pool's, or the reason there is none."""
        budget = min(max(deadline - time.monotonic(), 1.0), 5.0)
        try:
            conn = connect(self.target, budget, autocommit=True, pooler=self.pooler)
        except DatabaseUnavailableError as e:
            return None, e
        try:
            register_types(conn)
        except psycopg.Error as e:
            conn.close()
            return None, unavailable(self.target, e)
        return conn, None

    def _no_connection(self, down: DatabaseUnavailableError | None) -> DatabaseUnavailableError:
        """Tell an unreachable server from a pool whose connections are all in use."""
        if down is not None:
            return down
        return DatabaseUnavailableError(
            f"couldn't get a connection to {self.target.masked} after {self.timeout:.2f} "
            f"sec: all {self.max_size} connections of the pool are in use",
            fix="return connections sooner (keep transactions short) or raise max_size or timeout",
        )

    # -- errors ----------------------------------------------------------------------------

    def table_problem(self, error: Exception, table: str) -> TableProblem | None:
        if isinstance(error, psycopg.errors.UndefinedTable):
            return "missing"
        if isinstance(error, psycopg.errors.UndefinedColumn):
            return "other layout"
        return None

    def table_exists(self, conn: PgConnection, table: str) -> bool:
        row = conn.execute("SELECT to_regclass(quote_ident(%s)) IS NOT NULL", (table,)).fetchone()
        return bool(row and row[0])

    # -- migrations ------------------------------------------------------------------------

    def read_ledger(self) -> list[LedgerRow] | None:
        with self.statement() as conn:
            found = read_ledger(conn)
        if found is None:
            return None
        ledger, self._pgvector_version = found
        return ledger

    def schema_ready(self) -> bool:
        return self._pgvector_version is not None  # else the runner must create pgvector

    @contextmanager
    def migration_session(self, lock_timeout: float) -> Iterator[MigrationSession]:
        """The runner's session, on `direct` when given; never through a transaction pooler.

        Without a direct URL the target itself is used, unless it is configured as a
        transaction pooler, or the connection turns out to reach the server through
        a pooler or proxy that was not declared a session pooler (``pooler="session"``).
        A standby is refused before the lock is taken.
        """
        target = self.direct or self.target
        if self.direct is None and self.pooler == "transaction":
            raise refuse_migration(target, 'pooler="transaction" and no direct_url is set')

        def check(conn: PgConnection) -> None:
            if standby_state(conn).in_recovery:
                raise standby_refuses(
                    target,
                    "initialize() has migrations to apply (or pgvector to create) and a "
                    "standby takes no writes",
                )
            if (self.direct is not None or self.pooler != "session") and behind_pooler(conn):
                what = "direct_url" if self.direct is not None else "the url"
                raise refuse_migration(
                    target,
                    f"{what} reaches the server through a connection pooler or proxy",
                    detected=self.direct is None,
                )

        with PostgresMigrationSession.locked(
            target, self.timeout, lock_timeout, check=check
        ) as session:
            yield session
            self._pgvector_version = session.pgvector_version
        if self._replicas is not None:  # the migrations' DDL is read-your-writes too
            with _Autocommit(self, writes=False) as conn:
                self._note_write(conn)

    def after_migrations(self) -> None:
        """Replace pooled connections made before pgvector existed (they lack its types).

        The extension may have been created by this process or by another one since.
        """
        if self._vector_types_missing and self._pool is not None:
            self._vector_types_missing = False
            self._pool.drain()

    # -- domains ---------------------------------------------------------------------------

    def vector_ops(self, table: str) -> VectorOps:
        from shareddb._engines.postgres.vectors import PostgresVectors

        return PostgresVectors(self, table)

    def write_time(self, value: datetime) -> datetime:
        return value.astimezone(UTC)

    def read_time(self, value: Any) -> datetime:
        # psycopg returns timestamptz in the connection's TimeZone: normalise to UTC.
        return value.astimezone(UTC)  # type: ignore[no-any-return]

    # -- administration --------------------------------------------------------------------

    def server_version(self, conn: PgConnection) -> str:
        row = conn.execute("SHOW server_version").fetchone()
        assert row is not None
        return f"PostgreSQL {row[0]}"

    def index_build_progress(self) -> str | None:
        from shareddb._engines.postgres.index_build import read_progress

        if not self.is_open:
            return None  # nothing of ours runs; progress never opens the pool
        try:
            with self.statement() as conn:
                progress = read_progress(conn)
        except (psycopg.Error, ShareddbError):
            return None  # best effort: progress must never break the work it reports on
        return None if progress is None else f"index {progress[0]}: {progress[1]}"


class _Autocommit:
    """`PostgresEngine.statement()`: a class, cheaper than a generator on the hot path.

    With `writes`, its statements may write: with replicas, the WAL's end is noted
    after them, for read-your-writes.
    """

    __slots__ = ("_conn", "_engine", "_pool", "_writes")

    def __init__(self, engine: PostgresEngine, *, writes: bool = True) -> None:
        self._engine = engine
        self._writes = writes

    def __enter__(self) -> PgConnection:
        engine = self._engine
        conn, pool = engine._checkout()
        if not conn.autocommit:
            try:
                conn.autocommit = True  # left out of autocommit by a raw user of the pool
            except BaseException:
                engine._release(conn, pool)
                raise
        self._conn = conn
        self._pool = pool
        return conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn = self._conn
        engine = self._engine
        try:
            # Even after an error: an earlier statement of the block may have written.
            if self._writes and engine._replicas is not None:
                engine._note_write(conn)
            if isinstance(exc, psycopg.OperationalError) and conn.broken:
                raise lost_connection(engine.target, exc) from exc
            if isinstance(exc, psycopg.errors.ReadOnlySqlTransaction):
                refused = read_only_error(engine.target, conn, exc)
                if refused is not None:
                    raise refused from exc
        finally:
            self._engine._release(conn, self._pool)


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
