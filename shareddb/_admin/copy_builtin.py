"""The layouts of shareddb's own tables as ``shareddb copy`` moves them.

`TABLES` maps ``sessions`` and ``task_embeddings`` to a `CopiedTable`: the columns
copied (key first, ``created_at`` and ``updated_at`` last), the order pages are read
in, what a source from before a column's migration holds instead of it, and the
statements, written with ``%s`` placeholders for `Dialect.sql()`. These names are
fixed and shareddb's own, so they are written into the SQL as they are; application
tables, whose names come from a database, go through `copy_catalog` and are quoted.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Final, LiteralString

from shareddb._engines.base import Dialect

SESSIONS: Final = "sessions"
EMBEDDINGS: Final = "task_embeddings"


@dataclass(frozen=True)
class CopiedTable:
    """One table's copied columns and statements, with ``%s`` placeholders."""

    name: LiteralString
    # Key first, created_at and updated_at last.
    columns: tuple[LiteralString, ...]
    cursor: LiteralString  # unique, indexed: the order pages are read in
    # Columns later migrations added, and what an older layout's rows hold instead.
    added: Mapping[str, LiteralString]
    insert: Callable[[Dialect], LiteralString]  # a new row, in the dialect's form

    @property
    def width(self) -> int:
        return len(self.columns)

    @property
    def count(self) -> LiteralString:
        return "SELECT count(*) FROM " + self.name

    def select(self, present: Collection[str]) -> LiteralString:
        """``SELECT`` of the copied columns; a column not `present` reads as its default."""
        values = [c if c in present or c not in self.added else self.added[c] for c in self.columns]
        return "SELECT " + ", ".join(values)

    def select_first(self, present: Collection[str]) -> LiteralString:
        """The first page, in cursor order; the cursor's columns follow the copied ones."""
        return self.select(present) + ", " + self.cursor + " FROM " + self.name + self._order

    def select_page(self, present: Collection[str]) -> LiteralString:
        """The page after a cursor (its values first, then the page size)."""
        after = ", ".join(["%s"] * (self.cursor.count(",") + 1))
        where = " WHERE (" + self.cursor + ") > (" + after + ")"
        return (
            self.select(present) + ", " + self.cursor + " FROM " + self.name + where + self._order
        )

    def select_existing(self, present: Collection[str]) -> LiteralString:
        """The rows whose key is in a list (``{in_keys}``, see `Dialect.keys`)."""
        return self.select(present) + " FROM " + self.name + " WHERE " + self.key + " {in_keys}"

    @property
    def update(self) -> LiteralString:
        """One row by key: the other columns' values, then the key."""
        assignments = ", ".join(c + " = %s" for c in self.columns[1:])
        return "UPDATE " + self.name + " SET " + assignments + " WHERE " + self.key + " = %s"

    @property
    def key(self) -> LiteralString:
        return self.columns[0]

    @property
    def _order(self) -> LiteralString:
        return " ORDER BY " + self.cursor + " LIMIT %s"


EMBEDDING_COLUMNS: Final[tuple[LiteralString, ...]] = (
    "qualified_task_id",
    "backend",
    "dimension",
    "embedding",
    "metadata",
    "content_hash",
    "model",
    "created_at",
    "updated_at",
)
DIMENSION, EMBEDDING, METADATA = 2, 3, 4  # positions in EMBEDDING_COLUMNS

TABLES: Final = {
    # seq is each engine's insertion order: reading in (created_at, seq) order and
    # inserting with the sessions domain's own statement (which numbers seq on SQLite)
    # keeps sessions of one microsecond in their order.
    SESSIONS: CopiedTable(
        name=SESSIONS,
        columns=(
            "session",
            "repo_name",
            "repo_url",
            "branch",
            "task_id",
            "created_at",
            "updated_at",
        ),
        cursor="created_at, seq",
        added={},
        insert=lambda dialect: dialect.session_insert,
    ),
    EMBEDDINGS: CopiedTable(
        name=EMBEDDINGS,
        columns=EMBEDDING_COLUMNS,
        cursor="qualified_task_id",
        # Migration 0003 added these; the rows it found got '{}', NULL and NULL.
        added={"metadata": "'{}'", "content_hash": "NULL", "model": "NULL"},
        insert=lambda dialect: dialect.sql(
            "INSERT INTO task_embeddings ("
            + ", ".join(EMBEDDING_COLUMNS)
            + ") VALUES ("
            + ", ".join(["%s"] * len(EMBEDDING_COLUMNS))
            + ") ON CONFLICT (qualified_task_id) DO NOTHING"
        ),
    ),
}
