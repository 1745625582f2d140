"""What ``shareddb copy`` asks each engine about an application's table, and its SQL.

`catalog(kind)` gives one engine's `Catalog`: it finds a table by name, reads its
columns (name, declared type, generated or not) and primary key from the engine's
own catalog (``pg_attribute`` / ``format_type`` on PostgreSQL, ``pragma_table_xinfo``
on SQLite), and builds statements whose identifiers are always quoted
(`psycopg.sql.Identifier`; `quote_identifier` on SQLite) and whose values are
always parameters. Statements are written once, with ``%s`` placeholders and ``{}``
for quoted parts, and composed by `Catalog.sql()`.

A column's `Kind` comes from its type: PostgreSQL's type name, or on SQLite its
declared type: the names db.query decodes (``JSON``, ``BOOLEAN``, ``TIMESTAMPTZ`` /
``TIMESTAMP`` / ``DATETIME``, ``DATE``, ``NUMERIC``, ``VECTOR`` / ``F32_BLOB`` with an
optional ``(dimension)`` …: `shareddb._sql.values.SQLITE_TYPES`, the one table of
them), else as SQLite reads affinity (a name containing ``INT`` is an integer …).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, LiteralString

from psycopg import sql

from shareddb._admin.copy_values import Kind
from shareddb._core.types import EngineKind
from shareddb._engines.sqlite.engine import quote_identifier
from shareddb._sql.values import sqlite_type

# A statement or a part of one: psycopg's `sql.Composable` on PostgreSQL, text on SQLite.
Part = Any


@dataclass(frozen=True)
class ColumnInfo:
    """One column of a table, as its engine's catalog describes it."""

    name: str
    kind: Kind
    declared: str  # the type as the catalog shows it (``vector(3)``, ``TIMESTAMP``)
    dimension: int | None  # of a vector column, when the type says
    generated: bool  # computed by the database: never written
    identity_always: bool  # PostgreSQL's GENERATED ALWAYS AS IDENTITY
    key_position: int  # 1-based position in the primary key; 0 when not in it


@dataclass(frozen=True)
class TableInfo:
    """One table: its name as stored, and its columns in table order."""

    name: str
    columns: tuple[ColumnInfo, ...]

    @property
    def primary_key(self) -> tuple[str, ...]:
        keyed = sorted((c.key_position, c.name) for c in self.columns if c.key_position)
        return tuple(name for _, name in keyed)

    def column(self, name: str) -> ColumnInfo:
        return next(c for c in self.columns if c.name == name)


class Catalog(ABC):
    """One engine's catalog queries and statement composition."""

    kind: EngineKind

    @abstractmethod
    def find_table(self, conn: Any, name: str) -> str | None:
        """The stored name of the table `name` names (exactly, else the one that differs only
        in case), or None when there is none."""

    @abstractmethod
    def table(self, conn: Any, name: str) -> TableInfo:
        """The columns of the table stored as `name` (see `find_table`)."""

    @abstractmethod
    def ident(self, name: str) -> Part:
        """`name` as a quoted identifier."""

    @abstractmethod
    def sql(self, template: LiteralString, *parts: Part) -> Part:
        """`template` with its ``{}`` replaced by `parts` and ``%s`` as this engine's mark."""

    @abstractmethod
    def join(self, parts: Sequence[Part], separator: LiteralString = ", ") -> Part: ...

    def idents(self, names: Sequence[str]) -> Part:
        return self.join([self.ident(n) for n in names])

    def reads(self, table: TableInfo, names: Sequence[str]) -> Part:
        """The select list reading `names` of `table`: JSON columns as their text.

        On PostgreSQL psycopg would decode a jsonb ``null`` to None, the same as SQL's
        NULL; read as text the two stay apart (`copy_values.Column` parses the text).
        """
        return self.join(
            [
                self.sql("{}::text", self.ident(n))
                if self.kind == "postgres" and table.column(n).kind == "json"
                else self.ident(n)
                for n in names
            ]
        )

    def marks(self, n: int) -> Part:
        return self.join([self.sql("%s")] * n)

    @abstractmethod
    def rows_in(self, rows: int, width: int) -> Part:
        """The right side of ``(key columns) IN …`` for `rows` keys of `width` columns."""

    @abstractmethod
    def resync_sequences(self, conn: Any, table: TableInfo) -> None:
        """After explicit values went into generated keys: move their sequences past them."""


