"""Every table of a database: its row count, its indexes, and the namespace that created it.

Use `list_tables()` to show or walk the tables of a database (``shareddb status``), and
`table_namespaces()` alone to learn which migration namespace created which table
without touching a database. Read-only: nothing here writes.

Which namespace created a table is read from the migration files, not the database
(which keeps no such record): each namespace's files are split into statements with
the runner's splitter and scanned, in the order the runner applies them, for
``CREATE TABLE``, ``DROP TABLE`` and ``ALTER TABLE … RENAME TO``. A table no file
creates (made by hand, by another tool, or by ``VectorStorage(db, table=…)`` at run
time) has namespace None: unknown.

PostgreSQL lists the tables of the connection's ``current_schema()`` (the first schema
of its ``search_path`` that exists); SQLite those of the main database.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Final

from psycopg import sql

from shareddb._core.types import EngineKind, PgConnection
from shareddb._engines.base import Engine
from shareddb._engines.sqlite.engine import quote_identifier
from shareddb._migrations.created_tables import name_key, walk_tables
from shareddb._migrations.files import SHAREDDB_NAMESPACE, MigrationFile

# Above this many rows by the planner's estimate (pg_class.reltuples, kept by ANALYZE and
# autovacuum), PostgreSQL's count is that estimate: an exact count(*) reads the whole table.
ESTIMATE_ABOVE: Final = 1_000_000

# Tables shareddb creates outside migration files (the runner's ledger).
_BUILTIN_TABLES: Final = ("schema_migrations",)


@dataclass(frozen=True)
class IndexSummary:
    """One index of a table, as the catalog describes it.

    `columns` are the key columns in order (an expression's text where the key is
    one on PostgreSQL; ``<expression>`` on SQLite, whose catalog doesn't say);
    `method` is the access method on PostgreSQL (``btree``, ``hnsw``, ``gin``, …) and
    None on SQLite; `definition` the ``CREATE INDEX`` statement, or None for an index
    SQLite made for a constraint.
    """

    name: str
    columns: tuple[str, ...]
    unique: bool
    primary: bool
    partial: bool
    method: str | None
    definition: str | None


@dataclass(frozen=True)
class TableInfo:
    """One table: its row count, its indexes, and the namespace whose migrations created it.

    `rows` is exact unless `rows_estimated` (PostgreSQL tables estimated above
    `ESTIMATE_ABOVE` rows), and None when it can't be counted (a SQLite virtual table
    whose module is not loaded). `namespace` is None when no migration file creates it.
    """

    name: str
    namespace: str | None
    rows: int | None
    rows_estimated: bool
    indexes: tuple[IndexSummary, ...]


def list_tables(
    engine: Engine[Any], files: Sequence[MigrationFile], *, conn: Any = None
) -> list[TableInfo]:
    """Every table of the database, by name, with its rows, indexes and namespace.

    :param files: the migration files of every namespace in use, in the order they
        are applied (``discover_all(migration_folders(kind, schema_dirs))``): they say
        which namespace created which table.
    :param conn: a connection of `engine` to read through (for example inside
        ``engine.reading()``); by default one is taken for the call.
    """
    with nullcontext(conn) if conn is not None else engine.reading() as c:
        if engine.kind == "postgres":
            return _postgres_tables(c, files)
        return _sqlite_tables(c, files)


def table_namespaces(
    files: Iterable[MigrationFile], kind: EngineKind, *, schema: str | None = None
) -> dict[str, str]:
    """``{table: namespace}`` for the tables the migration files leave behind.

    Keys are table names as the catalog spells them on PostgreSQL (unquoted names
    folded to lower case) and lower-cased on SQLite, whose names ignore case; look
    names up with `name_key()`. On PostgreSQL a name qualified with a schema other
    than `schema` (the one listed) is not counted; on SQLite one qualified with a
    schema other than ``main`` is not.
    """
    local = {"main"} if kind == "sqlite" else ({schema} if schema else set())
    owners: dict[str, str] = {}
    for table in walk_tables(files, kind):
        qualifier = table.schema
        if qualifier is None or name_key(qualifier, kind) in local:
            owners.setdefault(name_key(table.name, kind), table.namespace)
    for name in _BUILTIN_TABLES:
        owners.setdefault(name_key(name, kind), SHAREDDB_NAMESPACE)
    return owners


# -- PostgreSQL -----------------------------------------------------------------------------

_PG_TABLES: Final = """\
SELECT c.oid, c.relname, c.reltuples::float8, n.nspname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND NOT c.relispartition
ORDER BY c.relname"""

_PG_INDEXES: Final = """\
SELECT ix.indrelid, i.relname, ix.indisunique, ix.indisprimary, ix.indpred IS NOT NULL,
       am.amname, pg_get_indexdef(ix.indexrelid),
       ARRAY(SELECT pg_get_indexdef(ix.indexrelid, k, true)
             FROM generate_series(1, ix.indnkeyatts) AS k ORDER BY k)
