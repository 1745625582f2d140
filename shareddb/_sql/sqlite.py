"""Portable statements on SQLite, and how typed values come back from it.

sqlite3 binds ``:name`` itself, so the SQL runs as written, on the engine's one
shared connection: a read-only statement (SELECT, VALUES) in a read transaction
that never waits for another process's writer, anything else in ``BEGIN
IMMEDIATE``; `executemany` with ``conn=`` in a savepoint of the caller's transaction,
so a failing row undoes the others (all or nothing, as on PostgreSQL).

`iter_query` fetches `batch_size` rows at a time and holds the connection (other
threads wait) until the iterator ends or is closed. Its read transaction is open
while the caller's loop runs, so writes made in the loop on the same thread
become savepoints in it; it always ends with COMMIT (exhausted, closed early by a
``break`` or an exception, or failed), so those writes are kept, as on PostgreSQL
where they commit on their own. Other connections see them once the stream ends.

**Typed reads.** SQLite stores five kinds of values; a timestamp, a date, JSON or a
Decimal comes back as text or a number. The conversion back follows the *declared
type* of the result column, as sqlite3's ``detect_types=PARSE_DECLTYPES`` would,
but without sqlite3's converters: those are process-wide (`sqlite3.register_converter`)
and would change how the application's own sqlite3 code and shareddb's other domains
read the same connection. Python's sqlite3 doesn't expose ``sqlite3_column_decltype``,
so the types are asked of SQLite itself: the statement's SELECT (`Parsed.probe`, its
placeholders as NULL; for INSERT / UPDATE / DELETE ... RETURNING, ``SELECT <returning
list> FROM <table>``) becomes a temporary view, and ``PRAGMA table_info`` names the
declared type of each column — SQLite's own rule, so a column keeps its type through
aliases, joins, subqueries and views, and an expression such as ``max(created_at)``
has none (it comes back as stored). The answer is cached per connection and
statement until the schema changes (``PRAGMA schema_version``): after the first
call, a query costs one extra pragma and the conversions themselves (a one-row query
with two typed columns: about 14 µs, against 9 µs through sqlite3 on its own).

The declared types converted (case-insensitive, modifiers ignored):
``TIMESTAMPTZ`` / ``TIMESTAMP WITH TIME ZONE`` -> aware UTC datetime (text without an
offset, as ``CURRENT_TIMESTAMP`` writes, is read as UTC); ``DATE`` -> date; ``JSON`` /
``JSONB`` -> parsed JSON; ``NUMERIC`` / ``DECIMAL`` -> Decimal; ``BOOLEAN`` / ``BOOL`` ->
bool; ``VECTOR`` -> float32 numpy array. Columns of other types (``TEXT``, ``BIGINT``,
``DOUBLE PRECISION``, ``BYTEA``) come back as stored, which is already their Python type.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar, Final, TypeAlias

from shareddb._core.types import Connection
from shareddb._engines.base import Engine
from shareddb._sql.lexer import Parsed
from shareddb._sql.statements import MANY_SAVEPOINT, Row, Statements
from shareddb._sql.values import SQLITE_ENCODERS, Decode, Encoders, decoder_for

# (column position, conversion) for the columns of a result that have one.
Decoders: TypeAlias = tuple[tuple[int, Decode], ...]

_PROBE_VIEW: Final = "shareddb_result_columns"
_MAX_CACHED: Final = 1024  # statements whose result types are remembered per connection
# What a stored value that isn't in the portable form raises when converted.
_NOT_CONVERTED: Final = (ValueError, TypeError, ArithmeticError)


class SqliteStatements(Statements):
    encoders: ClassVar[Encoders] = SQLITE_ENCODERS

    def __init__(self, engine: Engine[sqlite3.Connection]) -> None:
        super().__init__(engine)
        self._sqlite = engine
        # Result types per probe, valid for one connection at one schema version. Used
        # only while holding the connection, so one thread at a time.
        self._types_of: sqlite3.Connection | None = None
        self._schema_version = -1
        self._types: dict[str, Decoders] = {}

    def _connection(
        self, conn: Connection | None, parsed: Parsed
    ) -> AbstractContextManager[sqlite3.Connection]:
        if conn is not None:
            return nullcontext(self._sqlite.checked(conn))
        if parsed.reads_only:
            return self._sqlite.reading()
        return self._sqlite.transaction()

    def _execute(self, parsed: Parsed, values: dict[str, Any], conn: Connection | None) -> int:
        with self._connection(conn, parsed) as c:
            cursor = c.execute(parsed.text, values)
            try:
                if parsed.writes and cursor.description is not None:
                    cursor.fetchall()  # RETURNING: sqlite3 counts the rows once they are read
                return self.affected(parsed, _changes(c, parsed, cursor.rowcount))
            finally:
                cursor.close()

    def _executemany(
        self, parsed: Parsed, rows: list[dict[str, Any]], conn: Connection | None
    ) -> int:
        # All or nothing in the caller's transaction too (a savepoint), as on PostgreSQL:
        # sqlite3 would keep the rows before a failing one.
        with self._sqlite.atomic(conn, MANY_SAVEPOINT) as c:
            if parsed.first == "WITH" and parsed.writes:
                # sqlite3 counts only statements that start with their verb: one at a time.
                return self.affected(parsed, sum(self._execute(parsed, r, c) for r in rows))
            cursor = c.executemany(parsed.text, rows)
            try:
                return self.affected(parsed, cursor.rowcount)
            finally:
                cursor.close()

    def _rows(
        self, parsed: Parsed, values: dict[str, Any], conn: Connection | None, limit: int | None
    ) -> tuple[list[str], list[list[Any]] | list[tuple[Any, ...]]]:
        with self._connection(conn, parsed) as c:
            decoders = self._decoders(c, parsed)
            cursor = c.execute(parsed.text, values)
            try:
                if cursor.description is None:
                    return [], []
                names = [column[0] for column in cursor.description]
                rows = cursor.fetchall() if limit is None else cursor.fetchmany(limit)
            finally:
                cursor.close()
        return names, _decoded(rows, decoders, len(names))

    def _stream(
        self, parsed: Parsed, values: dict[str, Any], conn: Connection | None, batch_size: int
    ) -> Iterator[Row]:
        # The read transaction stays open while the caller's loop runs, and the loop's
        # own writes on this thread (db.execute, db.transaction()) become savepoints in
        # it. On PostgreSQL they commit on their own, so here the transaction always
        # ends with COMMIT: neither closing the stream early (GeneratorExit, from a
        # `break` or an exception in the loop) nor a failed read may undo them.
        if conn is None:
            # The result types in a block of their own: the probe's temporary view is a
            # schema change, after which SQLite aborts pending reads on any ROLLBACK TO
            # in the same transaction (a failed db.transaction() inside the loop).
            with self._sqlite.reading() as c:
                self._decoders(c, parsed)
        failure: Exception | None = None
        with self._connection(conn, parsed) as c:
            try:
                yield from self._fetched(c, parsed, values, batch_size)
            except GeneratorExit:
                pass  # closed early: end the block normally; the generator then returns
            except Exception as e:
                failure = e
        if failure is not None:
            raise failure

    def _fetched(
        self, c: sqlite3.Connection, parsed: Parsed, values: dict[str, Any], batch_size: int
    ) -> Iterator[Row]:
        decoders = self._decoders(c, parsed)
        cursor = c.execute(parsed.text, values)
        try:
            names = [column[0] for column in cursor.description or ()]
            while batch := cursor.fetchmany(batch_size):
                for row in _decoded(batch, decoders, len(names)):
                    yield dict(zip(names, row, strict=True))
        finally:
            cursor.close()

    # -- declared types ------------------------------------------------------------------

    def _decoders(self, conn: sqlite3.Connection, parsed: Parsed) -> Decoders:
        """The conversions of `parsed`'s result columns, from their declared types."""
        probe = parsed.probe
        if probe is None:
            return ()
        version = conn.execute("PRAGMA schema_version").fetchone()[0]
        if conn is not self._types_of or version != self._schema_version:
            self._types_of, self._schema_version, self._types = conn, version, {}
        decoders = self._types.get(probe)
        if decoders is None:
            if len(self._types) >= _MAX_CACHED:
                self._types.clear()
            declared = declared_types(conn, probe)
            decoders = tuple(
                (i, decode)
                for i, name in enumerate(declared)
                if (decode := decoder_for(name)) is not None
            )
            self._types[probe] = decoders
        return decoders


