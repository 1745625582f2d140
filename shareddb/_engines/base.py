"""The one seam between shareddb and a database: what every engine provides.

`DbService` holds one engine and never branches on the database kind; the domains
(vectors, sessions, copy) and the migration runner ask the engine for connections,
for ``atomic()`` blocks and for their engine-specific SQL. A new engine is a thin
subclass: it says how to get and give back a connection and how to begin, commit
and roll back; savepoints, "the caller's transaction or our own" and the
missing-table check are written here once.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, LiteralString, TypeVar

from shareddb._core.types import Connection, EngineKind, PgConnection
from shareddb._migrations.files import MigrationFile, split_statements
from shareddb._migrations.ledger import LedgerRow
from shareddb._migrations.sqlsplit import Statement
from shareddb.errors import InvalidArgumentError, ShareddbError

if TYPE_CHECKING:
    from datetime import datetime

    from shareddb._core.url import DbTarget
    from shareddb._engines.postgres.replica_routing import ReplicaHealth
    from shareddb._vectors.ops import VectorOps

logger = logging.getLogger("shareddb")

ConnT = TypeVar("ConnT", PgConnection, sqlite3.Connection)
T = TypeVar("T")

# What is wrong with a domain's table, as told by a driver error.
TableProblem = Literal["missing", "other layout"]


@dataclass(frozen=True)
class Dialect:
    """The SQL and value forms that differ between engines, for the domains' statements.

    Statements are written once with ``%s`` placeholders; `sql()` turns them into
    this engine's style.
    """

    placeholder: LiteralString
    # A parameter that is a list of keys: one array on PostgreSQL, a placeholder each on
    # SQLite (``{keys}`` is replaced by as many placeholders as there are keys).
    in_keys: LiteralString
    # Inserting a session: SQLite keeps its own insertion counter (seq) up to date.
    session_insert: LiteralString
    session_for_update: LiteralString

    def sql(self, query: LiteralString) -> LiteralString:
        return query.replace("%s", self.placeholder)

    def keys(self, query: LiteralString, keys: list[Any]) -> tuple[str, list[Any]]:
        """`query` with its ``{keys}`` list for `keys`, and the parameters that go with it."""
        if "{keys}" not in self.in_keys:
            return self.sql(query.replace("{in_keys}", self.in_keys)), [keys]
        marks = ", ".join([self.placeholder] * len(keys))
        return self.sql(query.replace("{in_keys}", self.in_keys)).replace("{keys}", marks), keys


class Engine(ABC, Generic[ConnT]):
    """One database kind: connections, transactions, errors, migrations and domain SQL.

    :param target: the parsed URL.
    :param min_size: connections a pool keeps open (PostgreSQL).
    :param max_size: most connections a pool opens (PostgreSQL).
    :param timeout: seconds to wait for a connection or a lock.
    """

    kind: ClassVar[EngineKind]
    dialect: ClassVar[Dialect]
    connection_type: ClassVar[type]

    def __init__(self, target: DbTarget, *, min_size: int, max_size: int, timeout: float) -> None:
        self.target = target
        self.min_size = min_size
        self.max_size = max_size
        self.timeout = timeout
        self._open_lock = threading.Lock()
        # The process that opened the connections: a child after fork() must not use them.
        self.pid: int | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Connect, unless open; DatabaseUnavailableError when the database can't be reached."""
        with self._open_lock:
            if self.is_open:
                return
            # pid first: other threads see the engine open once it is connected.
            self.pid = os.getpid()
            self._connect()
            logger.debug("opened %s database %s", self.kind, self.target.masked)

    def close(self) -> None:
        """Close the connections; a forked child lets go of the parent's without closing them."""
        with self._open_lock:
            if self.pid is not None and self.pid != os.getpid():
                self._forget()
                logger.debug("forgot %s inherited across fork()", self.target.masked)
            else:
                self._disconnect()
            self.pid = None

    def ensure_open(self) -> None:
        """Open on first use; a ShareddbError in a child process that inherited the connections."""
        if not self.is_open:
            self.open()
        if self.pid != os.getpid():
            raise ShareddbError(
                f"the {self.kind} database {self.target.masked} was opened in process "
                f"{self.pid} and used in process {os.getpid()} after fork()",
                fix="open a new DbService in the child, or use get_shared_db(), which does",
            )

    @property
    @abstractmethod
    def is_open(self) -> bool: ...

    @abstractmethod
    def _connect(self) -> None: ...

    @abstractmethod
    def _disconnect(self) -> None: ...

    @abstractmethod
    def _forget(self) -> None:
        """Let go of connections inherited across ``fork()`` without closing them (the parent's)."""

    @abstractmethod
    def client(self) -> Any:
        """The driver's own object: the psycopg pool, or the sqlite3 connection."""

    # -- connections -----------------------------------------------------------------------

    @abstractmethod
    def transaction(self) -> AbstractContextManager[ConnT]:
        """A connection in a transaction of its own: committed on success, rolled back on error.

        A nested block on the same connection becomes a savepoint.
        """

    @abstractmethod
    def reading(self) -> AbstractContextManager[ConnT]:
        """A connection for reads only; it never waits for another process's write lock."""

    @abstractmethod
    def statement(self) -> AbstractContextManager[ConnT]:
        """A connection for single statements that each commit on their own (one round trip)."""

    def joined(
        self,
        conn: Connection | None,
        *,
        read: bool = False,
        error: type[InvalidArgumentError] = InvalidArgumentError,
    ) -> AbstractContextManager[ConnT]:
        """The caller's connection as it is, or one of our own in a transaction."""
        if conn is None:
            return self.reading() if read else self.transaction()
        return nullcontext(self.checked(conn, error))

    def read(
        self,
        work: Callable[[ConnT], T],
        conn: Connection | None = None,
        *,
        error: type[InvalidArgumentError] = InvalidArgumentError,
    ) -> T:
        """The result of the read `work` on the caller's connection, or on one for reads.

        Only reads come here: an engine may run them elsewhere (PostgreSQL: on a replica).
        """
        with self.joined(conn, read=True, error=error) as c:
            return work(c)

    def atomic(
        self, conn: Connection | None, name: str = "shareddb"
    ) -> AbstractContextManager[ConnT]:
        """All or nothing: a transaction of our own, or a savepoint in the caller's."""
        if conn is None:
            return self.transaction()
        return self.savepoint(self.checked(conn), name)

    def checked(
        self, conn: object, error: type[InvalidArgumentError] = InvalidArgumentError
    ) -> ConnT:
        """`conn` if it is a connection of this engine's driver, else `error` saying so."""
        if not isinstance(conn, self.connection_type):
            raise error(
                f"conn={conn!r} is not a {self.kind} connection of {self.target.masked}",
                fix="pass the connection yielded by db.transaction(), or leave conn out",
            )
        return conn  # type: ignore[return-value]

    @contextmanager
    def savepoint(self, conn: ConnT, name: str, *, rollback: bool = False) -> Iterator[ConnT]:
        """All or nothing inside whatever transaction `conn` is in (or a new one).

        With `rollback`, the work is always undone (for reads that change settings).
        """
        if not self.in_transaction(conn):
            with self.begin(conn, rollback=rollback):
                yield conn
            return
        self.control(conn, f'SAVEPOINT "{name}"')
        try:
            yield conn
        except BaseException:
            if self.can_roll_back(conn):
                self.control(conn, f'ROLLBACK TO SAVEPOINT "{name}"')
                self.control(conn, f'RELEASE SAVEPOINT "{name}"')
            raise
        if rollback:
            self.control(conn, f'ROLLBACK TO SAVEPOINT "{name}"')
        self.control(conn, f'RELEASE SAVEPOINT "{name}"')

    @abstractmethod
    def in_transaction(self, conn: ConnT) -> bool: ...

    @abstractmethod
    def can_roll_back(self, conn: ConnT) -> bool:
        """Whether a failed block's savepoint can still be rolled back (the link is alive)."""

    @abstractmethod
    def begin(self, conn: ConnT, *, rollback: bool = False) -> AbstractContextManager[None]:
        """A transaction on `conn`, which is in none; `rollback` undoes it at the end."""

    @abstractmethod
    def control(self, conn: ConnT, statement: str) -> None:
        """Run a transaction-control statement of our own (no parameters)."""

    # -- errors ----------------------------------------------------------------------------

    # What the driver raises for a statement on a table that is missing or of another layout.
    driver_errors: ClassVar[tuple[type[Exception], ...]]

    @abstractmethod
    def table_problem(self, error: Exception, table: str) -> TableProblem | None:
        """Whether `error` says that `table` is missing or lacks a column; None otherwise."""

    def table_errors(self, table: str) -> TableErrors:
        """``with engine.table_errors(table):`` turns driver errors about `table` into ours."""
        return TableErrors(self, table)

    def check_table(self, error: Exception, table: str) -> None:
        """Raise InvalidArgumentError naming `table` and the fix when `error` is about it."""
        problem = self.table_problem(error, table)
        if problem is None:
            return
        reason = " ".join(str(error).split())
        where = self.target.masked
        if problem == "missing":
            raise InvalidArgumentError(
                f"table {table!r} does not exist in {where} ({reason})",
                fix="run db.initialize() for task_embeddings, or create_table() for a table "
                "of your own",
            ) from error
        raise InvalidArgumentError(
            f"table {table!r} in {where} does not have the layout of task_embeddings ({reason})",
            fix="choose another table name, or drop that table and create it with create_table()",
        ) from error

    # -- migrations ------------------------------------------------------------------------

    @abstractmethod
    def read_ledger(self) -> list[LedgerRow] | None:
        """The ledger's rows in one round trip, or None when there is no ledger yet.

        On PostgreSQL it also learns pgvector's version (`pgvector_version`).
        """

    def schema_ready(self) -> bool:
        """After `read_ledger()`: False when the runner must run even with nothing pending."""
        return True

    @abstractmethod
    def migration_session(self, lock_timeout: float) -> AbstractContextManager[MigrationSession]:
        """The connection `initialize()` migrates on, holding the migration lock."""

    def after_migrations(self) -> None:
        """Called once the schema is up to date (PostgreSQL refreshes pgvector's types)."""

    @property
    def pgvector_version(self) -> str | None:
        return None

    # -- domains ---------------------------------------------------------------------------

    @abstractmethod
    def vector_ops(self, table: str) -> VectorOps:
        """The vector domain's SQL and I/O for `table` on this engine."""

    @abstractmethod
    def write_time(self, value: datetime) -> Any:
        """An aware datetime as this engine stores it (SQLite: fixed-width ISO text)."""

    @abstractmethod
    def read_time(self, value: Any) -> datetime:
        """A stored timestamp as an aware UTC datetime."""

    @abstractmethod
    def table_exists(self, conn: ConnT, table: str) -> bool: ...

    # -- administration --------------------------------------------------------------------

    @abstractmethod
    def server_version(self, conn: ConnT) -> str:
        """The database software and its version, e.g. ``PostgreSQL 18.4`` or ``SQLite 3.45.1``."""

    def replica_health(self) -> list[ReplicaHealth]:
        """Each read replica checked now (state, replay lag); empty without replicas."""
        return []

    def index_build_progress(self) -> str | None:
        """What a running index build in this database reports, or None (none, or no such report).

        Best effort, for progress lines: it never raises.
        """
        return None


