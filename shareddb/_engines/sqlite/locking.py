"""SQLite's write lock: taking it with ``BEGIN IMMEDIATE``, and ending what it began.

Writers (the engine's transactions and the migration runner) take the database's
write lock up front, waiting up to the busy timeout; what a busy database means
to the caller (a connection timeout, a migration lock timeout) is the caller's.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def is_busy(error: sqlite3.Error) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED (primary result codes): another connection holds a lock."""
    primary = getattr(error, "sqlite_errorcode", 0) & 0xFF
    return primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


@contextmanager
def write_transaction(
    conn: sqlite3.Connection,
    busy: Callable[[sqlite3.OperationalError], Exception],
    *,
    immediate: bool = True,
) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` (or a deferred ``BEGIN``) ... COMMIT, or ROLLBACK on error.

    `busy` makes the error raised when the write lock stayed taken for the timeout.
    """
    try:
        conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    except sqlite3.OperationalError as e:
        if not is_busy(e):
            raise
        raise busy(e) from e
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if conn.in_transaction:
        try:
            conn.execute("COMMIT")
        except BaseException:
            # A failed COMMIT (a deferred constraint, a full disk) leaves the
            # transaction open: end it, or the shared connection stays stuck.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