def declared_types(conn: sqlite3.Connection, select: str) -> list[str]:
    """The declared type of each result column of `select` ('' for none), as SQLite tells.

    An empty list when SQLite can't make a view of it; the statement itself then
    runs (and fails, if it is wrong) as usual.
    """
    try:
        conn.execute(f'CREATE TEMP VIEW "{_PROBE_VIEW}" AS {select}')
    except (sqlite3.Error, sqlite3.Warning):
        return []
    try:
        return [
            str(row[2] or "") for row in conn.execute(f'PRAGMA temp.table_info("{_PROBE_VIEW}")')
        ]
    except sqlite3.Error:
        return []
    finally:
        conn.execute(f'DROP VIEW IF EXISTS temp."{_PROBE_VIEW}"')


def _changes(conn: sqlite3.Connection, parsed: Parsed, rowcount: int) -> int:
    """The rows the statement wrote: sqlite3's count, or SQLite's own after a WITH clause."""
    if rowcount >= 0 or parsed.first != "WITH":
        return rowcount
    row = conn.execute("SELECT changes()").fetchone()
    return int(row[0])


def _decoded(
    rows: list[tuple[Any, ...]], decoders: Decoders, width: int
) -> list[list[Any]] | list[tuple[Any, ...]]:
    """`rows` with typed columns converted back (as stored where a value doesn't convert)."""
    if not decoders or not rows or decoders[-1][0] >= width:
        return rows
    converted = []
    for row in rows:
        values = list(row)
        for i, decode in decoders:
            value = values[i]
            if value is not None:
                try:  # noqa: SIM105 - suppress() would cost a context manager per value
                    values[i] = decode(value)
                except _NOT_CONVERTED:
                    pass  # not in the portable form: as stored
        converted.append(values)
    return converted
