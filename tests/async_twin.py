"""The behaviour tests, driven through the async twins too (the ``api`` dimension).

A test module imports `both_apis` (the fixture `db`), which overrides conftest's `db`: with
``api="async"`` it yields a blocking view of an `AsyncDbService` (its coroutines run on
an event loop in a thread of the test), and the module's `VectorStorage` /
`SessionStorage` names build `AsyncVectorStorage` / `AsyncSessionStorage` over it. So
the very same test body checks both APIs: they can't drift apart.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from helpers import settle
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from shareddb import (
    AsyncDbService,
    AsyncSessionStorage,
    AsyncVectorStorage,
    DbService,
    SessionStorage,
    VectorStorage,
)


class Portal:
    """An event loop running in a thread; `run` blocks until a coroutine there is done."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        # One context for every call: a test's calls are one task's, as in an app where
        # one task runs `async with db.transaction()` and the calls inside it.
        self._context = contextvars.Context()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, awaitable: Awaitable[Any]) -> Any:
        async def wait() -> Any:
            return await awaitable

        done: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def finished(task: asyncio.Task[Any]) -> None:
            if task.cancelled():
                done.cancel()
            elif task.exception() is not None:
                done.set_exception(task.exception())  # type: ignore[arg-type]
            else:
                done.set_result(task.result())

        def start() -> None:
            self.loop.create_task(wait(), context=self._context).add_done_callback(finished)

        self.loop.call_soon_threadsafe(start)
        return done.result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


def _is_async(value: Any) -> bool:
    kind = type(value)
    return kind.__name__.startswith("Async") or any(
        hasattr(kind, name) for name in ("__aenter__", "__anext__")
    )


class Blocking:
    """A blocking view of an async object: coroutine results are awaited on the portal."""

    def __init__(self, portal: Portal, target: Any) -> None:
        object.__setattr__(self, "_portal", portal)
        object.__setattr__(self, "_target", target)

    def _wrap(self, value: Any) -> Any:
        if inspect.isawaitable(value):
            value = self._portal.run(value)
        return Blocking(self._portal, value) if _is_async(value) else value

    def __getattr__(self, name: str) -> Any:
        if name == "close" and hasattr(self._target, "aclose"):
            name = "aclose"
        value = getattr(self._target, name)
        if not callable(value):
            return self._wrap(value)

        def call(*args: Any, **kwargs: Any) -> Any:
            args = tuple(unwrap(a) for a in args)
            kwargs = {k: unwrap(v) for k, v in kwargs.items()}
            return self._wrap(value(*args, **kwargs))

        return call

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._target, name, value)

    def __repr__(self) -> str:
        return repr(self._target)

    def __enter__(self) -> Any:
        return self._wrap(self._portal.run(self._target.__aenter__()))

    def __exit__(self, *exc: Any) -> Any:
        return self._portal.run(self._target.__aexit__(*exc))

    def __iter__(self) -> Blocking:
        if not hasattr(self._target, "__anext__"):
            return Blocking(self._portal, self._target.__aiter__())
        return self

    def __next__(self) -> Any:
        try:
            return self._wrap(self._portal.run(self._target.__anext__()))
        except StopAsyncIteration:
            raise StopIteration from None


def unwrap(value: Any) -> Any:
    return object.__getattribute__(value, "_target") if isinstance(value, Blocking) else value


def _twin_of(sync_class: type, async_class: type) -> Callable[..., Any]:
    """`sync_class(db, ...)`, or its async twin's blocking view when `db` is one."""

    def build(db: Any, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(db, Blocking):
            return sync_class(db, *args, **kwargs)
        portal = object.__getattribute__(db, "_portal")
        return Blocking(portal, async_class(unwrap(db), *args, **kwargs))

    return build


def settle_async(portal: Portal, pool: AsyncConnectionPool[Any]) -> None:
    """`settle` for the async pool: its worker done making connections."""
    deadline = time.monotonic() + 30
    while True:
        stats = pool.get_stats()
        if stats["pool_available"] == stats["pool_size"] >= stats["pool_min"]:
            return
        assert time.monotonic() < deadline, f"pool never settled: {stats}"
        portal.run(asyncio.sleep(0.005))


@pytest.fixture(name="db")
def both_apis(
    db_url: str, api: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """An open, initialized service on each backend, through each API."""
    if api == "sync":
        with DbService(db_url) as service:
            service.initialize()
            pool = service.get_sql()
            if isinstance(pool, ConnectionPool):
                settle(pool)
            yield service
        return
    portal = Portal()
    service = AsyncDbService(db_url)
    try:
        portal.run(service.open())
        portal.run(service.initialize())
        pool = service.get_sql()
        if isinstance(pool, AsyncConnectionPool):
            settle_async(portal, pool)
        module = request.module
        for sync_class, async_class in (
            (VectorStorage, AsyncVectorStorage),
            (SessionStorage, AsyncSessionStorage),
        ):
            if getattr(module, sync_class.__name__, None) is sync_class:
                monkeypatch.setattr(module, sync_class.__name__, _twin_of(sync_class, async_class))
        yield Blocking(portal, service)
    finally:
        portal.run(service.close())
        portal.close()


def sync_only(api: str, reason: str) -> None:
    """Skip a test's async run: it checks the sync implementation's own internals."""
    if api == "async":
        pytest.skip(f"sync API only: {reason}")
