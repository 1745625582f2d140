"""Find the ``:name`` placeholders of a statement, the way each engine's own lexer would.

`parse()` scans the SQL once per engine and caches the result: string literals,
quoted identifiers, comments and (on PostgreSQL) dollar-quoted bodies and ``::``
casts are skipped, so a colon inside them is never a placeholder. What counts as a
placeholder follows the engine:

- PostgreSQL: ``:name`` after a character that cannot end an identifier (so the
  array slice ``a[lo:hi]`` and the cast ``x::text`` stay as written, and so does
  ``:=``), with ``E'...'`` strings (backslash escapes), nested ``/* */`` comments and
  ``$tag$ ... $tag$`` bodies. The text psycopg runs has each placeholder as
  ``%(name)s`` and every other ``%`` doubled, because psycopg reads ``%`` everywhere
  in a statement that has parameters (``LIKE 'a%'`` reaches the server as written).
  ``$1`` outside quotes is refused: psycopg numbers our placeholders ``$1, $2, ...``.
- SQLite: sqlite3 binds ``:name`` itself, so the text runs unchanged; the scan
  mirrors SQLite's tokenizer (``[...]`` and backquoted identifiers, comments that
  don't nest) so that the names checked here are the ones sqlite3 will look up.
  SQLite's other styles (``?``, ``?1``, ``@x``, ``$x``) are refused: they aren't
  portable.

Placeholder names are ASCII letters, digits and ``_``, not starting with a digit.

Statements that change the *session* of the connection they run on are refused on
both engines, by their first keyword (comments and blanks before it don't count),
in every statement of the text: ``SET`` (but not ``SET LOCAL``, ``SET TRANSACTION``
or ``SET CONSTRAINTS``, which end with the transaction), ``RESET``, ``DISCARD``,
``PREPARE``, ``DEALLOCATE``, ``LISTEN``, ``UNLISTEN`` and SQLite's ``PRAGMA``. What
they change would outlive the call: on PostgreSQL the pooled connection keeps it
for later calls (and shareddb's own queries, after ``SET search_path``); on SQLite
the one shared connection does. A function that changes settings
(``set_config(..., false)``) is not seen: the check is of statements, not calls.
The scan also notes what the SQLite engine needs to learn the declared types of
a result (`Parsed.probe`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from shareddb._core.types import EngineKind
from shareddb._migrations.sqlsplit import _skip_block_comment, _skip_quoted
from shareddb.errors import InvalidArgumentError

# Characters that make up identifiers and keywords on both engines (any non-ASCII
# character counts, as in both engines' lexers; PostgreSQL also allows $ after the first).
_IDENT_CHARS: Final = "A-Za-z0-9_$\x80-\U0010ffff"
_IDENT_CHAR: Final = re.compile(f"[{_IDENT_CHARS}]")
_IDENT_START: Final = re.compile("[A-Za-z_\x80-\U0010ffff]")
_IDENT_RUN: Final = re.compile(f"[{_IDENT_CHARS}]*")
NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Where something of interest may start; anything between (blanks, operators) is code.
_EVENTS: Final = {
    "postgres": re.compile(f"--|/\\*|['\"$:;()]|[{_IDENT_CHARS}]+"),
    "sqlite": re.compile(f"--|/\\*|['\"`\\[?:@#$;()]|[{_IDENT_CHARS}]+"),
}
_DOLLAR_TAG: Final = re.compile("\\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\\$")
# The target of an INSERT / UPDATE / DELETE: [schema.]table [AS alias].
_IDENT: Final = (
    r'"(?:[^"]|"")*"|`(?:[^`]|``)*`|\[[^\]]*\]'
    f"|[A-Za-z_\x80-\U0010ffff][{_IDENT_CHARS}]*"
)
_TARGET: Final = re.compile(
    rf"\s*(?:{_IDENT})(?:\s*\.\s*(?:{_IDENT}))?(?:\s+AS\s+(?:{_IDENT}))?", re.IGNORECASE
)
_ROW_VERBS: Final = frozenset({"SELECT", "VALUES"})
_WRITE_VERBS: Final = frozenset({"INSERT", "REPLACE", "UPDATE", "DELETE", "MERGE"})
_VERBS: Final = _ROW_VERBS | _WRITE_VERBS
# Statements whose effect stays with the connection's session (see the module's text).
_SESSION_VERBS: Final = frozenset(
    {"SET", "RESET", "DISCARD", "PRAGMA", "PREPARE", "DEALLOCATE", "LISTEN", "UNLISTEN"}
)
# SET <this> ... lasts until the end of the transaction: not a session change.
_TRANSACTION_SETS: Final = frozenset({"LOCAL", "TRANSACTION", "CONSTRAINTS"})

STATEMENT_CACHE_SIZE: Final = 1024


@dataclass(frozen=True, slots=True)
class Parsed:
    """One statement as scanned for one engine.

    :ivar names: the placeholder names, each once, in order of first appearance.
    :ivar text: what the driver runs: ``%(name)s`` placeholders and ``%%`` on
        PostgreSQL; the statement as given on SQLite.
    :ivar verb: the statement's verb (``SELECT``, ``INSERT``, ... after any ``WITH``
        clause), upper-case, or ``""`` for any other statement.
    :ivar first: the statement's first keyword, upper-case (``WITH``, ``SELECT``, ...).
    :ivar probe: SQLite only: a SELECT whose result columns are the statement's (its
        placeholders as NULL), from which SQLite tells their declared types; None
        when the statement returns no rows or the scan can't tell.
    :ivar side_effect: what makes a SELECT more than a read (a data-modifying ``WITH``,
        ``SELECT ... INTO``, a ``FOR UPDATE`` / ``FOR SHARE`` lock), for messages;
        None when the scan sees none.
    """

    names: tuple[str, ...]
    text: str
    verb: str
    first: str
    probe: str | None
    side_effect: str | None = None

    @property
    def reads_only(self) -> bool:
        """Whether the statement only reads (SELECT or VALUES, with or without WITH)."""
        return self.verb in _ROW_VERBS

    @property
    def writes(self) -> bool:
        """Whether the statement is an INSERT, REPLACE, UPDATE, DELETE or MERGE."""
        return self.verb in _WRITE_VERBS


@dataclass(frozen=True, slots=True)
class _Scan:
    params: list[tuple[int, int, str]]  # start, end, name
    words: list[tuple[int, int, str]]  # top-level words: start, end, upper-case text
    first: str  # the first word at any depth: SELECT in (SELECT ...) UNION (SELECT ...)
    semicolon: int | None  # the first top-level semicolon
    heads: list[list[tuple[int, str]]]  # each statement's first two top-level words
    side_effect: str | None  # the first word, at any depth, that writes or locks rows


def parse(sql: object, dialect: EngineKind) -> Parsed:
    """`sql` scanned for `dialect`; InvalidArgumentError for SQL this API can't run."""
    if not isinstance(sql, str):
        raise InvalidArgumentError(
            f"sql must be a str, not {type(sql).__name__}",
            fix="pass the statement as text; psycopg.sql objects need db.connection()",
        )
    return _parse(sql, dialect)


