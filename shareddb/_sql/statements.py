"""What `DbService.execute()`, `query()` and friends do, written once for both engines.

A call scans its SQL (`shareddb._sql.lexer`), checks and converts every value
(`shareddb._sql.values`) — all before a connection is taken, so a bad name or value
changes nothing — and then hands the statement to its engine's half
(`shareddb._sql.postgres`, `shareddb._sql.sqlite`), which owns connections,
cursors and how rows come back.

Results are lists of dicts keyed by column name (a later column of the same name
wins, as in psycopg's ``dict_row``: alias them apart). `execute` and `executemany`
return the rows inserted, updated or deleted (MERGE too), and -1 for any other
statement, on both engines.
"""

from __future__ import annotations

import operator
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar, Final, TypeAlias

from shareddb._core.types import Connection
from shareddb._engines.base import Engine
from shareddb._sql.lexer import Parsed, parse
from shareddb._sql.values import Encoders, bind
from shareddb.errors import InvalidArgumentError

Params: TypeAlias = Mapping[str, Any]
Row: TypeAlias = dict[str, Any]

# Rows fetched per round trip by iter_query() (server-side cursor or fetchmany).
DEFAULT_BATCH_SIZE: Final = 1000
# executemany(conn=...) runs in a savepoint of this name: all rows or none, on both engines.
MANY_SAVEPOINT: Final = "shareddb_executemany"


class Statements(ABC):
    """One service's portable statements on its engine."""

    encoders: ClassVar[Encoders]

    def __init__(self, engine: Engine[Any]) -> None:
        self._engine = engine

    # -- the public calls (DbService delegates here) -------------------------------------

    def execute(self, sql: str, params: Params | None, conn: Connection | None) -> int:
        parsed = self._parse(sql)
        values = bind(parsed, params, self.encoders)
        return self._execute(parsed, values, conn)

    def executemany(
        self, sql: str, seq_of_params: Iterable[Params], conn: Connection | None
    ) -> int:
        parsed = self._parse(sql)
        if isinstance(seq_of_params, Mapping) or not isinstance(seq_of_params, Iterable):
            raise InvalidArgumentError(
                f"seq_of_params must be a list of dicts, not {type(seq_of_params).__name__}",
                fix="pass [{'name': value, ...}, ...]; for one row use db.execute()",
            )
        # Every row is checked before the first one runs.
        rows = [bind(parsed, p, self.encoders, row) for row, p in enumerate(seq_of_params)]
        if not rows:
            return 0
        return self._executemany(parsed, rows, conn)

    def query(
        self, sql: str, params: Params | None, conn: Connection | None, read_only: bool = False
    ) -> list[Row]:
        parsed = self._parse(sql)
        names, rows = self._any_rows(parsed, params, conn, None, read_only)
        return [dict(zip(names, row, strict=True)) for row in rows]

    def query_one(
        self, sql: str, params: Params | None, conn: Connection | None, read_only: bool = False
    ) -> Row | None:
        parsed = self._parse(sql)
        names, rows = self._any_rows(parsed, params, conn, 1, read_only)
        return dict(zip(names, rows[0], strict=True)) if rows else None

    def query_value(
        self, sql: str, params: Params | None, conn: Connection | None, read_only: bool = False
    ) -> Any:
        parsed = self._parse(sql)
        _, rows = self._any_rows(parsed, params, conn, 1, read_only)
        return rows[0][0] if rows and rows[0] else None

    def _any_rows(
        self,
        parsed: Parsed,
        params: Params | None,
        conn: Connection | None,
        limit: int | None,
        read_only: bool,
    ) -> tuple[list[str], list[list[Any]] | list[tuple[Any, ...]]]:
        values = bind(parsed, params, self.encoders)
        if not read_only:
            return self._rows(parsed, values, conn, limit)
        if not parsed.reads_only:
            raise InvalidArgumentError(
                "read_only=True is for statements that only read (SELECT or VALUES); this "
                f"statement is {parsed.verb or parsed.first or 'empty'}",
                fix="leave read_only out for a statement that writes",
            )
        return self._read_rows(parsed, values, conn, limit)

    def _read_rows(
        self, parsed: Parsed, values: dict[str, Any], conn: Connection | None, limit: int | None
    ) -> tuple[list[str], list[list[Any]] | list[tuple[Any, ...]]]:
        """`_rows` of a statement that only reads: an engine may run it on a replica."""
        return self._rows(parsed, values, conn, limit)

    def iter_query(
        self, sql: str, params: Params | None, conn: Connection | None, batch_size: int
    ) -> Iterator[Row]:
        parsed = self._parse(sql)
        values = bind(parsed, params, self.encoders)
        if not parsed.reads_only:
            raise InvalidArgumentError(
                "iter_query() streams the rows of a SELECT (or VALUES); this statement is "
                f"{parsed.verb or parsed.first or 'empty'}",
                fix="use db.query() for INSERT / UPDATE / DELETE ... RETURNING",
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidArgumentError(
                f"batch_size={batch_size!r} must be a whole number of rows >= 1",
                fix=f"leave it out for {DEFAULT_BATCH_SIZE}",
            )
        # Checked now; the generator connects on the first next().
        return self._stream(parsed, values, conn, operator.index(batch_size))

    # -- each engine's half --------------------------------------------------------------

    def _parse(self, sql: str) -> Parsed:
        return parse(sql, self._engine.kind)

    @staticmethod
    def affected(parsed: Parsed, rowcount: int) -> int:
        """The driver's count for a write, -1 for any other statement (as on both engines)."""
        return rowcount if parsed.writes else -1

    @abstractmethod
    def _execute(self, parsed: Parsed, values: dict[str, Any], conn: Connection | None) -> int:
        """Run one statement; the rows it wrote."""

    @abstractmethod
    def _executemany(
        self, parsed: Parsed, rows: list[dict[str, Any]], conn: Connection | None
    ) -> int:
        """Run one statement per row, all or nothing; the rows written.

        Without `conn` in a transaction of its own; with it in a savepoint
        (`MANY_SAVEPOINT`), so that a failing row undoes the others and the caller's
        transaction goes on, the same on both engines.
        """

    @abstractmethod
    def _rows(
        self, parsed: Parsed, values: dict[str, Any], conn: Connection | None, limit: int | None
    ) -> tuple[list[str], list[list[Any]] | list[tuple[Any, ...]]]:
        """Column names and the rows (at most `limit`), values converted back."""

    @abstractmethod
    def _stream(
        self, parsed: Parsed, values: dict[str, Any], conn: Connection | None, batch_size: int
    ) -> Iterator[Row]:
        """The rows as dicts, `batch_size` fetched at a time."""


def statements_for(engine: Engine[Any]) -> Statements:
    """The portable statements of `engine`'s kind."""
    if engine.kind == "postgres":
        from shareddb._sql.postgres import PostgresStatements

        return PostgresStatements(engine)
    from shareddb._sql.sqlite import SqliteStatements

    return SqliteStatements(engine)
