"""PostgreSQL connections: connecting, the pool's configure hook, errors that say why."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import psycopg
from pgvector import Vector
from pgvector.psycopg import register_vector
from psycopg.adapt import Buffer, Dumper
from psycopg.pq import Format

from shareddb._async.bridge import in_green
from shareddb._core.types import PgConnection, PgCursor, Pooler
from shareddb._core.url import DbTarget
from shareddb._vectors.codec import to_pgvector
from shareddb.errors import DatabaseUnavailableError

logger = logging.getLogger("shareddb")

APPLICATION_NAME = "shareddb"

# The attribute of a pooled connection holding its reusable binary cursor.
_CURSOR_ATTRIBUTE = "_shareddb_binary_cursor"


class VectorBinaryDumper(Dumper):
    """pgvector's binary dumper, with one numpy conversion for a 1-D array.

    pgvector-python's converts an array through an ``array('f')`` and copies it
    three times; this one converts to big-endian float32 once. Anything else
    (a `Vector`, a list) goes through pgvector's own conversion.
    """

    format = Format.BINARY

    def dump(self, obj: Any) -> Buffer | None:
        if isinstance(obj, np.ndarray) and obj.ndim == 1:
            return to_pgvector(obj)
        vector = obj if isinstance(obj, Vector) else Vector(obj)
        return vector.to_binary()


def binary_cursor(conn: PgConnection) -> PgCursor:
    """A binary cursor kept on one of our pooled connections, reused by later calls.

    Creating a cursor costs more client time than a short query's whole
    round trip is worth shaving; a pooled connection serves one caller at a
    time, so its cursor does too. Only for shareddb's own checkouts.
    """
    cursor: PgCursor | None = conn.__dict__.get(_CURSOR_ATTRIBUTE)
    if cursor is None or cursor.closed:
        cursor = conn.cursor(binary=True)
        setattr(conn, _CURSOR_ATTRIBUTE, cursor)
    return cursor


def connect_kwargs(
    target: DbTarget, timeout: float, pooler: Pooler | None = None
) -> dict[str, Any]:
    """Keyword arguments for every connection: a connect timeout and our application_name.

    Behind a transaction pooler, also no server-side prepared statements: psycopg
    prepares a statement after it ran 5 times on a connection, and through such a
    pooler a later run lands on another server connection, where that name is
    unknown or names another client's statement.
    """
    params = psycopg.conninfo.conninfo_to_dict(target.conninfo)
    kwargs: dict[str, Any] = {}
    if pooler == "transaction":
        kwargs["prepare_threshold"] = None
    if "connect_timeout" not in params:  # the url's own setting wins
        kwargs["connect_timeout"] = max(2, round(timeout))
    if "application_name" not in params:
        kwargs["application_name"] = APPLICATION_NAME
    return kwargs


def connect(
    target: DbTarget, timeout: float, *, autocommit: bool = False, pooler: Pooler | None = None
) -> PgConnection:
    """A connection outside the pool, with the failure reported as DatabaseUnavailableError.

    Called by the async twin (inside `run_green`), an AsyncConnection seen through the
    sync API, so that its waits are awaited on the event loop.
    """
    if in_green():
        from shareddb._async.green_pg import green_connect

        return green_connect(target, timeout, autocommit=autocommit, pooler=pooler)
    try:
        return psycopg.connect(
            target.conninfo, autocommit=autocommit, **connect_kwargs(target, timeout, pooler)
        )
    except psycopg.OperationalError as e:
        raise unavailable(target, e) from None
    except UnicodeError as e:  # the host name resolver's IDNA codec refused the host
        raise unavailable(target, f"the host name is not valid: {e}") from None


def unavailable(target: DbTarget, error: BaseException | str) -> DatabaseUnavailableError:
    """DatabaseUnavailableError naming the masked target and libpq's reason in one line."""
    return DatabaseUnavailableError(
        f"database {target.masked} is unreachable: couldn't connect ({_reason(target, error)})",
        fix="check that the server is running and accepts connections from this host with "
        "these credentials",
    )


def lost_connection(target: DbTarget, error: BaseException | str) -> DatabaseUnavailableError:
    """DatabaseUnavailableError for a connection that broke while it was in use."""
    return DatabaseUnavailableError(
        f"database {target.masked} is unreachable: the connection was lost while in use "
        f"({_reason(target, error)}); the transaction was rolled back unless the loss came "
        "during its commit",
        fix="check that the server is running, then retry",
    )


def _reason(target: DbTarget, error: BaseException | str) -> str:
    reason = " ".join(str(error).split()) or type(error).__name__
    return target.scrub(reason)


def register_types(conn: PgConnection) -> bool:
    """Register pgvector's types on `conn`; False (and idle) when the extension is absent."""
    try:
        register_vector(conn)
    except psycopg.ProgrammingError:
        # vector type not found: initialize() creates it, then drains the pool.
        registered = False
    else:
        registered = True
        info = conn.adapters.types.get("vector")
        if info is not None:  # replace pgvector's binary dumper of numpy arrays
            dumper = type("VectorBinaryDumper", (VectorBinaryDumper,), {"oid": info.oid})
            conn.adapters.register_dumper("numpy.ndarray", dumper)
    if not conn.autocommit:
        conn.rollback()  # the pool wants configured connections idle
    return registered
