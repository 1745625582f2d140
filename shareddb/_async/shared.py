"""One AsyncDbService per target per event loop, as `get_shared_db()` is per process."""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import Mapping
from pathlib import Path

from shareddb._async.service import AsyncDbService
from shareddb._core.config import DbConfig, load_config
from shareddb._core.shared import _check_namespaces, _key, _resolved, _Shared

# Per event loop: its lock, and its services by target (with the namespaces they have).
_loops: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop,
    tuple[asyncio.Lock, dict[tuple[str, str], tuple[AsyncDbService, _Shared]]],
] = weakref.WeakKeyDictionary()


async def get_shared_async_db(
    config: DbConfig | None = None,
    *,
    schema_dirs: Mapping[str, str | os.PathLike[str]] | None = None,
) -> AsyncDbService:
    """This event loop's AsyncDbService for `config` (default `load_config()`), initialized.

    The first call for a target on a loop opens it and applies pending migrations; later
    calls on that loop return the same object (another loop gets its own: a pool's
    connections belong to one loop). Namespaces work as in `get_shared_db()`. Close
    them with `close_shared_async_dbs()` before the loop ends.
    """
    config = config if config is not None else load_config()
    wanted: dict[str, Path] = _resolved({**config.schema_dirs, **(schema_dirs or {})})
    key = _key(config.url)
    lock, services = _loops.setdefault(asyncio.get_running_loop(), (asyncio.Lock(), {}))
    async with lock:
        found = services.get(key)
        if found is not None:
            _check_namespaces(found[1], wanted)
            return found[0]
        db = AsyncDbService.from_config(config, schema_dirs=wanted)
        try:
            await db.initialize()
        except BaseException:
            await db.close()
            raise
        services[key] = (db, _Shared(db.sync_service, wanted))
        return db


async def close_shared_async_dbs() -> None:
    """Close this event loop's shared AsyncDbServices; the next call opens anew."""
    entry = _loops.pop(asyncio.get_running_loop(), None)
    if entry is None:
        return
    lock, services = entry
    async with lock:
        for db, _ in services.values():
            await db.close()
        services.clear()
