"""Configuration: a TOML file, the environment, and built-in defaults.

Precedence of the URL, highest first: ``SHAREDDB_URL``; ``[db] url`` in the file;
``[sessiondb]`` in the file; the default SQLite file under the user data dir.
The application's migration namespaces (``[db.schema_dirs]``) come from the file
whichever URL wins: they describe the application, not the database it talks to.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import quote

import platformdirs

from shareddb._core.replica_options import DEFAULT_MAX_REPLICA_LAG, replica_options
from shareddb._core.types import Pooler
from shareddb._core.url import expand_user, mask_url, parse_url
from shareddb._engines.postgres.embedded import embedded_url
from shareddb._engines.postgres.pooler import pooler_value
from shareddb._migrations.files import namespace_problem
from shareddb.errors import ConfigError

logger = logging.getLogger("shareddb")

ENV_URL = "SHAREDDB_URL"
ENV_CONFIG = "SHAREDDB_CONFIG"

ConfigSource = Literal["default", "sessiondb", "db", "env"]

_TOP_KEYS = {"db", "sessiondb"}
_DB_KEYS = {
    "url",
    "schema_dirs",
    "pooler",
    "direct_url",
    "replicas",
    "max_replica_lag",
    "read_your_writes",
}
_SESSIONDB_KEYS = {"backend", "sqlite", "postgres"}
_SQLITE_KEYS = {"path"}
_POSTGRES_KEYS = {"connection_string", "embedded", "data_dir"}


@dataclass(frozen=True)
class DbConfig:
    """The effective database configuration and where it came from.

    `url` is the URL a DbService will use; `source` says which setting won
    (``default``, file ``sessiondb``, file ``db`` or ``env``); `path` is the
    configuration file that was consulted and `path_exists` whether it was there.
    `schema_dirs` maps the application's migration namespaces to their folders
    (``[db.schema_dirs]``, read-only; folders from a file are absolute).
    `pooler` and `direct_url` are ``[db] pooler`` and ``[db] direct_url`` (see
    `DbService`); the file's direct_url goes with the file's url only.
    """

    url: str
    source: ConfigSource = "default"
    path: Path | None = None
    path_exists: bool = False
    schema_dirs: Mapping[str, Path] = field(default_factory=dict, hash=False)
    pooler: Pooler | None = None
    direct_url: str | None = None
    # [db] replicas, max_replica_lag, read_your_writes: DbService keyword arguments.
    replication: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        # A read-only copy with Path values, so that a config built by hand with str
        # folders compares and behaves like one read from a file.
        dirs = {str(ns): Path(folder) for ns, folder in self.schema_dirs.items()}
        object.__setattr__(self, "schema_dirs", MappingProxyType(dirs))
        object.__setattr__(self, "replication", MappingProxyType(dict(self.replication)))

    def __repr__(self) -> str:
        return (
            f"DbConfig(url={mask_url(self.url)!r}, source={self.source!r}, "
            f"path={self.path!r}, path_exists={self.path_exists!r}, "
            f"schema_dirs={dict(self.schema_dirs)!r}, pooler={self.pooler!r}, "
            f"direct_url={None if self.direct_url is None else mask_url(self.direct_url)!r}"
            + (f", replication={_masked(self.replication)!r})" if self.replication else ")")
        )

    def describe_source(self) -> str:
        """A human sentence fragment naming the winning setting."""
        if self.source == "env":
            return f"environment variable {ENV_URL}"
        if self.source == "default":
            return "built-in default (no url configured)"
        return f"[{self.source}] in {self.path}"


def default_config_path() -> Path:
    """``$SHAREDDB_CONFIG`` or ``<user config dir>/shareddb/config.toml``."""
    env = os.environ.get(ENV_CONFIG)
    if env:
        return expand_user(env, f"environment variable {ENV_CONFIG}")
    return Path(platformdirs.user_config_dir("shareddb")) / "config.toml"


def default_sqlite_path() -> Path:
    return Path(platformdirs.user_data_dir("shareddb")) / "shareddb.db"


def sqlite_url(path: Path) -> str:
    """The ``sqlite:///`` URL for a file path (absolute paths get four slashes)."""
    return "sqlite:///" + quote(str(path), safe="/:\\")


