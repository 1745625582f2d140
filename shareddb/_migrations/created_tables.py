"""Which tables a namespace's migration files leave behind, read from their SQL.

Used by ``shareddb copy`` to find an application's tables: the files a database's
ledger says were applied are read in version order, and every ``CREATE TABLE``
adds a name, ``DROP TABLE`` removes it and ``ALTER TABLE … RENAME TO`` renames it.
What the SQL does not say plainly is not seen: tables created inside a function or
``DO`` block, ``CREATE TEMP`` / ``VIRTUAL`` / ``FOREIGN`` tables (left out on
purpose). Name such a table with ``shareddb copy --table``.

Names come back as the database stores them: a quoted name as written, an unquoted
one folded to lower case on PostgreSQL and kept as written on SQLite (whose names
are case-insensitive; compare them with `same_table`). A schema qualifier is
dropped: tables are looked up on the connection's search path (``main`` on SQLite).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from shareddb._core.types import EngineKind
from shareddb._migrations.files import MigrationFile, split_statements
from shareddb._migrations.sqlsplit import code_start

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_QUOTES = {'"': '"', "`": "`", "[": "]"}  # SQLite also takes `name` and [name]
_SKIPPED = {"TEMP", "TEMPORARY", "VIRTUAL", "FOREIGN"}


def created_tables(files: Iterable[MigrationFile], kind: EngineKind) -> list[str]:
    """The tables `files` (in order) create and leave in place, in the order created."""
    tables: list[str] = []
    for migration in files:
        for statement in split_statements(migration, kind):
            _apply(statement.text, kind, tables)
    return tables


def same_table(a: str, b: str, kind: EngineKind) -> bool:
    """Whether two stored names name one table on `kind` (SQLite ignores ASCII case)."""
    return a == b or (kind == "sqlite" and a.lower() == b.lower())


def _apply(text: str, kind: EngineKind, tables: list[str]) -> None:
    tokens = _Tokens(text, kind)
    first = tokens.word()
    if first == "CREATE":
        while (word := tokens.word()) in {"GLOBAL", "LOCAL", "UNLOGGED", *_SKIPPED}:
            if word in _SKIPPED:
                return
        if word != "TABLE":
            return
        tokens.words("IF", "NOT", "EXISTS")
        name = tokens.name()
        if name is not None and not any(same_table(t, name, kind) for t in tables):
            tables.append(name)
    elif first == "DROP" and tokens.word() == "TABLE":
        tokens.words("IF", "EXISTS")
        while (name := tokens.name()) is not None:
            tables[:] = [t for t in tables if not same_table(t, name, kind)]
            if not tokens.punct(","):
                return
    elif first == "ALTER" and tokens.word() == "TABLE":
        tokens.words("IF", "EXISTS")
        tokens.words("ONLY")
        old = tokens.name()
        if old is None or tokens.word() != "RENAME" or tokens.word() != "TO":
            return
        new = tokens.name()
        if new is not None:
            tables[:] = [new if same_table(t, old, kind) else t for t in tables]


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

    def name(self) -> str | None:
        """A possibly schema-qualified name: its last part, as the database stores it."""
        part = self._part()
        while part is not None and self.punct("."):
            part = self._part()
        return part

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
