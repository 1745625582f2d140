"""DbService: the one entry point every domain of an application shares.

It holds one engine (`shareddb._engines`) for its URL and never branches on the
database kind: the engine owns connections, transactions and errors; the service
adds the public lifecycle, the schema (initialize, migration_status) and the
checks of its own arguments.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Self

from shareddb._core.replica_options import DEFAULT_MAX_REPLICA_LAG, replica_options
from shareddb._core.types import Connection, EngineKind, Pooler
from shareddb._core.url import DbTarget, parse_url
from shareddb._engines import Engine, engine_for
from shareddb._engines.postgres.pooler import pooler_value
from shareddb._migrations.files import MigrationFile, discover_all, migration_folders
from shareddb._migrations.ledger import MigrationInfo, MigrationReport, OnApplied, status, verify
from shareddb._migrations.runner import apply_pending
from shareddb._sql.statements import DEFAULT_BATCH_SIZE, Statements, statements_for
from shareddb.errors import ConfigError

if TYPE_CHECKING:
    import sqlite3

    from psycopg_pool import ConnectionPool

    from shareddb._core.config import DbConfig
    from shareddb._core.types import PgConnection

logger = logging.getLogger("shareddb")


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
    :param pooler: what `url` reaches on PostgreSQL: None (the server), ``"session"``
        or ``"transaction"`` (PgBouncer or a managed pooler in that pool mode). Under
        ``"transaction"`` no statement is prepared on the server and no session state
        is relied on; migrations need `direct_url`.
    :param direct_url: a URL that reaches the PostgreSQL server itself, not a pooler:
        `initialize()` applies migrations over it (their lock is a session lock).
    :param replicas: PostgreSQL read replicas (streaming standbys of `url`, as libpq
        URIs): the reads that may run on one go to a healthy replica, everything else
        to `url` (see "Read replicas" in the README).
    :param max_replica_lag: seconds of replay lag past which a replica serves no reads.
    :param read_your_writes: reads go only to replicas that have replayed this
        service's last write (else to the primary); False accepts up to
        `max_replica_lag` of staleness for fewer reads on the primary.
    """

    # The async twin's service (AsyncDbService runs one): its engine awaits its I/O.
    asynchronous: ClassVar[bool] = False

    def __init__(
        self,
        url: str,
        *,
        schema_dirs: Mapping[str, str | os.PathLike[str]] | None = None,
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 30.0,
        pooler: Pooler | None = None,
        direct_url: str | None = None,
        replicas: Sequence[str] = (),
        max_replica_lag: float = DEFAULT_MAX_REPLICA_LAG,
        read_your_writes: bool = True,
    ) -> None:
        target: DbTarget = parse_url(url)
        pooler = pooler_value(pooler, "pooler")
        direct = _direct_target(target, pooler, direct_url)
        if not (isinstance(min_size, int) and isinstance(max_size, int) and min_size >= 0):
            raise ConfigError(f"min_size={min_size!r} must be a whole number >= 0")
        if max_size < max(min_size, 1):
            raise ConfigError(
                f"max_size={max_size!r} must be >= 1 and >= min_size={min_size}; raise max_size"
            )
        if not isinstance(timeout, int | float) or not timeout > 0:
            raise ConfigError(f"timeout={timeout!r} must be a number of seconds > 0")
        self._schema_dirs = {ns: Path(folder) for ns, folder in (schema_dirs or {}).items()}
        replication = replica_options(target, replicas, max_replica_lag, read_your_writes)
        self._engine = engine_for(
            target,
            min_size=min_size,
            max_size=max_size,
            timeout=float(timeout),
            pooler=pooler,
            direct=direct,
            asynchronous=self.asynchronous,
            **replication,
        )

    @classmethod
    def from_config(cls, config: DbConfig, **kwargs: Any) -> Self:
        """A DbService for `config.url` with the configuration's namespaces.

        Keyword arguments are as for the constructor. A ``schema_dirs=`` argument is
        merged with ``config.schema_dirs`` (``[db.schema_dirs]``): its namespaces are
        added, and where both name one, the argument's folder wins. ``pooler``,
        ``direct_url`` and the replicas of ``[db]`` (``replicas``, ``max_replica_lag``,
        ``read_your_writes``) come from the configuration unless given as arguments.
        """
        extra: Mapping[str, str | os.PathLike[str]] = kwargs.pop("schema_dirs", None) or {}
        kwargs.setdefault("pooler", config.pooler)
        kwargs.setdefault("direct_url", config.direct_url)
        kwargs = {**config.replication, **kwargs}  # arguments win
        return cls(config.url, schema_dirs={**config.schema_dirs, **extra}, **kwargs)

    def __repr__(self) -> str:
        state = "open" if self._engine.is_open else "closed"
        extra = ""
        if self.pooler is not None:
            extra += f" pooler={self.pooler!r}"
        if self.direct_url is not None:
            extra += f" direct_url={self.direct_url!r}"
        return (
            f"<DbService {self.get_backend_type()} {self._engine.target.masked!r}{extra} {state}>"
        )

    @property
    def url(self) -> str:
        """The target URL with the password masked (safe to log)."""
        return self._engine.target.masked

    @property
    def pooler(self) -> Pooler | None:
        """The configured pooler mode (``pooler=``): None, ``"session"`` or ``"transaction"``."""
        return getattr(self._engine, "pooler", None)

    @property
    def direct_url(self) -> str | None:
        """The URL migrations use (``direct_url=``), password masked; None when not set."""
        direct: DbTarget | None = getattr(self._engine, "direct", None)
        return direct.masked if direct is not None else None

    @property
    def timeout(self) -> float:
        return self._engine.timeout

    @property
    def pgvector_version(self) -> str | None:
        """pgvector's installed version once `initialize()` ran on PostgreSQL, else None."""
        return self._engine.pgvector_version

    def get_backend_type(self) -> EngineKind:
        """``"sqlite"`` or ``"postgres"``."""
        return self._engine.kind

    @property
    def engine(self) -> Engine[Any]:
        """The database engine behind this service: how shareddb's domains reach the database."""
        return self._engine

    # -- lifecycle ---------------------------------------------------------------------

    def open(self) -> None:
        """Connect: open the pool (waiting up to `timeout` for a first connection) or the file.

        Calling it on an open service does nothing. Raises DatabaseUnavailableError
        when the database can't be reached. An embedded PostgreSQL URL
        (``postgresql+embedded://``) starts the local server here, or reuses the one
        running on that folder (ConfigError names the install command when the
        ``embedded`` extra is missing).
        """
        self._engine.open()

    def close(self) -> None:
        """Close the pool or the SQLite connection; the service can be opened again."""
        self._engine.close()

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

    # -- SQL access --------------------------------------------------------------------

    def get_sql(self) -> ConnectionPool[PgConnection] | sqlite3.Connection:
        """The underlying client: the psycopg `ConnectionPool`, or the `sqlite3.Connection`.

        Prefer `connection()`: on SQLite it serialises threads and manages the
        transaction; raw use of the sqlite3 connection bypasses both. The pool's
        connections are in autocommit mode (each statement commits on its own, as
        after ``psycopg.connect(..., autocommit=True)``): open ``conn.transaction()``
        for a transaction on one, and leave it in autocommit mode when returning it.
        """
        return self._engine.client()  # type: ignore[no-any-return]

    def connection(self) -> AbstractContextManager[Connection]:
        """A DB-API connection in a transaction: committed on success, rolled back on error.

        On PostgreSQL a pooled psycopg connection with pgvector's types registered
        (placeholders ``%s``); on SQLite the shared sqlite3 connection inside
        ``BEGIN IMMEDIATE`` (placeholders ``?``); a nested block on the same thread
        becomes a savepoint. Use `transaction()` for a unit of work across domains.
        """
        return self._engine.transaction()

    def transaction(self) -> AbstractContextManager[Connection]:
        """The same as `connection()`, named for units of work that span domains.

        Pass the connection to domain methods as ``conn=`` so they join it::

            with db.transaction() as conn:
                sessions.add(record, conn=conn)
                vectors.upsert("md#253", embedding, conn=conn)
        """
        return self._engine.transaction()

    # -- portable statements -----------------------------------------------------------

    @cached_property
    def _statements(self) -> Statements:
        return statements_for(self._engine)

    def execute(
        self, sql: str, params: Mapping[str, Any] | None = None, *, conn: Connection | None = None
    ) -> int:
        """Run one statement with ``:name`` placeholders on either engine; the rows it wrote.

        The same text runs on SQLite and PostgreSQL (see "Portable SQL" in the README
        for the value types and column types)::

            db.execute("UPDATE tasks SET status = :status WHERE id = :id",
                       {"status": "done", "id": "md#253"})

        Returns the rows inserted, updated or deleted, or -1 for any other statement.
        Without `conn` the statement is a transaction of its own; with the connection of
        a ``db.transaction()`` block it joins it. A ``:name`` without a value, a value
        without a ``:name``, or a value of another type raises InvalidArgumentError
        before anything runs; errors of the SQL itself are the driver's
        (``sqlite3.Error``, ``psycopg.Error``). Use `connection()` for SQL of one engine.
        """
        return self._statements.execute(sql, params, conn)

    def executemany(
        self,
        sql: str,
        seq_of_params: Iterable[Mapping[str, Any]],
        *,
        conn: Connection | None = None,
    ) -> int:
        """Run one statement once per dict of values, all or nothing; the rows written.

        Every dict is checked before the first row runs. Without `conn` the rows commit
        together in one transaction (pipelined on PostgreSQL); with it they run in a
        savepoint, so a failing row undoes the others and the caller's transaction goes on.
        """
        return self._statements.executemany(sql, seq_of_params, conn)

    def query(
        self,
        sql: str,
        params: Mapping[str, Any] | None = None,
        *,
        conn: Connection | None = None,
        read_only: bool = False,
    ) -> list[dict[str, Any]]:
        """Every row of a statement as a dict keyed by column name.

        Values come back typed on both engines (on SQLite from the declared type of
        each column). For results too large for memory use `iter_query()`.
        ``read_only=True`` says the statement only reads (a SELECT or VALUES without
        side effects; anything else raises InvalidArgumentError before it runs): with
        `replicas`, it may then run on one (see "Read replicas" in the README).
        """
        return self._statements.query(sql, params, conn, read_only)

    def query_one(
        self,
        sql: str,
        params: Mapping[str, Any] | None = None,
        *,
        conn: Connection | None = None,
        read_only: bool = False,
    ) -> dict[str, Any] | None:
        """The first row of a statement as a dict, or None when there is none."""
        return self._statements.query_one(sql, params, conn, read_only)

    def query_value(
        self,
        sql: str,
        params: Mapping[str, Any] | None = None,
        *,
        conn: Connection | None = None,
        read_only: bool = False,
    ) -> Any:
        """The first column of the first row (``SELECT count(*) ...``), or None without a row."""
        return self._statements.query_value(sql, params, conn, read_only)

    def iter_query(
        self,
        sql: str,
        params: Mapping[str, Any] | None = None,
        *,
        conn: Connection | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> Iterator[dict[str, Any]]:
        """The rows of a SELECT as dicts, streamed `batch_size` at a time.

        PostgreSQL reads through a server-side cursor in a transaction; SQLite fetches
        in batches. Either way the connection is held until the iterator is exhausted or
        closed (on SQLite other threads wait for it), so iterate to the end or use
        ``with contextlib.closing(db.iter_query(...)) as rows:``. The SQL and values are
        checked at the call; the statement runs on the first ``next()``.
        """
        return self._statements.iter_query(sql, params, conn, batch_size)

    # -- schema ------------------------------------------------------------------------

    def _migration_files(self) -> list[MigrationFile]:
        return discover_all(migration_folders(self._engine.kind, self._schema_dirs))

    def initialize(
        self, *, lock_timeout: float = 600.0, on_applied: OnApplied | None = None
    ) -> MigrationReport:
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
        self._engine.ensure_open()
        files = self._migration_files()
        ledger = self._engine.read_ledger()
        if ledger is not None and self._engine.schema_ready() and not verify(files, ledger):
            self._engine.after_migrations()
            return MigrationReport()  # up to date: one round trip, no DDL
        with self._engine.migration_session(lock_timeout) as session:
            applied = apply_pending(session, files, on_applied)
        self._engine.after_migrations()
        return MigrationReport(applied)

    def migration_status(self) -> list[MigrationInfo]:
        """Every known migration with its state (applied, pending, changed, …); read-only."""
        self._engine.ensure_open()
        files = self._migration_files()
        return status(files, self._engine.read_ledger() or [])


def _direct_target(
    target: DbTarget, pooler: Pooler | None, direct_url: str | None
) -> DbTarget | None:
    """`direct_url` parsed, or None; ConfigError for options that only PostgreSQL takes."""
    if target.engine != "postgres":
        if pooler is not None or direct_url is not None:
            what = "pooler" if pooler is not None else "direct_url"
            raise ConfigError(
                f"{what}= applies to PostgreSQL only, not to {target.masked}",
                fix=f"remove {what}, or use a postgresql:// url",
            )
        return None
    if direct_url is None:
        return None
    try:
        direct = parse_url(direct_url)
    except ConfigError as e:
        raise ConfigError(f"direct_url: {e}") from None
    if direct.engine != "postgres" or direct.embedded_dir is not None:
        raise ConfigError(
            f"direct_url {direct.masked!r} is not a postgresql:// url",
            fix="set it to postgresql://user:password@server:5432/db, the server behind the pooler",
        )
    return direct
