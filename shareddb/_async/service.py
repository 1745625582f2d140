"""AsyncDbService: `DbService` for asyncio, running the very same implementation.

It holds a `DbService` (for PostgreSQL one whose engine is `AsyncPostgresEngine`, on an
AsyncConnectionPool) and a runner (`runners`): every method awaits the sync method of
that service, so arguments, checks, results and errors are the sync API's own.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager, asynccontextmanager
from itertools import islice
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Final, Generic, Self, TypeVar

from shareddb._async.runners import GreenRunner, Runner, SqliteWorker
from shareddb._core.replica_options import DEFAULT_MAX_REPLICA_LAG
from shareddb._core.service import DbService
from shareddb._core.types import EngineKind, Pooler
from shareddb._migrations.ledger import MigrationInfo, MigrationReport, OnApplied
from shareddb._sql.statements import DEFAULT_BATCH_SIZE

if TYPE_CHECKING:
    from shareddb._core.config import DbConfig
    from shareddb._engines import Engine

T = TypeVar("T")

# Items an async iterator takes from the sync one per trip to the runner.
CHUNK: Final = 256


class _TwinService(DbService):
    """The sync service an AsyncDbService runs: on PostgreSQL, on an AsyncConnectionPool."""

    asynchronous: ClassVar[bool] = True


class AsyncDbService:
    """`DbService` for asyncio: the same constructor, every I/O method a coroutine.

    On PostgreSQL the connections come from a ``psycopg_pool.AsyncConnectionPool``
    (pgvector's types registered) and `transaction()` yields a psycopg
    `AsyncConnection`; on SQLite the one connection is served by a worker thread of
    this service and `transaction()` yields the `sqlite3.Connection` (pass it as
    ``conn=``; run SQL on it with ``await db.execute(..., conn=conn)``). The event
    loop never waits on the database, nor on SQLite's numpy ranking.

    Use one service per event loop: `get_shared_async_db()` keeps one per target and loop.
    """

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
        self._attach(
            _TwinService(
                url,
                schema_dirs=schema_dirs,
                min_size=min_size,
                max_size=max_size,
                timeout=timeout,
                pooler=pooler,
                direct_url=direct_url,
                replicas=replicas,
                max_replica_lag=max_replica_lag,
                read_your_writes=read_your_writes,
            )
        )

    def _attach(self, db: DbService) -> None:
        self._db = db
        self._runner: Runner = (
            GreenRunner() if db.get_backend_type() == "postgres" else SqliteWorker("sqlite")
        )

    @classmethod
    def from_config(cls, config: DbConfig, **kwargs: Any) -> Self:
        """As `DbService.from_config`: `config.url` with the configuration's options."""
        service = cls.__new__(cls)
        service._attach(_TwinService.from_config(config, **kwargs))
        return service

    def __repr__(self) -> str:
        state = "open" if self._db.engine.is_open else "closed"
        return f"<AsyncDbService {self.get_backend_type()} {self.url!r} {state}>"

    @property
    def url(self) -> str:
        """The target URL with the password masked (safe to log)."""
        return self._db.url

    @property
    def pooler(self) -> Pooler | None:
        return self._db.pooler

    @property
    def direct_url(self) -> str | None:
        return self._db.direct_url

    @property
    def timeout(self) -> float:
        return self._db.timeout

    @property
    def pgvector_version(self) -> str | None:
        return self._db.pgvector_version

    def get_backend_type(self) -> EngineKind:
        return self._db.get_backend_type()

    @property
    def engine(self) -> Engine[Any]:
        return self._db.engine

    @property
    def sync_service(self) -> DbService:
        """The sync implementation this service runs (for shareddb's domains; no I/O here)."""
        return self._db

    # -- running -----------------------------------------------------------------------

    async def run(self, fn: Callable[..., T], /, *args: Any, conn: Any = None, **kwargs: Any) -> T:
        """Await the sync `fn(*args, conn=conn, **kwargs)` of this service's domains."""
        return await self._runner.call(fn, *args, joined=conn is not None, conn=conn, **kwargs)

    async def run_cpu(
        self, fn: Callable[..., T], /, *args: Any, conn: Any = None, **kwargs: Any
    ) -> T:
        """`run` for work long on CPU between its waits: off the event loop on PostgreSQL too."""
        return await self._runner.call_cpu(fn, *args, joined=conn is not None, conn=conn, **kwargs)

    async def _run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        return await self._runner.call(fn, *args, joined=False, **kwargs)

    def stream(self, rows: Iterator[T], *, conn: Any = None, held: bool = False) -> AsyncRows[T]:
        """`rows`, a sync iterator of this service, as an async iterator (see `AsyncRows`)."""
        return AsyncRows(self._runner, rows, joined=conn is not None, held=held)

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        """Connect (see `DbService.open`); on an open service it does nothing."""
        await self._run(self._db.open)

    async def close(self) -> None:
        """Close the pool or the SQLite connection; the service can be opened again."""
        try:
            await self._run(self._db.close)
        finally:
            self._runner.shutdown()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def get_sql(self) -> Any:
        """The underlying client: the `AsyncConnectionPool`, or the `sqlite3.Connection`."""
        return self._db.get_sql()

    # -- transactions ------------------------------------------------------------------

    def connection(self) -> AbstractAsyncContextManager[Any]:
        """``async with db.connection() as conn``: a transaction, as `DbService.connection()`.

        Committed when the block ends, rolled back on an exception — cancellation
        included: a cancelled task leaves nothing of the block written and its
        connection back in the pool, idle.
        """
        return self._block(self._db.engine.transaction)

    def transaction(self) -> AbstractAsyncContextManager[Any]:
        """The same as `connection()`, for units of work across domains (pass ``conn=``)."""
        return self._block(self._db.engine.transaction)

    @asynccontextmanager
    async def _block(
        self, open_block: Callable[[], AbstractContextManager[Any]]
    ) -> AsyncIterator[Any]:
        runner = self._runner
        async with runner.holding():
            block = open_block()
            entered: list[Any] = []

            def enter() -> Any:
                entered.append(block.__enter__())
                return entered[0]

            try:
                conn = await runner.call(enter, joined=True)
            except asyncio.CancelledError as e:
                if entered:  # it ran on to the end (SQLite's worker): close it again
                    await runner.settled(block.__exit__, type(e), e, e.__traceback__)
                raise
            try:
                yield getattr(conn, "twin", conn)  # PostgreSQL: the AsyncConnection
            except BaseException as e:
                if not await runner.settled(block.__exit__, type(e), e, e.__traceback__):
                    raise
            else:
                await runner.settled(block.__exit__, None, None, None)

    # -- portable statements -----------------------------------------------------------

    async def execute(
        self, sql: str, params: Mapping[str, Any] | None = None, *, conn: Any = None
    ) -> int:
        """As `DbService.execute`: one statement with ``:name`` placeholders; rows written."""
        return await self.run(self._db.execute, sql, params, conn=conn)

    async def executemany(
        self, sql: str, seq_of_params: Iterable[Mapping[str, Any]], *, conn: Any = None
    ) -> int:
        """As `DbService.executemany`: all rows or none."""
        return await self.run(self._db.executemany, sql, seq_of_params, conn=conn)

    async def query(
        self,
        sql: str,
        params: Mapping[str, Any] | None = None,
        *,
        conn: Any = None,
        read_only: bool = False,
    ) -> list[dict[str, Any]]:
        """As `DbService.query`: every row as a dict."""
        return await self.run(self._db.query, sql, params, conn=conn, read_only=read_only)

    async def query_one(
        self,
        sql: str,
        params: Mapping[str, Any] | None = None,
        *,
        conn: Any = None,
        read_only: bool = False,
    ) -> dict[str, Any] | None:
        return await self.run(self._db.query_one, sql, params, conn=conn, read_only=read_only)

    async def query_value(
        self,
        sql: str,
        params: Mapping[str, Any] | None = None,
        *,
        conn: Any = None,
        read_only: bool = False,
    ) -> Any:
        return await self.run(self._db.query_value, sql, params, conn=conn, read_only=read_only)

    def iter_query(
        self,
        sql: str,
        params: Mapping[str, Any] | None = None,
        *,
        conn: Any = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> AsyncRows[dict[str, Any]]:
        """As `DbService.iter_query`, an async iterator: ``async for row in db.iter_query(...)``.

        It holds its connection until exhausted or closed: use
        ``async with contextlib.aclosing(db.iter_query(...)) as rows:`` when you may
        stop early. The SQL and values are checked at the call.
        """
        rows = self._db.iter_query(sql, params, conn=conn, batch_size=batch_size)
        return self.stream(rows, conn=conn, held=True)

    # -- schema ------------------------------------------------------------------------

    async def initialize(
        self, *, lock_timeout: float = 600.0, on_applied: OnApplied | None = None
    ) -> MigrationReport:
        """As `DbService.initialize`: apply pending migrations (idempotent).

        `on_applied` is called from the runner (on SQLite, the worker thread).
        """
        return await self._run(
            self._db.initialize, lock_timeout=lock_timeout, on_applied=on_applied
        )

    async def migration_status(self) -> list[MigrationInfo]:
        """As `DbService.migration_status`; read-only."""
        return await self._run(self._db.migration_status)


class AsyncRows(Generic[T]):
    """A sync iterator of the service, advanced by the runner `CHUNK` items at a time.

    `held`: the iterator holds the connection between items (a streamed query on
    SQLite), so other tasks wait until it ends or is closed with `aclose()`.
    """

    def __init__(self, runner: Runner, rows: Iterator[T], *, joined: bool, held: bool) -> None:
        self._runner = runner
        self._rows = rows
        self._joined = joined
        self._held = held
        self._hold: Any = None
        self._buffer: list[T] = []
        self._done = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        if not self._buffer and not self._done:
            if self._held and self._hold is None and not self._joined:
                self._hold = self._runner.holding()
                await self._hold.__aenter__()
            try:
                self._buffer = await self._runner.call(
                    _take, self._rows, CHUNK, joined=self._joined or self._held
                )
            except BaseException:
                await self.aclose()
                raise
            self._buffer.reverse()
            if len(self._buffer) < CHUNK:
                await self.aclose()
        if self._buffer:
            return self._buffer.pop()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop early: the sync iterator is closed and its connection given back."""
        if self._done:
            return
        self._done = True
        try:
            await self._runner.settled(self._rows.close)  # type: ignore[attr-defined]
        finally:
            hold, self._hold = self._hold, None
            if hold is not None:
                await hold.__aexit__(None, None, None)


def _take(rows: Iterator[T], n: int) -> list[T]:
    return list(islice(rows, n))