@lru_cache(maxsize=STATEMENT_CACHE_SIZE)
def _parse(sql: str, dialect: EngineKind) -> Parsed:
    scan = _scan(sql, dialect)
    _refuse_session_changes(sql, scan.heads)
    names = tuple(dict.fromkeys(name for _, _, name in scan.params))
    words = [w for _, _, w in scan.words]
    first = scan.first
    verb = first if first in _VERBS else ""
    if first == "WITH":
        verb = next((w for w in words if w in _VERBS), "")
    side_effect = scan.side_effect
    if side_effect is None and verb == "SELECT" and "INTO" in words:
        side_effect = "SELECT ... INTO, which creates a table"
    if dialect == "postgres":
        text = _render(sql, scan.params, 0, len(sql), _pyformat, escape=True)
        return Parsed(names, text, verb, first, None, side_effect)
    return Parsed(names, sql, verb, first, _probe(sql, scan, verb, first), side_effect)


def _pyformat(name: str) -> str:
    return f"%({name})s"


def _null(name: str) -> str:
    return "NULL"


def _render(
    sql: str,
    params: list[tuple[int, int, str]],
    start: int,
    end: int,
    placeholder: Callable[[str], str],
    *,
    escape: bool = False,
) -> str:
    """`sql[start:end]` with each placeholder replaced (and every other ``%`` doubled)."""
    parts: list[str] = []
    at = start
    for p_start, p_end, name in params:
        if start <= p_start and p_end <= end:
            code = sql[at:p_start]
            parts.append(code.replace("%", "%%") if escape else code)
            parts.append(placeholder(name))
            at = p_end
    code = sql[at:end]
    parts.append(code.replace("%", "%%") if escape else code)
    return "".join(parts)