class TableErrors:
    """`Engine.table_errors()`: a class, not a generator, as it wraps every vector call.

    Stateless, so one instance serves every call and thread of a storage object.
    """

    __slots__ = ("_engine", "_table")

    def __init__(self, engine: Engine[Any], table: str) -> None:
        self._engine = engine
        self._table = table

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, self._engine.driver_errors):
            self._engine.check_table(exc, self._table)


class MigrationSession(ABC):
    """One `initialize()` run's hold on the database: a connection, under the migration lock.

    The runner (`shareddb._migrations.runner`) drives it: it opens a `transaction()`
    per file, reads and extends the ledger, and runs each statement through
    `execute()`. Between transactions the connection is in autocommit mode, which is
    where ``-- shareddb:no-transaction`` files run. An engine's session supplies its
    ledger SQL and how a statement runs; the ledger bookkeeping is written here.
    """

    kind: ClassVar[EngineKind]
    create_ledger_sql: ClassVar[LiteralString]
    # Values: namespace, version, name, checksum, execution_ms (see `ledger_values`).
    record_sql: ClassVar[LiteralString]
    recorded_sql: ClassVar[LiteralString]
    where: str

    @abstractmethod
    def transaction(self) -> AbstractContextManager[None]:
        """One file's transaction; on SQLite it takes the write lock (the migration lock)."""

    @abstractmethod
    def run(self, statement: LiteralString, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one bookkeeping statement of ours; the rows it returns."""

    @abstractmethod
    def ledger(self) -> list[LedgerRow] | None:
        """The ledger's rows, or None when there is no ledger yet."""

    @abstractmethod
    def execute(self, statement: Statement) -> None:
        """Run one statement of a migration file; driver errors pass through."""

    @abstractmethod
    def sqlstate(self, error: Exception) -> str | Literal[False] | None:
        """The error's code for the message, or False when it is not the driver's error."""

    @abstractmethod
    def prepare(self) -> None:
        """Ensure what migrations need beyond the ledger (PostgreSQL: pgvector)."""

    def create_ledger(self) -> None:
        self.run(self.create_ledger_sql)

    def ledger_values(self, migration: MigrationFile, elapsed_ms: float) -> tuple[Any, ...]:
        return (
            migration.namespace,
            migration.version,
            migration.filename,
            migration.checksum,
            elapsed_ms,
        )

    def record(self, migration: MigrationFile, elapsed_ms: float) -> None:
        self.run(self.record_sql, self.ledger_values(migration, elapsed_ms))

    def recorded(self, migration: MigrationFile) -> bool:
        return bool(self.run(self.recorded_sql, (migration.namespace, migration.version)))

    def statements(self, migration: MigrationFile) -> list[Statement]:
        """The file split into statements with this engine's splitter."""
        return split_statements(migration, self.kind)