def load_config(path: str | os.PathLike[str] | None = None) -> DbConfig:
    """Read the configuration file and the environment into a DbConfig.

    With no `path`, the file is ``$SHAREDDB_CONFIG`` or the platform config
    dir's ``shareddb/config.toml``; a missing file there means defaults. An
    explicit `path` that does not exist is an error. Raises ConfigError naming
    the file and key for a bad file.
    """
    explicit = path is not None
    file = expand_user(path, "config file") if path is not None else default_config_path()
    # Absolute, so that relative paths in the file stay right after a chdir().
    file = file.absolute()
    data = _read_toml(file, required=explicit)
    env_url = os.environ.get(ENV_URL)
    if env_url:
        _validate_url(env_url, f"environment variable {ENV_URL}")
    if data is None:
        if env_url:
            return DbConfig(url=env_url, source="env", path=file)
        return DbConfig(url=sqlite_url(default_sqlite_path()), path=file)
    # The file is parsed even when the environment wins, so that a broken file is
    # reported rather than hidden, and its namespaces apply to any url.
    url, source = _url_from_file(data, file)
    dirs = _schema_dirs_from_file(data, file)
    pooler, direct_url = _pooler_from_file(data, file)
    replication = _replication_from_file(data, file)
    if env_url:
        # Replicas belong to the file's primary: SHAREDDB_URL names another database.
        url, source, replication = env_url, "env", {}
        if direct_url is not None:
            # It names the server behind the file's url: migrating it for another url
            # would change the wrong database.
            logger.warning(
                "ignoring db.direct_url in %s: %s overrides the url it goes with",
                file,
                ENV_URL,
            )
            direct_url = None
    return DbConfig(
        url=url,
        source=source,
        path=file,
        path_exists=True,
        schema_dirs=dirs,
        pooler=pooler,
        direct_url=direct_url,
        replication=replication,
    )


def _replication_from_file(data: dict[str, Any], file: Path) -> dict[str, Any]:
    """``[db] replicas``, ``max_replica_lag`` and ``read_your_writes``, as given."""
    db = _table(data, "db", file)
    given: dict[str, Any] = {
        key: db[key] for key in ("replicas", "max_replica_lag", "read_your_writes") if key in db
    }
    if not given:
        return {}
    if "url" not in db:
        raise ConfigError(
            f"key db.{next(iter(given))} in {file} needs db.url: the primary the replicas "
            "replicate",
            fix='add url = "postgresql://..." to [db]',
        )
    replicas = given.get("replicas", [])
    if not isinstance(replicas, list) or not all(isinstance(r, str) for r in replicas):
        raise ConfigError(
            f"key db.replicas in {file} must be a list of url strings",
            fix='write replicas = ["postgresql://user:pass@replica:5432/db"]',
        )
    lag = given.get("max_replica_lag", DEFAULT_MAX_REPLICA_LAG)
    ryw = given.get("read_your_writes", True)
    try:
        replica_options(parse_url(db["url"]), replicas, lag, ryw)
    except ConfigError as e:
        raise ConfigError(f"[db] in {file}: {e}") from None
    if "replicas" in given:
        given["replicas"] = tuple(replicas)
    return given


def _masked(replication: Mapping[str, Any]) -> dict[str, Any]:
    shown = dict(replication)
    if "replicas" in shown:
        shown["replicas"] = [mask_url(url) for url in shown["replicas"]]
    return shown


