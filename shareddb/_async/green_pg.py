"""PostgreSQL for the async twin: an AsyncConnectionPool seen through psycopg's sync API.

`PostgresEngine` and every domain built on it (vectors, sessions, portable SQL,
migrations) are written against psycopg's sync `Connection`, which funnels all its
I/O through ``Connection.wait(gen)``. `GreenConnection` is such a `Connection` over the
libpq connection of a pooled `AsyncConnection` — sharing its transaction state,
prepared statements, adapters (pgvector's types) and lock — whose `wait` awaits the
async connection's own `wait` on the event loop (`bridge.await_only`). So the sync code
runs unchanged and the loop never blocks on the database; a cancelled task cancels
the query in the server, as psycopg's async connections do.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, Final

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from shareddb._async.bridge import await_only, on_loop, run_green
from shareddb._core.types import PgConnection, Pooler
from shareddb._engines.postgres import embedded
from shareddb._engines.postgres.connect import connect_kwargs, register_types, unavailable
from shareddb._engines.postgres.engine import PostgresEngine
from shareddb.errors import InvalidArgumentError

# The attribute of an AsyncConnection holding its GreenConnection (one per connection:
# they share one prepared-statement namespace).
_VIEW: Final = "_shareddb_green"

# The connection state a GreenConnection shares with its AsyncConnection: psycopg keeps
# it in these attributes (transaction depth, autocommit, prepared names, adapters, ...).
_SHARED: Final = (
    "_autocommit",
    "_num_transactions",
    "_prepared",
    "_adapters",
    "_closed",
    "_tpc",
    "_isolation_level",
    "_read_only",
    "_deferrable",
    "_begin_statement",
)


def _shared(name: str) -> property:
    def get(self: GreenConnection) -> Any:
        twin = self.__dict__.get("twin")
        return self.__dict__.get(name) if twin is None else getattr(twin, name)

    def set_(self: GreenConnection, value: Any) -> None:
        twin = self.__dict__.get("twin")
        if twin is None:  # psycopg's __init__ runs before the twin is known
            self.__dict__[name] = value
        else:
            setattr(twin, name, value)

    return property(get, set_)


class _GreenLock:
    """The AsyncConnection's asyncio lock, taken from sync code (never blocks the loop)."""

    def __init__(self, lock: asyncio.Lock) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        await_only(self._lock.acquire())

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        on_loop(self._lock.release)  # asyncio's lock is the loop's: never touched elsewhere


class GreenConnection(psycopg.Connection[Any]):
    """psycopg's sync `Connection` API over an `AsyncConnection`, awaited through greenlets."""

    twin: AsyncConnection[Any]

    @property
    def _pool(self) -> Any:  # a pooled connection's block must not close it
        return getattr(self.twin, "_pool", None)

    @_pool.setter
    def _pool(self, value: Any) -> None:
        self.twin._pool = value

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        return await_only(self.twin.wait(gen, interval, timeout))


for _name in _SHARED:
    setattr(GreenConnection, _name, _shared(_name))


def view_of(aconn: AsyncConnection[Any]) -> GreenConnection:
    """The GreenConnection of `aconn` (made once, then kept with it)."""
    view: GreenConnection | None = aconn.__dict__.get(_VIEW)
    if view is None:
        pgconn = aconn.pgconn
        handlers = (pgconn.notice_handler, pgconn.notify_handler)
        view = GreenConnection(pgconn)
        # Notices and notifications stay the AsyncConnection's.
        pgconn.notice_handler, pgconn.notify_handler = handlers
        view.__dict__["twin"] = aconn
        for name in _SHARED:
            view.__dict__.pop(name, None)
        view.lock = _GreenLock(aconn.lock)  # type: ignore[assignment]
        aconn.__dict__[_VIEW] = view
    return view


async def _shielded(awaitable: Any) -> Any:
    """Finish `awaitable` even if the caller is cancelled meanwhile (returning a connection)."""
    return await asyncio.shield(awaitable)


