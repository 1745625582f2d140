"""One DbService per process per target, shared by every domain of the application."""

from __future__ import annotations

import os
import threading

from shareddb._core.config import DbConfig, load_config
from shareddb._core.service import DbService
from shareddb._core.url import parse_url

_lock = threading.Lock()
_instances: dict[tuple[str, str], DbService] = {}
# Services inherited across fork(): kept referenced so that garbage collection in the
# child never closes the parent's SQLite connection or pool sockets.
_inherited: list[DbService] = []


def _key(url: str) -> tuple[str, str]:
    target = parse_url(url)
    if target.engine == "sqlite" and target.sqlite_path is not None:
        return ("sqlite", str(target.sqlite_path.resolve()))
    return (target.engine, target.url)


def get_shared_db(config: DbConfig | None = None) -> DbService:
    """The process's DbService for `config` (default: `load_config()`), opened and initialized.

    The first call for a target opens it and applies pending migrations; later calls
    from any thread return the same object. A child process after ``fork()`` gets a
    fresh instance, never the parent's pool. Use `close_shared_dbs()` at shutdown.
    """
    config = config if config is not None else load_config()
    key = _key(config.url)
    with _lock:
        db = _instances.get(key)
        if db is None:
            db = DbService.from_config(config)
            try:
                db.initialize()
            except BaseException:
                db.close()
                raise
            _instances[key] = db
        return db


def close_shared_dbs() -> None:
    """Close every shared DbService of this process; the next get_shared_db() opens anew."""
    with _lock:
        services = list(_instances.values())
        _instances.clear()
    for db in services:
        db.close()


def _forget_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    _inherited.extend(_instances.values())
    _instances.clear()


os.register_at_fork(after_in_child=_forget_in_child)