def _read_toml(file: Path, *, required: bool) -> dict[str, Any] | None:
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        if required:
            raise ConfigError(
                f"config file {file} does not exist; create it (shareddb config --init) "
                "or pass another path"
            ) from None
        return None
    except OSError as e:
        raise ConfigError(
            f"config file {file} can't be read ({e.strerror}); check the path and its permissions"
        ) from None
    except ValueError:  # a NUL byte, or a lone surrogate the file system can't take
        raise ConfigError(
            f"config file path {str(file)!r} is not a valid file name (it holds a NUL byte or "
            "a lone surrogate); pass another path"
        ) from None
    try:
        return tomllib.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {file} is not UTF-8 text; save it as UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {file} is not valid TOML: {e}; fix the syntax") from None


def _url_from_file(data: dict[str, Any], file: Path) -> tuple[str, ConfigSource]:
    _check_keys(data, _TOP_KEYS, file, "")
    db = _table(data, "db", file)
    sessiondb = _table(data, "sessiondb", file)
    _check_keys(db, _DB_KEYS, file, "db.")
    _check_keys(sessiondb, _SESSIONDB_KEYS, file, "sessiondb.")
    sqlite = _table(sessiondb, "sqlite", file, "sessiondb.")
    postgres = _table(sessiondb, "postgres", file, "sessiondb.")
    _check_keys(sqlite, _SQLITE_KEYS, file, "sessiondb.sqlite.")
    _check_keys(postgres, _POSTGRES_KEYS, file, "sessiondb.postgres.")

    if "url" in db:
        url = _string(db, "url", file, "db.")
        _validate_url(url, f"key db.url in {file}")
        # [db] wins, but a broken [sessiondb] is still reported rather than hidden.
        _url_from_file({"sessiondb": sessiondb}, file)
        return url, "db"

    embedded = _embedded_dir(postgres, file)
    backend = (
        _string(sessiondb, "backend", file, "sessiondb.")
        if "backend" in sessiondb
        else ("postgres" if embedded else "sqlite")
    )
    if backend == "sqlite":
        if "path" not in sqlite:
            # Nothing set at all (an empty file) is the default, not [sessiondb].
            return sqlite_url(default_sqlite_path()), "sessiondb" if sessiondb else "default"
        raw_path = _string(sqlite, "path", file, "sessiondb.sqlite.")
        if not raw_path or "\x00" in raw_path:
            raise ConfigError(
                f"key sessiondb.sqlite.path in {file} is empty or holds a NUL byte; "
                "set it to a file path"
            )
        db_path = expand_user(raw_path, f"key sessiondb.sqlite.path in {file}")
        if not db_path.is_absolute() and raw_path != ":memory:":
            db_path = file.parent / db_path  # relative to the config file, not the cwd
        return sqlite_url(db_path), "sessiondb"
    if backend == "postgres":
        if embedded:
            return embedded_url(embedded[0]), "sessiondb"
        if "connection_string" not in postgres:
            raise ConfigError(
                f"key sessiondb.postgres.connection_string is missing in {file} while "
                "sessiondb.backend is 'postgres'; add connection_string = "
                '"postgresql://user:password@host:5432/db", or embedded = true for a local '
                "server (pip install 'shareddb[embedded]')"
            )
        url = _string(postgres, "connection_string", file, "sessiondb.postgres.")
        _validate_url(url, f"key sessiondb.postgres.connection_string in {file}")
        return url, "sessiondb"
    raise ConfigError(f"key sessiondb.backend in {file} is {backend!r}; use 'sqlite' or 'postgres'")


def _pooler_from_file(data: dict[str, Any], file: Path) -> tuple[Pooler | None, str | None]:
    """``[db] pooler`` and ``[db] direct_url``, checked; direct_url needs ``[db] url``."""
    db = _table(data, "db", file)
    pooler = pooler_value(db.get("pooler"), f"key db.pooler in {file}")
    if "direct_url" not in db:
        return pooler, None
    direct_url = _string(db, "direct_url", file, "db.")
    _validate_url(direct_url, f"key db.direct_url in {file}")
    if not direct_url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            f"key db.direct_url in {file} is {mask_url(direct_url)!r}, not a postgresql:// url",
            fix="set it to the PostgreSQL server behind the pooler that url reaches",
        )
    if "url" not in db:
        raise ConfigError(
            f"key db.direct_url in {file} is set without db.url",
            fix="set db.url to the pooler's url, or remove direct_url",
        )
    return pooler, direct_url