class PostgresCatalog(Catalog):
    kind: EngineKind = "postgres"

    _FIND: Final = (
        "SELECT c.relname FROM pg_class c WHERE c.oid = to_regclass(quote_ident(%s)) "
        "AND c.relkind IN ('r', 'p')"
    )
    _FIND_ANY_CASE: Final = (
        "SELECT c.relname FROM pg_class c WHERE lower(c.relname) = lower(%s) "
        "AND c.relkind IN ('r', 'p') AND pg_table_is_visible(c.oid)"
    )
    _COLUMNS: Final = (
        "SELECT a.attname, t.typname, format_type(a.atttypid, a.atttypmod), a.atttypmod, "
        "a.attgenerated <> '', a.attidentity = 'a', "
        # indkey is 0-based: number the key's columns from 1 ourselves.
        "coalesce((SELECT k.n FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n) "
        "WHERE k.attnum = a.attnum), 0) "
        "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
        "LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary "
        "WHERE a.attrelid = to_regclass(quote_ident(%s)) AND a.attnum > 0 "
        "AND NOT a.attisdropped ORDER BY a.attnum"
    )

    def find_table(self, conn: Any, name: str) -> str | None:
        row = conn.execute(self._FIND, (name,)).fetchone()
        if row is not None:
            return str(row[0])
        rows = conn.execute(self._FIND_ANY_CASE, (name,)).fetchall()
        return str(rows[0][0]) if len(rows) == 1 else None

    def table(self, conn: Any, name: str) -> TableInfo:
        rows = conn.execute(self._COLUMNS, (name,)).fetchall()
        columns = tuple(
            ColumnInfo(
                name=str(attname),
                kind=_PG_KINDS.get(str(typname), "other"),
                declared=str(declared),
                dimension=int(typmod) if typname == "vector" and typmod > 0 else None,
                generated=bool(generated),
                identity_always=bool(identity),
                key_position=int(position),
            )
            for attname, typname, declared, typmod, generated, identity, position in rows
        )
        return TableInfo(name, columns)

    def ident(self, name: str) -> Part:
        # psycopg reads a % in the composed query as a placeholder: double it.
        return sql.Identifier(name.replace("%", "%%"))

    def sql(self, template: LiteralString, *parts: Part) -> Part:
        return sql.SQL(template).format(*parts)

    def join(self, parts: Sequence[Part], separator: LiteralString = ", ") -> Part:
        return sql.SQL(separator).join(parts)

    def rows_in(self, rows: int, width: int) -> Part:
        # A row list, not VALUES: each parameter then takes its column's type (uuid, …).
        one = self.marks(1) if width == 1 else self.sql("({})", self.marks(width))
        return self.sql("({})", self.join([one] * rows))

    def resync_sequences(self, conn: Any, table: TableInfo) -> None:
        for column in table.columns:
            if column.kind != "int":
                continue
            conn.execute(
                self.sql(
                    "SELECT setval(s.seq::regclass, s.top) FROM (SELECT "
                    "pg_get_serial_sequence(quote_ident(%s), %s) AS seq, "
                    "(SELECT max({}) FROM {}) AS top) s WHERE s.seq IS NOT NULL "
                    "AND s.top > coalesce(pg_sequence_last_value(s.seq::regclass), 0)",
                    self.ident(column.name),
                    self.ident(table.name),
                ),
                (table.name, column.name),
            )


_PG_KINDS: Final[dict[str, Kind]] = {
    "json": "json",
    "jsonb": "json",
    "timestamptz": "timestamptz",
    "timestamp": "timestamp",
    "date": "date",
    "bytea": "bytes",
    "vector": "vector",
    "bool": "bool",
    "int2": "int",
    "int4": "int",
    "int8": "int",
    "float8": "real",
    "float4": "real4",
    "numeric": "numeric",
    "text": "text",
    "varchar": "text",
    "bpchar": "text",
    "name": "text",
    "citext": "text",
}


class SqliteCatalog(Catalog):
    kind: EngineKind = "sqlite"

    def find_table(self, conn: Any, name: str) -> str | None:
        row = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ? COLLATE NOCASE",
            (name,),
        ).fetchone()
        return None if row is None else str(row[0])

    def table(self, conn: Any, name: str) -> TableInfo:
        rows = conn.execute(
            "SELECT name, type, pk, hidden FROM pragma_table_xinfo(?) ORDER BY cid", (name,)
        ).fetchall()
        columns = tuple(
            ColumnInfo(
                name=str(column),
                kind=sqlite_kind(str(declared)),
                declared=str(declared),
                dimension=_dimension(str(declared)),
                generated=int(hidden) in (2, 3),
                identity_always=False,
                key_position=int(pk),
            )
            for column, declared, pk, hidden in rows
            if int(hidden) != 1  # a virtual table's hidden column
        )
        return TableInfo(name, columns)

    def ident(self, name: str) -> Part:
        return quote_identifier(name)

    def resync_sequences(self, conn: Any, table: TableInfo) -> None:
        """Nothing to do: a rowid key continues after the largest one, and AUTOINCREMENT's
        counter (sqlite_sequence) follows explicitly inserted keys by itself."""

    def sql(self, template: LiteralString, *parts: Part) -> Part:
        # Marks first: a quoted part may itself hold "%s".
        return template.replace("%s", "?").format(*parts)

    def join(self, parts: Sequence[Part], separator: LiteralString = ", ") -> Part:
        return separator.join(parts)

    def rows_in(self, rows: int, width: int) -> Part:
        if width == 1:
            return self.sql("({})", self.marks(rows))
        one = self.sql("({})", self.marks(width))
        return self.sql("(VALUES {})", self.join([one] * rows))


def sqlite_kind(declared: str) -> Kind:
    """A SQLite column's kind from its declared type: the names db.query reads
    (`shareddb._sql.values.SQLITE_TYPES`, one table for both), else SQLite's affinity."""
    named = sqlite_type(declared)
    if named is not None:
        return named
    t = declared.upper()
    for needles, kind in _AFFINITY:
        if any(n in t for n in needles):
            return kind
    return "other"


# SQLite's affinity rules (https://sqlite.org/datatype3.html, 3.1), in its order.
_AFFINITY: Final[tuple[tuple[tuple[str, ...], Kind], ...]] = (
    (("INT",), "int"),
    (("CHAR", "CLOB", "TEXT"), "text"),
    (("BLOB",), "bytes"),
    (("REAL", "FLOA", "DOUB"), "real"),
)
_DIMENSION = re.compile(r"\(\s*(\d+)\s*\)")


def _dimension(declared: str) -> int | None:
    match = _DIMENSION.search(declared)
    if match is None or sqlite_kind(declared) != "vector":
        return None
    return int(match.group(1))


def catalog(kind: EngineKind) -> Catalog:
    return PostgresCatalog() if kind == "postgres" else SqliteCatalog()