FROM pg_index ix
JOIN pg_class i ON i.oid = ix.indexrelid
JOIN pg_am am ON am.oid = i.relam
WHERE ix.indrelid = ANY(%s)
ORDER BY i.relname"""


def _postgres_tables(conn: PgConnection, files: Sequence[MigrationFile]) -> list[TableInfo]:
    tables = conn.execute(_PG_TABLES).fetchall()
    if not tables:
        return []
    schema = str(tables[0][3])
    owners = table_namespaces(files, "postgres", schema=schema)
    indexes: dict[int, list[IndexSummary]] = {}
    for relid, name, unique, primary, partial, method, definition, columns in conn.execute(
        _PG_INDEXES, ([t[0] for t in tables],)
    ):
        indexes.setdefault(relid, []).append(
            IndexSummary(
                name=name,
                columns=tuple(columns),
                unique=bool(unique),
                primary=bool(primary),
                partial=bool(partial),
                method=str(method),
                definition=str(definition),
            )
        )
    result = []
    for relid, name, reltuples, _ in tables:
        estimated = reltuples is not None and reltuples >= ESTIMATE_ABOVE
        if estimated:
            rows = int(reltuples)
        else:
            query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))
            row = conn.execute(query).fetchone()
            rows = int(row[0]) if row is not None else 0
        result.append(
            TableInfo(
                name=name,
                namespace=owners.get(name_key(name, "postgres")),
                rows=rows,
                rows_estimated=estimated,
                indexes=tuple(indexes.get(relid, ())),
            )
        )
    return result


# -- SQLite ---------------------------------------------------------------------------------

_SQLITE_TABLES: Final = (
    "SELECT name FROM sqlite_master WHERE type = 'table' "
    "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
)
_SQLITE_INDEXES: Final = (
    'SELECT l.name, l."unique", l.origin, l.partial, m.sql '
    "FROM pragma_index_list(?) AS l LEFT JOIN sqlite_master AS m "
    "ON m.type = 'index' AND m.name = l.name ORDER BY l.name"
)
_SQLITE_INDEX_COLUMNS: Final = (
    "SELECT cid, name FROM pragma_index_xinfo(?) WHERE key = 1 ORDER BY seqno"
)


def _sqlite_tables(conn: sqlite3.Connection, files: Sequence[MigrationFile]) -> list[TableInfo]:
    owners = table_namespaces(files, "sqlite")
    result = []
    for (name,) in conn.execute(_SQLITE_TABLES).fetchall():
        try:
            row = conn.execute("SELECT count(*) FROM " + quote_identifier(name)).fetchone()
            rows: int | None = int(row[0])
        except sqlite3.OperationalError:  # a virtual table whose module is not loaded
            rows = None
        result.append(
            TableInfo(
                name=name,
                namespace=owners.get(name_key(name, "sqlite")),
                rows=rows,
                rows_estimated=False,
                indexes=tuple(_sqlite_indexes(conn, name)),
            )
        )
    return result


def _sqlite_indexes(conn: sqlite3.Connection, table: str) -> list[IndexSummary]:
    found = []
    for name, unique, origin, partial, definition in conn.execute(
        _SQLITE_INDEXES, (table,)
    ).fetchall():
        columns = tuple(
            # cid -1 is the rowid, -2 an expression (whose text only the definition has).
            str(col) if col is not None else ("rowid" if cid == -1 else "<expression>")
            for cid, col in conn.execute(_SQLITE_INDEX_COLUMNS, (name,))
        )
        found.append(
            IndexSummary(
                name=name,
                columns=columns,
                unique=bool(unique),
                primary=origin == "pk",
                partial=bool(partial),
                method=None,
                definition=definition,
            )
        )
    return found