def _schema_dirs_from_file(data: dict[str, Any], file: Path) -> dict[str, Path]:
    """``[db.schema_dirs]``: namespace -> folder, relative folders against the file's folder.

    Folders are not checked for existence here: `initialize()` and ``shareddb
    doctor`` report a missing one, and a configuration may be written first.
    """
    prefix = "db.schema_dirs."
    table = _table(_table(data, "db", file), "schema_dirs", file, "db.")
    dirs: dict[str, Path] = {}
    for namespace, raw in table.items():
        problem = namespace_problem(namespace)
        if problem:
            raise ConfigError(
                f"key {prefix}{namespace} in {file}: namespace {namespace!r} {problem}"
            )
        if isinstance(raw, dict):
            raise ConfigError(
                f"key {prefix}{namespace} in {file} is a table, not a folder",
                fix=f'write {namespace} = "path/to/migrations" directly under [db.schema_dirs]',
            )
        folder = _string(table, namespace, file, prefix)
        if not folder or "\x00" in folder:
            raise ConfigError(
                f"key {prefix}{namespace} in {file} is empty or holds a NUL byte",
                fix="set it to the folder of the namespace's migration files",
            )
        path = expand_user(folder, f"key {prefix}{namespace} in {file}")
        dirs[namespace] = path if path.is_absolute() else file.parent / path
    return dirs


def _embedded_dir(postgres: dict[str, Any], file: Path) -> tuple[Path | None] | None:
    """``(data folder or None for the default,)`` when embedded = true, else None."""
    prefix = "sessiondb.postgres."
    embedded = postgres.get("embedded", False)
    if not isinstance(embedded, bool):
        raise ConfigError(
            f"key {prefix}embedded in {file} must be true or false, not "
            f"{type(embedded).__name__}; write embedded = true without quotes"
        )
    if not embedded:
        if "data_dir" in postgres:
            raise ConfigError(
                f"key {prefix}data_dir in {file} only applies to the embedded server; "
                "add embedded = true or remove data_dir"
            )
        return None
    if "connection_string" in postgres:
        raise ConfigError(
            f"keys {prefix}connection_string and {prefix}embedded = true in {file} "
            "contradict each other; keep one of them"
        )
    if "data_dir" not in postgres:
        return (None,)
    raw = _string(postgres, "data_dir", file, prefix)
    if not raw or "\x00" in raw:
        raise ConfigError(
            f"key {prefix}data_dir in {file} is empty or holds a NUL byte; set it to a folder"
        )
    folder = expand_user(raw, f"key {prefix}data_dir in {file}")
    if not folder.is_absolute():
        folder = file.parent / folder  # relative to the config file, not the cwd
    return (folder,)


def _validate_url(url: str, where: str) -> None:
    try:
        parse_url(url)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _table(data: dict[str, Any], key: str, file: Path, prefix: str = "") -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(
            f"key {prefix}{key} in {file} must be a table ([{prefix}{key}]), "
            f"not {type(value).__name__}"
        )
    return value


def _string(data: dict[str, Any], key: str, file: Path, prefix: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise ConfigError(
            f"key {prefix}{key} in {file} must be a string, not {type(value).__name__}; "
            "put the value in double quotes"
        )
    return value


def _check_keys(data: dict[str, Any], allowed: set[str], file: Path, prefix: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(
            f"unknown key {prefix}{unknown[0]} in {file}; "
            f"known keys here: {', '.join(sorted(allowed))}"
        )
