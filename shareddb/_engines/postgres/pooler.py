"""Connection poolers in front of PostgreSQL (PgBouncer, managed poolers): what can be told.

A transaction pooler hands each transaction (each autocommitted statement) to any
of its server connections, so nothing of a session survives from one to the next:
server-side prepared statements, session settings, session advisory locks. Under
``pooler="transaction"`` shareddb relies on none of them (`connect.connect_kwargs`), and
migrations, which need the session lock, run over ``direct_url`` or not at all.

What is detectable, cheaply and surely, on one connection: whether *some* pooler or
proxy speaks for the server. PostgreSQL tells each client its backend's pid at
start-up; a pooler makes up its own (it must, to route cancel requests), so the pid
the connection was given differs from ``pg_backend_pid()`` (`behind_pooler`). The
pool *mode* is not told to clients: `pooling_mode` finds it out with a second
client, for ``shareddb doctor``, and needs a free server connection in the pool.
"""

from __future__ import annotations

from typing import Literal, get_args

import psycopg

from shareddb._core.types import PgConnection, Pooler
from shareddb._core.url import DbTarget
from shareddb._engines.postgres.connect import connect
from shareddb.errors import ConfigError, MigrationThroughPoolerError

POOLERS: tuple[str, ...] = get_args(Pooler)
BACKEND_PID = b"SELECT pg_backend_pid()"

PoolMode = Literal["transaction", "session or transaction", "statement"]


def pooler_value(value: object, where: str) -> Pooler | None:
    """`value` as a pooler setting, or ConfigError naming `where` and the accepted values."""
    if value is None or value in POOLERS:
        return value  # type: ignore[return-value]
    accepted = ", ".join(repr(p) for p in POOLERS)
    raise ConfigError(
        f"{where} is {value!r}; use {accepted}, or None for a direct connection",
        fix='set pooler="transaction" behind PgBouncer (or a managed pooler) in transaction mode',
    )


def behind_pooler(conn: PgConnection) -> bool:
    """Whether a pooler or proxy sits between `conn` and the server (one round trip)."""
    row = conn.execute(BACKEND_PID).fetchone()
    return row is not None and row[0] != conn.info.backend_pid


def pooling_mode(conn: PgConnection, target: DbTarget, timeout: float) -> PoolMode:
    """How the pooler behind `conn` (an autocommit connection) hands out server connections.

    `conn` runs one statement, which gives its server connection back to a
    transaction pooler; a second client then opens a transaction. A transaction
    pooler hands it that same server connection (the one idle one, or the last one
    given back), which a session pooler never does while `conn` is connected. The
    answer "transaction" is sure; "session or transaction" is what a session pooler
    gives and also a busy transaction pooler. "statement": a pooler that refuses
    transactions of more than one statement.
    """
    row = conn.execute(BACKEND_PID).fetchone()
    assert row is not None
    with connect(target, timeout, pooler="transaction") as other:
        try:
            with other.transaction():
                other.execute(b"SELECT 1")
                row2 = other.execute(BACKEND_PID).fetchone()
        except psycopg.Error:
            return "statement"
    assert row2 is not None
    return "transaction" if row2[0] == row[0] else "session or transaction"


def refuse_migration(
    target: DbTarget, why: str, *, detected: bool = False
) -> MigrationThroughPoolerError:
    """The error of a migration that would run through a transaction pooler.

    `detected`: the pooler was found on the url, not configured, so it may pool sessions.
    """
    session = ' (or, if that pooler pools sessions, declare pooler="session")' if detected else ""
    return MigrationThroughPoolerError(
        f"initialize() has migrations to apply on {target.masked} but {why}: the migration "
        "lock is a session lock, which a transaction pooler can't hold, so two processes "
        "could both apply the same file; nothing was changed",
        fix="set direct_url= on DbService (or direct_url in [db] of the configuration) to a "
        f"URL that reaches the PostgreSQL server itself, not the pooler{session}, and run "
        "initialize() again",
    )