class GreenPool:
    """An `AsyncConnectionPool` with the sync calls `PostgresEngine` makes of its pool."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool

    def getconn(self, timeout: float | None = None) -> GreenConnection:
        return view_of(await_only(self.pool.getconn(timeout=timeout)))

    def putconn(self, conn: PgConnection) -> None:
        await_only(_shielded(self.pool.putconn(_twin(conn))))

    def drain(self) -> None:
        await_only(self.pool.drain())

    def close(self) -> None:
        await_only(self.pool.close())


def _twin(conn: PgConnection) -> AsyncConnection[Any]:
    assert isinstance(conn, GreenConnection)
    return conn.twin


async def connect_async(
    target: Any, timeout: float, *, autocommit: bool, pooler: Pooler | None = None
) -> AsyncConnection[Any]:
    """An AsyncConnection outside the pool; the failure as DatabaseUnavailableError."""
    try:
        return await AsyncConnection.connect(
            target.conninfo, autocommit=autocommit, **connect_kwargs(target, timeout, pooler)
        )
    except psycopg.OperationalError as e:
        raise unavailable(target, e) from None
    except UnicodeError as e:
        raise unavailable(target, f"the host name is not valid: {e}") from None


def green_connect(
    target: Any, timeout: float, *, autocommit: bool = False, pooler: Pooler | None = None
) -> GreenConnection:
    """`connect()` for sync code run by the async twin: an AsyncConnection's view."""
    return view_of(await_only(connect_async(target, timeout, autocommit=autocommit, pooler=pooler)))


class AsyncPostgresEngine(PostgresEngine):
    """`PostgresEngine` on an AsyncConnectionPool; its methods run inside `run_green`.

    Callers pass the AsyncConnection of ``AsyncDbService.transaction()`` as ``conn=``:
    `checked` turns it into its GreenConnection for the sync code.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Opening awaits: a second task must wait on the loop, not block it.
        self._open_lock = _GreenLock(asyncio.Lock())  # type: ignore[assignment]

    def _connect(self) -> None:
        if self.target.embedded_dir is not None:
            uri = await_only(asyncio.to_thread(embedded.start, self.target.embedded_dir))
            self.target = _with_conninfo(self.target, uri)
        self._pool = self._open_pool()

    def _open_pool(self) -> Any:
        async def configure(aconn: AsyncConnection[Any]) -> None:
            await aconn.set_autocommit(True)  # pooled connections rest in autocommit mode
            if not await run_green(register_types, view_of(aconn)):
                self._vector_types_missing = True

        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            configure=configure, name="shareddb-async", **self._pool_options()
        )
        # Fail here with libpq's reason rather than later with a bare pool timeout.
        first = await_only(
            connect_async(self.target, self.timeout, autocommit=True, pooler=self.pooler)
        )
        await_only(first.close())
        try:
            await_only(pool.open(wait=True, timeout=self.timeout))
        except PoolTimeout as e:
            raise unavailable(self.target, e) from None
        return GreenPool(pool)

    def client(self) -> AsyncConnectionPool[Any]:  # type: ignore[override]
        self.ensure_open()
        assert self._pool is not None
        return self._pool.pool  # type: ignore[attr-defined,no-any-return]

    def checked(
        self, conn: object, error: type[InvalidArgumentError] = InvalidArgumentError
    ) -> PgConnection:
        if isinstance(conn, AsyncConnection):
            return view_of(conn)
        if isinstance(conn, GreenConnection):
            return conn
        raise error(
            f"conn={conn!r} is not a {self.kind} connection of {self.target.masked} for the "
            "async API (an AsyncConnection)",
            fix="pass the connection yielded by AsyncDbService.transaction(), or leave conn out",
        )


def _with_conninfo(target: Any, conninfo: str) -> Any:
    import dataclasses

    return dataclasses.replace(target, conninfo=conninfo)
