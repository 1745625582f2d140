"""``shareddb status``: versions, migrations, every table with its rows and indexes."""

from __future__ import annotations

import argparse
import sqlite3
from typing import Any

from shareddb._admin.doctor import EMBEDDINGS_TABLE, not_created
from shareddb._admin.tables import IndexSummary, TableInfo, list_tables
from shareddb._core.service import DbService
from shareddb._core.types import PgConnection
from shareddb._core.url import parse_url
from shareddb._engines.postgres.pgvector import PGVECTOR_VERSIONS
from shareddb._engines.postgres.replica_routing import ReplicaHealth
from shareddb._engines.postgres.standby import describe_lag, standby_state
from shareddb._migrations.files import MigrationFile, discover_all, migration_folders
from shareddb._migrations.ledger import status
from shareddb.cli.common import (
    EXIT_OK,
    EXIT_PROBLEM,
    describe_index,
    emit_json,
    schema_dirs,
    service,
    target_url,
)
from shareddb.vectors import VectorStorage

SESSIONS_TABLE = "sessions"

_CHECKSUM = {
    "applied": "checksum ok",
    "changed": "CHANGED since applied (checksum differs)",
    "missing": "MISSING file",
    "out of order": "OUT OF ORDER (numbered below an applied file)",
    "pending": "",
}


HELP = "versions, migrations, every table with its rows and indexes, vector indexes"


def run(args: argparse.Namespace) -> int:
    url, config = target_url(args)
    target = parse_url(url)
    namespaces = schema_dirs(args, config)
    info: dict[str, Any] = {
        "backend": target.engine,
        "target": target.masked,
        "schema_dirs": {ns: str(folder) for ns, folder in namespaces.items()},
    }
    if target.embedded_dir is not None:
        info["embedded_data_dir"] = str(target.embedded_dir)
    files = discover_all(migration_folders(target.engine, namespaces))
    if not_created(target):
        # Don't create the file (or run initdb) just to say it is empty.
        info.update(
            exists=False,
            server=f"SQLite {sqlite3.sqlite_version}"
            if target.engine == "sqlite"
            else "embedded PostgreSQL (not created yet)",
            pgvector=None,
            migrations=status(files, []),
            rows={},
            tables=[],
            indexes=[],
        )
    else:
        with service(args, url, config) as db:
            info.update(_status_info(db, files))
    problems = [m for m in info["migrations"] if m.state in ("changed", "missing", "out of order")]
    if args.json:
        emit_json(info)
    else:
        _print_status(info)
    return EXIT_PROBLEM if problems else EXIT_OK


def _status_info(db: DbService, files: list[MigrationFile]) -> dict[str, Any]:
    info: dict[str, Any] = {"exists": True}
    engine = db.engine
    with engine.reading() as conn:
        info["server"] = engine.server_version(conn)
        info.update(_pgvector(conn) if engine.kind == "postgres" else {"pgvector": None})
        if engine.kind == "postgres":
            info["role"] = standby_state(conn).describe()
        info["rows"] = _row_counts(db, conn)
        info["tables"] = list_tables(engine, files, conn=conn)
    info["migrations"] = db.migration_status()
    info["replicas"] = [_replica(health) for health in engine.replica_health()]
    has_table = info["rows"].get(EMBEDDINGS_TABLE) is not None
    # Empty on SQLite, which has no vector indexes: its search is exact.
    info["indexes"] = VectorStorage(db).indexes() if has_table else []
    return info


def _replica(health: ReplicaHealth) -> dict[str, Any]:
    return {
        "replica": health.name,
        "state": health.state,
        "lag_ms": None if health.lag_seconds is None else round(health.lag_seconds * 1000, 1),
        "reason": health.reason,
    }


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
    if "role" in info:
        print(f"role        {info['role']}")
    for replica in info.get("replicas", []):
        print(f"replica     {replica['replica']}  {_describe_replica(replica)}")
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
        print("  " + describe_index(index))
    standby = str(info.get("role", "")).startswith("standby")
    _print_tables(info["tables"], exists=info.get("exists", True), standby=standby)


def _print_tables(tables: list[TableInfo], *, exists: bool, standby: bool = False) -> None:
    """Every table of the database: rows, the namespace that created it, one line per index."""
    print("tables")
    if not tables:
        init = "shareddb init against the primary" if standby else "shareddb init"
        print(f"  none yet; run: {init}" if exists else "  none")
    width = max([len(t.name) for t in tables] + [16])
    for table in tables:
        rows = "?" if table.rows is None else f"{table.rows:,}"
        rows = f"~{rows}" if table.rows_estimated else rows
        unit = "row " if table.rows == 1 and not table.rows_estimated else "rows"
        namespace = table.namespace or "unknown namespace"
        print(f"  {table.name:<{width}} {rows:>12} {unit}  {namespace}")
        for index in table.indexes:
            print(f"      {_describe_table_index(index)}")


def _describe_table_index(index: IndexSummary) -> str:
    """``sessions_pkey  btree (session)  primary key`` (method shown on PostgreSQL only)."""
    method = f"{index.method} " if index.method else ""
    flags = ["primary key" if index.primary else "unique" if index.unique else ""]
    flags.append("partial" if index.partial else "")
    text = f"{index.name}  {method}({', '.join(index.columns)})  " + " ".join(filter(None, flags))
    return text.rstrip()


def _describe_replica(replica: dict[str, Any]) -> str:
    """``healthy, replay lag 3 ms`` or ``down (why)``."""
    lag = replica["lag_ms"]
    text = str(replica["state"])
    if replica["state"] in ("healthy", "lagging") and lag is not None:
        text += f", replay lag {describe_lag(lag / 1000)}"
    if replica["reason"]:
        text += f" ({replica['reason']})"
    return text


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
