"""``shareddb status``: versions, migrations, row counts and vector indexes."""

from __future__ import annotations

import argparse
import sqlite3
from typing import Any

from shareddb._admin.doctor import EMBEDDINGS_TABLE, format_bytes, not_created
from shareddb._core.service import DbService
from shareddb._core.types import PgConnection
from shareddb._core.url import parse_url
from shareddb._engines.postgres.pgvector import PGVECTOR_VERSIONS
from shareddb._migrations.files import discover_all, migration_folders
from shareddb._migrations.ledger import status
from shareddb.cli.common import (
    EXIT_OK,
    EXIT_PROBLEM,
    emit_json,
    schema_dirs,
    service,
    target_url,
)
from shareddb.vectors import IndexInfo, VectorStorage

SESSIONS_TABLE = "sessions"

_CHECKSUM = {
    "applied": "checksum ok",
    "changed": "CHANGED since applied (checksum differs)",
    "missing": "MISSING file",
    "out of order": "OUT OF ORDER (numbered below an applied file)",
    "pending": "",
}


HELP = "versions, migrations, row counts and vector indexes"


def run(args: argparse.Namespace) -> int:
    url, _ = target_url(args)
    target = parse_url(url)
    info: dict[str, Any] = {"backend": target.engine, "target": target.masked}
    if target.embedded_dir is not None:
        info["embedded_data_dir"] = str(target.embedded_dir)
    if not_created(target):
        # Don't create the file (or run initdb) just to say it is empty.
        files = discover_all(migration_folders(target.engine, schema_dirs(args)))
        info.update(
            exists=False,
            server=f"SQLite {sqlite3.sqlite_version}"
            if target.engine == "sqlite"
            else "embedded PostgreSQL (not created yet)",
            pgvector=None,
            migrations=status(files, []),
            rows={},
            indexes=[],
        )
    else:
        with service(args, url) as db:
            info.update(_status_info(db))
    problems = [m for m in info["migrations"] if m.state in ("changed", "missing", "out of order")]
    if args.json:
        emit_json(info)
    else:
        _print_status(info)
    return EXIT_PROBLEM if problems else EXIT_OK


def _status_info(db: DbService) -> dict[str, Any]:
    info: dict[str, Any] = {"exists": True}
    engine = db.engine
    with engine.reading() as conn:
        info["server"] = engine.server_version(conn)
        info.update(_pgvector(conn) if engine.kind == "postgres" else {"pgvector": None})
        info["rows"] = _row_counts(db, conn)
    info["migrations"] = db.migration_status()
    has_table = info["rows"].get(EMBEDDINGS_TABLE) is not None
    # Empty on SQLite, which has no vector indexes: its search is exact.
    info["indexes"] = VectorStorage(db).indexes() if has_table else []
    return info


def _pgvector(conn: PgConnection) -> dict[str, Any]:
    """pgvector's version in this database, and the server's default (None: not there)."""
    row = conn.execute(PGVECTOR_VERSIONS).fetchone()
    available, installed = row if row is not None else (None, None)
    return {"pgvector": installed, "pgvector_available": available}


def _row_counts(db: DbService, conn: Any) -> dict[str, Any]:
    """``{"sessions": n, "task_embeddings": {"total": n, "by_dimension": {d: n}}}``.

    A table that does not exist yet (pending migrations) maps to None.
    """
    rows: dict[str, Any] = {SESSIONS_TABLE: None, EMBEDDINGS_TABLE: None}
    if db.engine.table_exists(conn, SESSIONS_TABLE):
        rows[SESSIONS_TABLE] = int(conn.execute("SELECT count(*) FROM sessions").fetchone()[0])
    if db.engine.table_exists(conn, EMBEDDINGS_TABLE):
        by_dim = {
            int(d): int(n)
            for d, n in conn.execute(
                "SELECT dimension, count(*) FROM task_embeddings GROUP BY dimension "
                "ORDER BY dimension"
            )
        }
        rows[EMBEDDINGS_TABLE] = {"total": sum(by_dim.values()), "by_dimension": by_dim}
    return rows


def _print_status(info: dict[str, Any]) -> None:
    print(f"backend     {info['backend']}")
    print(f"target      {info['target']}")
    if "embedded_data_dir" in info:
        print(f"data folder {info['embedded_data_dir']}")
    if not info.get("exists", True):
        print("database    does not exist yet; run: shareddb init")
    print(f"server      {info['server']}")
    print(f"pgvector    {_pgvector_line(info)}")
    print("migrations")
    for m in info["migrations"]:
        when = f"  {m.applied_at:%Y-%m-%d %H:%M:%S}" if m.applied_at else ""
        state = "applied" if m.applied else "pending"
        line = f"  {m.namespace + '/' + m.name:<36} {state:<8}{when}  {_CHECKSUM[m.state]}"
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


def _pgvector_line(info: dict[str, Any]) -> str:
    if info["backend"] != "postgres":
        return "n/a (SQLite: exact search with numpy)"
    if not info.get("exists", True):
        return "bundled with the embedded server; `shareddb init` creates it"
    if info.get("pgvector"):
        return str(info["pgvector"])
    if info.get("pgvector_available"):
        available = info["pgvector_available"]
        return f"not created in this database ({available} available); run: shareddb init"
    return "not installed on the server; run: shareddb doctor"


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