def _probe(sql: str, scan: _Scan, verb: str, first: str) -> str | None:
    """The SELECT that shows the result columns' declared types, for the SQLite engine."""
    end = len(sql) if scan.semicolon is None else scan.semicolon
    if verb in _ROW_VERBS:
        return _render(sql, scan.params, 0, end, _null)
    if verb not in _WRITE_VERBS or first != verb:
        return None  # no rows, or a WITH clause in front of a write: not worth the parse
    words = scan.words
    returning = next((w for w in words if w[2] == "RETURNING"), None)
    if returning is None:
        return None
    # Where the table's name starts: after INTO, after UPDATE [OR ...], after FROM.
    after = {"INSERT": "INTO", "REPLACE": "INTO", "DELETE": "FROM"}.get(verb)
    if after is not None:
        marker = next((w for w in words[1:] if w[2] == after), None)
        if marker is None:
            return None
        target_at = marker[1]
    else:
        target_at = words[0][1]
        if len(words) > 2 and words[1][2] == "OR":
            target_at = words[2][1]
    match = _TARGET.match(sql, target_at)
    if match is None:
        return None
    columns = _render(sql, scan.params, returning[1], end, _null).strip()
    return f"SELECT {columns} FROM {match.group(0).strip()}"


def _scan(sql: str, dialect: EngineKind) -> _Scan:
    postgres = dialect == "postgres"
    events = _EVENTS[dialect]
    params: list[tuple[int, int, str]] = []
    words: list[tuple[int, int, str]] = []
    semicolon: int | None = None
    heads: list[list[tuple[int, str]]] = [[]]
    first = ""
    previous = ""  # the word before, at any depth
    side_effect: str | None = None
    depth = 0
    n = len(sql)
    i = 0
    while True:
        match = events.search(sql, i)
        if match is None:
            break
        i = match.start()
        found = match.group(0)
        c = found[0]
        if found == "--":
            newline = sql.find("\n", i)
            i = n if newline < 0 else newline + 1
        elif found == "/*":
            if postgres:
                i = _skip_block_comment(sql, i)
            else:  # SQLite's comments don't nest
                close = sql.find("*/", i + 2)
                i = n if close < 0 else close + 2
        elif c == "'":
            backslash = postgres and _is_e_prefix(sql, i)
            i = _skip_quoted(sql, i, "'", backslash=backslash)
        elif c == '"' or c == "`":
            i = _skip_quoted(sql, i, c, backslash=False)
        elif c == "[":  # SQLite: [a quoted identifier]
            close = sql.find("]", i + 1)
            i = n if close < 0 else close + 1
        elif c == ":":
            i = _colon(sql, i, postgres, params)
        elif c == "$" and postgres:
            i = _dollar(sql, i)
        elif c in "?@#$":  # SQLite only
            i = _other_placeholder(sql, i)
        elif c == "(":
            depth += 1
            i += 1
        elif c == ")":
            depth -= 1
            i += 1
        elif c == ";":
            if depth == 0:
                semicolon = i if semicolon is None else semicolon
                heads.append([])
            i += 1
        else:  # a word, a keyword or a number
            if depth == 0:
                words.append((i, match.end(), found.upper()))
                if len(heads[-1]) < 2:
                    heads[-1].append((i, found.upper()))
            word = found.upper()
            first = first or word
            if side_effect is None and not (i and sql[i - 1] == "."):  # not t.update
                side_effect = _side_effect(previous, word)
            previous = word
            i = match.end()
    return _Scan(params, words, first, semicolon, heads, side_effect)


