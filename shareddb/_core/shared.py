"""One DbService per process per target, shared by every domain of the application."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from shareddb._core.config import DbConfig, load_config
from shareddb._core.service import DbService
from shareddb._core.url import expand_user, parse_url
from shareddb._migrations.files import SHAREDDB_NAMESPACE, namespace_problem
from shareddb.errors import ConfigError


@dataclass(frozen=True)
class _Shared:
    db: DbService
    schema_dirs: Mapping[str, Path]  # the namespaces it was opened with, resolved folders


_lock = threading.Lock()
_instances: dict[tuple[str, str], _Shared] = {}
# Services inherited across fork(): kept referenced so that garbage collection in the
# child never closes the parent's SQLite connection or pool sockets.
_inherited: list[DbService] = []


def _key(url: str) -> tuple[str, str]:
    target = parse_url(url)
    if target.engine == "sqlite" and target.sqlite_path is not None:
        return ("sqlite", str(target.sqlite_path.resolve()))
    return (target.engine, target.url)


def get_shared_db(
    config: DbConfig | None = None,
    *,
    schema_dirs: Mapping[str, str | os.PathLike[str]] | None = None,
) -> DbService:
    """The process's DbService for `config` (default: `load_config()`), opened and initialized.

    The first call for a target opens it and applies pending migrations; later calls
    from any thread return the same object. A child process after ``fork()`` gets a
    fresh instance, never the parent's pool. Use `close_shared_dbs()` at shutdown.

    :param schema_dirs: the application's migration namespaces, ``{"myapp":
        "migrations/"}``, added to ``config.schema_dirs`` (``[db.schema_dirs]``; the
        argument's folder wins for a namespace both name). The first call's namespaces
        are the shared service's: a later call may ask for any of them (or none), but
        asking for one it lacks, or for another folder, raises ConfigError rather than
        opening a second pool. Give every namespace on the first call, or in the
        configuration, which every caller reads.
    """
    config = config if config is not None else load_config()
    wanted = _resolved({**config.schema_dirs, **(schema_dirs or {})})
    key = _key(config.url)
    with _lock:
        shared = _instances.get(key)
        if shared is not None:
            _check_namespaces(shared, wanted)
            return shared.db
        db = DbService.from_config(config, schema_dirs=wanted)
        try:
            db.initialize()
        except BaseException:
            db.close()
            raise
        _instances[key] = _Shared(db, wanted)
        return db


def close_shared_dbs() -> None:
    """Close every shared DbService of this process; the next get_shared_db() opens anew."""
    with _lock:
        services = [shared.db for shared in _instances.values()]
        _instances.clear()
    for db in services:
        db.close()


def _resolved(schema_dirs: Mapping[str, str | os.PathLike[str]]) -> dict[str, Path]:
    """Checked namespaces with absolute, symlink-free folders: comparable, and immune to chdir."""
    folders: dict[str, Path] = {}
    for namespace, folder in schema_dirs.items():
        problem = namespace_problem(namespace)
        if problem:
            raise ConfigError(f"schema_dirs namespace {namespace!r} {problem}")
        text = os.fspath(folder) if isinstance(folder, str | os.PathLike) else None
        if not isinstance(text, str) or not text or "\x00" in text:
            raise ConfigError(
                f"schema_dirs folder of namespace {namespace!r} is {folder!r}",
                fix="give the folder of its migration files as a str or pathlib.Path",
            )
        where = f"schema_dirs folder of namespace {namespace!r}"
        folders[namespace] = expand_user(folder, where).resolve()
    return folders


def _check_namespaces(shared: _Shared, wanted: Mapping[str, Path]) -> None:
    """ConfigError when `wanted` names a namespace (or folder) the shared service lacks."""
    have = shared.schema_dirs
    lacking = {ns: folder for ns, folder in wanted.items() if have.get(ns) != folder}
    if not lacking:
        return
    names = ", ".join([SHAREDDB_NAMESPACE, *have])
    asked = "; ".join(
        f"namespace {ns!r} ({folder}) is not among them"
        if ns not in have
        else f"namespace {ns!r} is {have[ns]} there, not {folder}"
        for ns, folder in lacking.items()
    )
    raise ConfigError(
        f"the shared DbService for {shared.db.url} was opened with namespaces {names}; "
        f"{asked}; get_shared_db() never opens a second pool for one database",
        fix="pass every namespace on the first get_shared_db(schema_dirs=...) call, or list "
        "them under [db.schema_dirs] in the configuration so that every caller has them",
    )


def _forget_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    _inherited.extend(shared.db for shared in _instances.values())
    _instances.clear()


os.register_at_fork(after_in_child=_forget_in_child)
