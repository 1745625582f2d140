"""Running shareddb's synchronous code on an event loop, every wait awaited.

The PostgreSQL twin runs the very code of the sync classes (every check, every
statement) in a greenlet; each time psycopg would block on the socket, `await_only`
hands the wait to the event loop and the greenlet resumes with its result. This is
SQLAlchemy's asyncio technique: one implementation, so the two APIs can't drift.
"""

from __future__ import annotations

import asyncio
import sys
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
    """Whether the caller runs inside `run_green` (so `await_only` may be used)."""
    return isinstance(greenlet.getcurrent(), _Green)


def await_only(awaitable: Awaitable[T]) -> T:
    """The result of `awaitable`, awaited by the coroutine that runs this sync code."""
    current = greenlet.getcurrent()
    if not isinstance(current, _Green):
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


def pause(seconds: float) -> None:
    """`time.sleep`, or an `asyncio.sleep` awaited on the loop when run by `run_green`."""
    if in_green():
        await_only(asyncio.sleep(seconds))
    else:
        time.sleep(seconds)
