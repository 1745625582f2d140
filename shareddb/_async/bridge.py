"""Running shareddb's synchronous code for an event loop, every wait awaited on it.

The PostgreSQL twin runs the very code of the sync classes (every check, every
statement) in a greenlet; each time psycopg would block on the socket, `await_only`
hands the wait to the event loop and the greenlet resumes with its result. This is
SQLAlchemy's asyncio technique: one implementation, so the two APIs can't drift.

Work with long stretches of CPU between waits (`upsert_many`: checking and encoding
50,000-row batches) runs with `run_threaded` instead: on a worker thread, its waits
still awaited on the loop, so the loop keeps serving other tasks meanwhile.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import greenlet

from shareddb.errors import ShareddbError

T = TypeVar("T")


class _Green(greenlet.greenlet):  # type: ignore[misc]
    """A greenlet running sync code for a coroutine (`driver`, the awaiting side)."""

    def __init__(self, fn: Callable[..., Any], driver: greenlet.greenlet) -> None:
        super().__init__(fn, driver)
        self.driver = driver


def in_green() -> bool:
    """Whether the caller runs inside `run_green` or `run_threaded` (`await_only` works)."""
    return isinstance(greenlet.getcurrent(), _Green) or getattr(_thread, "bridge", None) is not None


def await_only(awaitable: Awaitable[T]) -> T:
    """The result of `awaitable`, awaited by the coroutine that runs this sync code."""
    current = greenlet.getcurrent()
    if not isinstance(current, _Green):
        bridge: _ThreadBridge | None = getattr(_thread, "bridge", None)
        if bridge is not None:
            return bridge.wait(awaitable)
        if hasattr(awaitable, "close"):
            awaitable.close()  # never awaited: don't warn about it
        raise ShareddbError(
            "an AsyncDbService connection was used outside an await of the async API "
            "(e.g. from another thread, or an async iterator left unclosed)",
            fix="await the AsyncDbService's methods; close async iterators with aclose()",
        )
    return current.driver.switch(awaitable)  # type: ignore[no-any-return]


async def run_green(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run the sync `fn(*args, **kwargs)`, awaiting on this loop whatever it waits for."""
    green = _Green(fn, greenlet.getcurrent())
    result: Any = green.switch(*args, **kwargs)
    while not green.dead:
        try:
            value = await result
        except BaseException:  # CancelledError too: the sync code unwinds its blocks
            result = green.throw(*sys.exc_info())
        else:
            result = green.switch(value)
    return result  # type: ignore[no-any-return]


def on_loop(fn: Callable[[], Any]) -> None:
    """Call `fn` on the event loop: now from a greenlet, soon (in order) from a thread."""
    bridge: _ThreadBridge | None = getattr(_thread, "bridge", None)
    if bridge is None:
        fn()
    else:
        bridge.call_soon(fn)


def pause(seconds: float) -> None:
    """`time.sleep`, or an `asyncio.sleep` awaited on the loop when run by `run_green`."""
    if in_green():
        await_only(asyncio.sleep(seconds))
    else:
        time.sleep(seconds)


_thread = threading.local()  # .bridge: the _ThreadBridge of a thread inside run_threaded


class _ThreadBridge:
    """A worker thread's way to await on the loop; how a cancellation reaches the thread.

    The thread's waits run as tasks on the loop, one at a time; `cancel` (on the loop)
    cancels the one in progress, or else the next. The thread resumes only once the task
    has ended, so a cancelled query is over before the thread rolls back.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._task: asyncio.Task[Any] | None = None  # both touched on the loop only
        self._cancelled = False

    def wait(self, awaitable: Awaitable[T]) -> T:
        done: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._loop.call_soon_threadsafe(self._start, awaitable, done)
        return done.result()

    def _start(self, awaitable: Awaitable[T], done: concurrent.futures.Future[T]) -> None:
        if self._cancelled:  # the caller was cancelled while the thread computed
            self._cancelled = False
            if hasattr(awaitable, "close"):
                awaitable.close()
            done.set_exception(asyncio.CancelledError())
            return

        async def awaited() -> T:
            return await awaitable

        self._task = self._loop.create_task(awaited())
        self._task.add_done_callback(lambda task: self._finished(task, awaitable, done))

    def _finished(
        self, task: asyncio.Task[T], awaitable: Awaitable[T], done: concurrent.futures.Future[T]
    ) -> None:
        self._task = None
        if task.cancelled():
            if hasattr(awaitable, "close"):
                awaitable.close()  # cancelled before it started: never to be awaited
            done.set_exception(asyncio.CancelledError())
        elif (error := task.exception()) is not None:
            done.set_exception(error)
        else:
            done.set_result(task.result())

    def call_soon(self, fn: Callable[[], Any]) -> None:
        self._loop.call_soon_threadsafe(fn)

    def cancel(self) -> None:
        """Cancel the wait in progress, or else the thread's next one (on the loop)."""
        if self._task is not None:
            self._task.cancel()
        else:
            self._cancelled = True


async def run_threaded(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run the sync `fn` on a worker thread, its waits awaited on this loop.

    A cancelled caller cancels the thread's wait in progress (psycopg then cancels the
    statement in the server) and waits for the thread to unwind its blocks (rollback,
    connection back to the pool) before CancelledError goes on.
    """
    loop = asyncio.get_running_loop()
    bridge = _ThreadBridge(loop)

    def work() -> T:
        _thread.bridge = bridge
        try:
            return fn(*args, **kwargs)
        finally:
            _thread.bridge = None

    job = loop.run_in_executor(None, work)
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:
        bridge.cancel()
        while not job.done():
            try:
                await asyncio.shield(job)
            except asyncio.CancelledError:
                bridge.cancel()
            except BaseException:
                break
        if not job.cancelled():
            job.exception()  # retrieved: the caller raises CancelledError
        raise
