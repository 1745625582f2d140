"""Portable statements on PostgreSQL: psycopg's ``%(name)s`` text, pooled connections.

A call without ``conn=`` runs on a pooled connection in autocommit mode: one
statement is one transaction and one round trip. `executemany` (psycopg pipelines
the rows) and `iter_query` run in a transaction of their own; with ``conn=``,
`executemany` runs in a savepoint of the caller's transaction (a failing row undoes
the others and leaves the transaction usable, as on SQLite). `iter_query` reads
through a server-side cursor, so only `batch_size` rows are in memory at a time and
the connection stays checked out until the iterator ends or is closed; writes made
inside its loop run on other pooled connections and commit on their own.

Values come back as psycopg loads them (numeric as Decimal, json/jsonb parsed,
vector as a float32 array, as on SQLite); timestamptz is returned in UTC, as on
SQLite, whatever the session's TimeZone.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from typing import Any, ClassVar, Final

from pgvector import Vector
from psycopg import ServerCursor
from psycopg.postgres import types as pg_types

from shareddb._core.types import Connection, PgConnection, PgCursor
from shareddb._engines.base import Engine
from shareddb._sql.lexer import Parsed
from shareddb._sql.statements import MANY_SAVEPOINT, Row, Statements
from shareddb._sql.values import POSTGRES_ENCODERS, Encoders

_TIMESTAMPTZ_OID: Final = pg_types["timestamptz"].oid


class PostgresStatements(Statements):
    encoders: ClassVar[Encoders] = POSTGRES_ENCODERS

    def __init__(self, engine: Engine[PgConnection]) -> None:
        super().__init__(engine)
        self._pg = engine

    def _connection(
        self, conn: Connection | None, *, transaction: bool
    ) -> AbstractContextManager[PgConnection]:
        if conn is not None:
            return nullcontext(self._pg.checked(conn))
        return self._pg.transaction() if transaction else self._pg.statement()

    def _execute(self, parsed: Parsed, values: dict[str, Any], conn: Connection | None) -> int:
        with self._connection(conn, transaction=False) as c, c.cursor() as cursor:
            cursor.execute(parsed.text, values)
            return self.affected(parsed, cursor.rowcount)

    def _executemany(
        self, parsed: Parsed, rows: list[dict[str, Any]], conn: Connection | None
    ) -> int:
        # With conn, a savepoint: a failing row undoes the others but leaves the caller's
        # transaction usable, as on SQLite.
        with self._pg.atomic(conn, MANY_SAVEPOINT) as c, c.cursor() as cursor:
            cursor.executemany(parsed.text, rows)
            return self.affected(parsed, cursor.rowcount)

    def _rows(
        self, parsed: Parsed, values: dict[str, Any], conn: Connection | None, limit: int | None
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        with self._connection(conn, transaction=False) as c:
            return _fetch(c, parsed, values, limit)

    def _read_rows(
        self, parsed: Parsed, values: dict[str, Any], conn: Connection | None, limit: int | None
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        return self._pg.read(lambda c: _fetch(c, parsed, values, limit), conn)

    def _stream(
        self, parsed: Parsed, values: dict[str, Any], conn: Connection | None, batch_size: int
    ) -> Iterator[Row]:
        with (
            self._connection(conn, transaction=True) as c,
            # A name of its own: two streams may be open in one transaction.
            c.cursor(name=f"shareddb_query_{uuid.uuid4().hex}") as cursor,
        ):
            cursor.itersize = batch_size
            cursor.execute(parsed.text, values)
            while batch := cursor.fetchmany(batch_size):
                names, rows = _converted(cursor, batch)
                for row in rows:
                    yield dict(zip(names, row, strict=True))


def _fetch(
    conn: PgConnection, parsed: Parsed, values: dict[str, Any], limit: int | None
) -> tuple[list[str], list[tuple[Any, ...]]]:
    with conn.cursor() as cursor:
        cursor.execute(parsed.text, values)
        if cursor.description is None:
            return [], []
        rows = cursor.fetchall() if limit is None else cursor.fetchmany(limit)
        return _converted(cursor, rows)


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _array(value: Vector) -> Any:
    return value.to_numpy()


def _converted(
    cursor: PgCursor | ServerCursor[tuple[Any, ...]], rows: list[tuple[Any, ...]]
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names, and `rows` with timestamptz in UTC and vectors as float32 arrays.

    psycopg gives timestamptz in the session's TimeZone, and pgvector's loader (before
    pgvector-python 1.0) gives a `Vector`: the same values as on SQLite, by column type.
    """
    description = cursor.description or []
    names = [column.name for column in description]
    vector = cursor.adapters.types.get("vector")
    by_type: dict[int, Callable[[Any], Any]] = {_TIMESTAMPTZ_OID: _utc}
    if vector is not None:
        by_type[vector.oid] = _array
    columns = [(i, f) for i, c in enumerate(description) if (f := by_type.get(c.type_code))]
    if not columns or not rows:
        return names, rows
    converted = []
    for row in rows:
        values = list(row)
        for i, convert in columns:
            value = values[i]
            if value is not None:
                values[i] = convert(value)
        converted.append(tuple(values))
    return names, converted
