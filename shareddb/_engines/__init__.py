"""One engine per database kind, each a thin subclass of `Engine` (see `base`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shareddb._engines.base import Dialect, Engine, MigrationSession

if TYPE_CHECKING:
    from shareddb._core.url import DbTarget


def engine_for(
    target: DbTarget, *, min_size: int, max_size: int, timeout: float, asynchronous: bool = False
) -> Engine[Any]:
    """The engine of `target`'s database kind (no I/O).

    `asynchronous`: for the async twin (PostgreSQL on an AsyncConnectionPool; SQLite's
    engine is the same, served by a worker thread).
    """
    if target.engine == "postgres" and asynchronous:
        from shareddb._async.green_pg import AsyncPostgresEngine

        return AsyncPostgresEngine(target, min_size=min_size, max_size=max_size, timeout=timeout)
    if target.engine == "postgres":
        from shareddb._engines.postgres.engine import PostgresEngine

        return PostgresEngine(target, min_size=min_size, max_size=max_size, timeout=timeout)
    from shareddb._engines.sqlite.engine import SqliteEngine

    return SqliteEngine(target, min_size=min_size, max_size=max_size, timeout=timeout)


__all__ = ["Dialect", "Engine", "MigrationSession", "engine_for"]
