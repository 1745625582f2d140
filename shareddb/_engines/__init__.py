"""One engine per database kind, each a thin subclass of `Engine` (see `base`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shareddb._engines.base import Dialect, Engine, MigrationSession

if TYPE_CHECKING:
    from shareddb._core.types import Pooler
    from shareddb._core.url import DbTarget


def engine_for(
    target: DbTarget,
    *,
    min_size: int,
    max_size: int,
    timeout: float,
    pooler: Pooler | None = None,
    direct: DbTarget | None = None,
    asynchronous: bool = False,
    **replication: Any,
) -> Engine[Any]:
    """The engine of `target`'s database kind (no I/O).

    PostgreSQL only: `pooler`, `direct` (the direct_url target) and `replication`
    (replicas, max_replica_lag, read_your_writes). `asynchronous`: for the async twin
    (PostgreSQL on an AsyncConnectionPool; SQLite's engine is the same, served by a
    worker thread).
    """
    if target.engine == "postgres":
        from shareddb._engines.postgres.engine import PostgresEngine

        engine_class = PostgresEngine
        if asynchronous:
            from shareddb._async.green_pg import AsyncPostgresEngine

            engine_class = AsyncPostgresEngine
        return engine_class(
            target,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            pooler=pooler,
            direct=direct,
            **replication,
        )
    from shareddb._engines.sqlite.engine import SqliteEngine

    return SqliteEngine(target, min_size=min_size, max_size=max_size, timeout=timeout)


__all__ = ["Dialect", "Engine", "MigrationSession", "engine_for"]
