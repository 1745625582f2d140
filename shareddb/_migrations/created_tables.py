"""Which tables migration files leave behind, read from their SQL.

The files are read in the order they are applied, and every ``CREATE TABLE`` adds a
table, ``DROP TABLE`` removes it and ``ALTER TABLE … RENAME TO`` renames it; a
``CREATE TABLE IF NOT EXISTS`` of a table an earlier file made leaves it that file's.
What the SQL does not say plainly is not seen: tables created inside a function or
``DO`` block; ``CREATE TEMP`` and ``FOREIGN`` tables are left out on purpose.
``shareddb copy`` finds an application's tables with `created_tables` (name others with
``--table``); ``shareddb status`` tells which namespace created a table with
`walk_tables`.

Names come back as the database stores them: a quoted name as written, an unquoted
one folded to lower case on PostgreSQL and kept as written on SQLite (whose names
are case-insensitive; compare them with `same_table`). A table is matched by its
name alone: a schema qualifier is kept in `CreatedTable.schema` for the caller to
judge.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple

from shareddb._core.types import EngineKind
from shareddb._migrations.files import MigrationFile, split_statements
from shareddb._migrations.sqlsplit import code_start

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_QUOTES = {'"': '"', "`": "`", "[": "]"}  # SQLite also takes `name` and [name]
_SKIPPED = {"TEMP", "TEMPORARY", "FOREIGN"}


class CreatedTable(NamedTuple):
    """A table the files leave in place, and the namespace whose file created it."""

    name: str
    namespace: str
    schema: str | None  # the qualifier it was created with (as stored), if any
    virtual: bool  # SQLite's CREATE VIRTUAL TABLE


def walk_tables(files: Iterable[MigrationFile], kind: EngineKind) -> list[CreatedTable]:
    """The tables `files` (in the order applied) create and leave in place, in that order."""
    tables: list[CreatedTable] = []
    for migration in files:
        for statement in split_statements(migration, kind):
            _apply(statement.text, kind, migration.namespace, tables)
    return tables


def created_tables(files: Iterable[MigrationFile], kind: EngineKind) -> list[str]:
    """The names of the ordinary tables `files` create and leave in place, in order."""
    return [table.name for table in walk_tables(files, kind) if not table.virtual]


def name_key(name: str, kind: EngineKind) -> str:
    """A stored table name as `kind` compares it: the one place names are folded.

    SQLite's names ignore case; PostgreSQL's stored (already folded or quoted) ones
    don't. Use it to key tables by name; `same_table` to compare two names.
    """
    return name.lower() if kind == "sqlite" else name


def same_table(a: str, b: str, kind: EngineKind) -> bool:
    """Whether two stored names name one table on `kind` (SQLite ignores case)."""
    return name_key(a, kind) == name_key(b, kind)


def _apply(text: str, kind: EngineKind, namespace: str, tables: list[CreatedTable]) -> None:
    tokens = _Tokens(text, kind)
    first = tokens.word()
    if first == "CREATE":
        virtual = False
        while (word := tokens.word()) in {"GLOBAL", "LOCAL", "UNLOGGED", "VIRTUAL", *_SKIPPED}:
            if word in _SKIPPED:
                return
            virtual = virtual or word == "VIRTUAL"
        if word != "TABLE":
            return
        tokens.words("IF", "NOT", "EXISTS")
        schema, name = tokens.qualified()
        if name is not None and not any(same_table(t.name, name, kind) for t in tables):
            tables.append(CreatedTable(name, namespace, schema, virtual))
    elif first == "DROP" and tokens.word() == "TABLE":
        tokens.words("IF", "EXISTS")
        while (name := tokens.qualified()[1]) is not None:
            tables[:] = [t for t in tables if not same_table(t.name, name, kind)]
            if not tokens.punct(","):
                return
    elif first == "ALTER" and tokens.word() == "TABLE":
        tokens.words("IF", "EXISTS")
        tokens.words("ONLY")
        old = tokens.qualified()[1]
        if old is None or tokens.word() != "RENAME" or tokens.word() != "TO":
            return
        new = tokens.qualified()[1]
        if new is not None:
            tables[:] = [
                t._replace(name=new) if same_table(t.name, old, kind) else t for t in tables
            ]


class _Tokens:
    """The leading tokens of one statement: words (upper-cased), names, punctuation."""

    def __init__(self, text: str, kind: EngineKind) -> None:
        self.text = text
        self.kind = kind
        self.i = 0

    def _skip(self) -> int | None:
        start = code_start(self.text, self.i)
        if start is not None:
            self.i = start
        return start

    def word(self) -> str | None:
        """The next bare word in upper case (consumed), or None if the next is not one."""
        if self._skip() is None:
            return None
        match = _WORD.match(self.text, self.i)
        if match is None:
            return None
        self.i = match.end()
        return match.group(0).upper()

    def words(self, *expected: str) -> bool:
        """Consume `expected` if the next words are exactly those."""
        start = self.i
        if all(self.word() == w for w in expected):
            return True
        self.i = start
        return False

    def punct(self, char: str) -> bool:
        if self._skip() is not None and self.text.startswith(char, self.i):
            self.i += 1
            return True
        return False

    def qualified(self) -> tuple[str | None, str | None]:
        """A possibly schema-qualified name as (schema or None, name), as stored."""
        parts = [self._part()]
        while parts[-1] is not None and self.punct("."):
            parts.append(self._part())
        return (parts[-2] if len(parts) > 1 else None), parts[-1]

    def _part(self) -> str | None:
        if self._skip() is None:
            return None
        quote = self.text[self.i]
        if quote in _QUOTES and (quote == '"' or self.kind == "sqlite"):
            close = _QUOTES[quote]
            out: list[str] = []
            i = self.i + 1
            while i < len(self.text):
                if self.text[i] == close:
                    if self.text.startswith(close, i + 1) and close != "]":
                        out.append(close)  # a doubled quote is one quote
                        i += 2
                        continue
                    self.i = i + 1
                    return "".join(out)
                out.append(self.text[i])
                i += 1
            return None
        match = _WORD.match(self.text, self.i)
        if match is None:
            return None
        self.i = match.end()
        return match.group(0).lower() if self.kind == "postgres" else match.group(0)