def _side_effect(previous: str, word: str) -> str | None:
    """What the keyword `word` (after `previous`) does besides reading, if anything.

    A data-modifying verb anywhere (``WITH d AS (DELETE ...) SELECT``), or the row
    lock of ``FOR UPDATE``, ``FOR NO KEY UPDATE``, ``FOR SHARE``, ``FOR KEY SHARE``.
    """
    if word in ("UPDATE", "SHARE") and previous in ("FOR", "KEY"):
        return "a FOR UPDATE / FOR SHARE clause, which locks rows"
    if word in _WRITE_VERBS and word != "REPLACE":  # replace() is a function
        return f"{word}, which writes"
    return None


def _refuse_session_changes(sql: str, heads: list[list[tuple[int, str]]]) -> None:
    """InvalidArgumentError for the first statement in `sql` that changes the session."""
    for head in heads:
        if not head or head[0][1] not in _SESSION_VERBS:
            continue
        at, kind = head[0]
        if kind == "SET" and len(head) > 1 and head[1][1] in _TRANSACTION_SETS:
            continue
        what = "SET statements without LOCAL" if kind == "SET" else f"{kind} statements"
        raise InvalidArgumentError(
            f"the SQL runs {kind} ({_around(sql, at)}), and {what} change the session of the "
            "connection they run on, which outlives the call (on PostgreSQL a pooled "
            "connection keeps it for later calls and shareddb's own queries; on SQLite the "
            "one shared connection does), so db.execute() and db.query() don't run them",
            fix="for a setting of one transaction, run SET LOCAL inside "
            "`with db.transaction() as conn:` with conn=conn; run engine-specific SQL "
            "through db.connection(), and undo a session setting there before the block ends",
        )


def _is_e_prefix(sql: str, i: int) -> bool:
    """Whether the quote at `i` opens a PostgreSQL ``E'...'`` string (backslash escapes)."""
    return i >= 1 and sql[i - 1] in "eE" and not (i >= 2 and _IDENT_CHAR.match(sql[i - 2]))


def _colon(sql: str, i: int, postgres: bool, params: list[tuple[int, int, str]]) -> int:
    """Past the colon at `i`, recording the placeholder it starts, if any."""
    following = sql[i + 1 : i + 2]
    if following == ":":
        if not postgres:
            raise InvalidArgumentError(
                f"the SQL uses a :: cast ({_around(sql, i)}), which SQLite does not know",
                fix="write CAST(value AS type), which both engines run",
            )
        return i + 2
    if postgres:
        if (i and _IDENT_CHAR.match(sql[i - 1])) or not _IDENT_START.match(following):
            return i + 1  # an array slice a[lo:hi], a[1:2], or :=
    elif not _IDENT_CHAR.match(following):
        return i + 1
    end = _IDENT_RUN.match(sql, i + 1).end()  # type: ignore[union-attr]
    name = sql[i + 1 : end]
    if not NAME.fullmatch(name):
        raise InvalidArgumentError(
            f"placeholder :{name} is not a plain name",
            fix="name placeholders with ASCII letters, digits and _, starting with a letter",
        )
    params.append((i, end, name))
    return end


def _dollar(sql: str, i: int) -> int:
    """Past a PostgreSQL ``$tag$ ... $tag$`` body (or a lone ``$``)."""
    if i and _IDENT_CHAR.match(sql[i - 1]):
        return i + 1  # part of an identifier such as a$1
    tag = _DOLLAR_TAG.match(sql, i)
    if tag is not None:
        close = sql.find(tag.group(0), tag.end())
        return len(sql) if close < 0 else close + len(tag.group(0))
    if sql[i + 1 : i + 2].isdigit():
        raise _positional(sql, i)
    return i + 1


def _other_placeholder(sql: str, i: int) -> int:
    """SQLite: ``?``, ``?NNN``, ``@x``, ``$x`` and ``#x`` are placeholders we don't take."""
    if sql[i] == "?" or _IDENT_CHAR.match(sql[i + 1 : i + 2]):
        raise _positional(sql, i)
    return i + 1


def _positional(sql: str, i: int) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"the SQL uses a placeholder of another style ({_around(sql, i)}); "
        "db.execute() and db.query() take named placeholders only",
        fix="write :name in the SQL and pass {'name': value}",
    )


def _around(sql: str, i: int) -> str:
    """The SQL near `i`, for messages."""
    start, end = max(0, i - 20), i + 20
    return repr(("..." if start else "") + sql[start:end] + ("..." if end < len(sql) else ""))
