"""Split a migration file into statements, remembering where each one starts.

PostgreSQL files are scanned with a small lexer that knows quotes, comments and
dollar quoting; SQLite files use `sqlite3.complete_statement`, which also knows
trigger bodies. We never hand a whole file to ``executescript()``: it commits.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass

_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")
_IDENT_CHAR = re.compile(r"[A-Za-z0-9_$]")


@dataclass(frozen=True)
class Statement:
    """One SQL statement of a file: its 1-based number and the line it starts on."""

    number: int
    line: int
    text: str

    @property
    def first_line(self) -> str:
        return self.text.strip().splitlines()[0]


def split_sqlite(text: str) -> list[Statement]:
    """Split SQLite SQL at the semicolons where `complete_statement` says a statement ends."""
    chunks: list[tuple[int, int]] = []
    start = 0
    for match in re.finditer(";", text):
        end = match.end()
        if sqlite3.complete_statement(text[start:end]):
            chunks.append((start, end))
            start = end
    chunks.append((start, len(text)))
    return _statements(text, chunks)


def split_postgres(text: str) -> list[Statement]:
    """Split PostgreSQL SQL at top-level semicolons (outside quotes, comments, $$ bodies)."""
    chunks: list[tuple[int, int]] = []
    start = i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if text.startswith("--", i):
            newline = text.find("\n", i)
            i = n if newline < 0 else newline
        elif text.startswith("/*", i):
            i = _skip_block_comment(text, i)
        elif c == "'":
            escaped = i > 0 and text[i - 1] in "eE" and not _is_ident(text, i - 2)
            i = _skip_quoted(text, i, "'", backslash=escaped)
        elif c == '"':
            i = _skip_quoted(text, i, '"', backslash=False)
        elif c == "$" and not _is_ident(text, i - 1) and (tag := _DOLLAR_TAG.match(text, i)):
            close = text.find(tag.group(0), tag.end())
            i = n if close < 0 else close + len(tag.group(0))
        elif c == ";":
            i += 1
            chunks.append((start, i))
            start = i
        else:
            i += 1
    chunks.append((start, n))
    return _statements(text, chunks)


def _is_ident(text: str, i: int) -> bool:
    return i >= 0 and bool(_IDENT_CHAR.match(text[i]))


def _skip_block_comment(text: str, i: int) -> int:
    depth = 0
    while i < len(text):
        if text.startswith("/*", i):
            depth += 1
            i += 2
        elif text.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return i


def _skip_quoted(text: str, i: int, quote: str, *, backslash: bool) -> int:
    i += 1
    while i < len(text):
        c = text[i]
        if backslash and c == "\\":
            i += 2
        elif c == quote:
            if text.startswith(quote, i + 1):  # doubled quote is an escaped quote
                i += 2
            else:
                return i + 1
        else:
            i += 1
    return i


def code_start(text: str, start: int = 0, end: int | None = None) -> int | None:
    """Index of the first character that is not blank or inside a comment, or None."""
    end = len(text) if end is None else end
    i = start
    while i < end:
        if text[i].isspace():
            i += 1
        elif text.startswith("--", i):
            newline = text.find("\n", i, end)
            i = end if newline < 0 else newline + 1
        elif text.startswith("/*", i):
            i = _skip_block_comment(text, i)
        else:
            return i
    return None


def _statements(text: str, chunks: list[tuple[int, int]]) -> list[Statement]:
    statements: list[Statement] = []
    for start, end in chunks:
        first = code_start(text, start, end)
        if first is None:
            continue
        line = text.count("\n", 0, first) + 1
        statements.append(Statement(len(statements) + 1, line, text[first:end].strip()))
    return statements
