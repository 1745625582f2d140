"""How the async twin runs the sync implementation without blocking the event loop.

* PostgreSQL, `GreenRunner`: on the loop itself, in a greenlet whose every wait on the
  database is awaited (`bridge.run_green`); connections come from an AsyncConnectionPool.
  Bulk writes, long on CPU between waits, run on a worker thread instead, their waits
  still awaited on the loop (`bridge.run_threaded`).
* SQLite, `SqliteWorker`: on one worker thread per service, which owns the one
  connection, so neither SQLite's I/O nor numpy's ranking runs on the loop. An asyncio
  lock stands for the engine's thread lock: a task holding the connection across awaits
  (a `transaction()` block, a streamed query) makes other tasks wait on the loop,
  while its own calls, ``conn=`` or not, join its transaction as a thread's do.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

from shareddb._async.bridge import run_green, run_threaded

T = TypeVar("T")

# The SqliteWorkers whose connection the current task holds (see SqliteWorker.holding).
_HELD: contextvars.ContextVar[frozenset[int]] = contextvars.ContextVar(
    "shareddb_sqlite_held", default=frozenset()
)


class Runner(Protocol):
    async def call(self, fn: Callable[..., T], /, *args: Any, joined: bool, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)`; `joined`: it runs in a transaction the caller holds."""
        ...

    async def settled(self, fn: Callable[..., T], /, *args: Any) -> T:
        """`fn(*args)` run to its end even if the caller is cancelled (closing a block)."""
        ...

    async def call_cpu(self, fn: Callable[..., T], /, *args: Any, joined: bool, **kwargs: Any) -> T:
        """`call` for work with long stretches of CPU between its waits (upsert_many)."""
        ...

    def holding(self) -> Any:
        """An async context manager: the connection held by this task across awaits."""
        ...

    def shutdown(self) -> None: ...


class GreenRunner:
    """PostgreSQL: every call in a greenlet on the loop; the pool arbitrates connections."""

    async def call(self, fn: Callable[..., T], /, *args: Any, joined: bool, **kwargs: Any) -> T:
        return await run_green(fn, *args, **kwargs)

    async def call_cpu(self, fn: Callable[..., T], /, *args: Any, joined: bool, **kwargs: Any) -> T:
        # On a worker thread, waits awaited on the loop: the loop serves others meanwhile.
        return await run_threaded(fn, *args, **kwargs)

    async def settled(self, fn: Callable[..., T], /, *args: Any) -> T:
        # A cancellation thrown into the greenlet unwinds the block's own rollback and
        # returns the connection (shielded); the pool resets whatever is left.
        return await run_green(fn, *args)

    @asynccontextmanager
    async def holding(self) -> AsyncIterator[None]:
        yield

    def shutdown(self) -> None:
        return None


class SqliteWorker:
    """SQLite: every call on one worker thread; an asyncio lock for holding the connection."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._executor: ThreadPoolExecutor | None = None
        self._lock = asyncio.Lock()

    def _held(self) -> bool:
        return id(self) in _HELD.get()

    async def call(self, fn: Callable[..., T], /, *args: Any, joined: bool, **kwargs: Any) -> T:
        if joined or self._held():
            return await self._submit(fn, *args, **kwargs)
        async with self._lock:
            return await self._submit(fn, *args, **kwargs)

    async def call_cpu(self, fn: Callable[..., T], /, *args: Any, joined: bool, **kwargs: Any) -> T:
        return await self.call(fn, *args, joined=joined, **kwargs)  # the worker already

    async def settled(self, fn: Callable[..., T], /, *args: Any) -> T:
        return await self._submit(fn, *args, cancellable=False)

    @asynccontextmanager
    async def holding(self) -> AsyncIterator[None]:
        if self._held():
            yield  # nested: the outer block holds it
            return
        async with self._lock:
            token = _HELD.set(_HELD.get() | {id(self)})
            try:
                yield
            finally:
                _HELD.reset(token)

    async def _submit(
        self, fn: Callable[..., T], /, *args: Any, cancellable: bool = True, **kwargs: Any
    ) -> T:
        """Run on the worker. A cancelled caller waits for a call already running there.

        A call that has not started is dropped (nothing happened); one that has runs to
        its end, all or nothing, before the cancellation goes on, so the connection is
        settled when the caller sees CancelledError. `cancellable=False` (closing a
        transaction block) runs the call whatever happens.
        """
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"shareddb-{self._name}")
        job: Future[T] = self._executor.submit(fn, *args, **kwargs)
        waiting = asyncio.wrap_future(job)
        try:
            return await asyncio.shield(waiting)
        except asyncio.CancelledError:
            if cancellable and job.cancel():
                raise
            await _finish(waiting)
            raise

    def shutdown(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)


async def _finish(waiting: asyncio.Future[Any]) -> None:
    """Wait for `waiting` to end, through further cancellations; its outcome is dropped."""
    while not waiting.done():
        try:
            await asyncio.shield(waiting)
        except asyncio.CancelledError:
            continue
        except BaseException:
            return
    if not waiting.cancelled():
        waiting.exception()  # retrieved: no "exception was never retrieved" warning
