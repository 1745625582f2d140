"""Vector search on PostgreSQL: one statement, one round trip, every filter in SQL.

How a search runs: `_plan` picks the settings the search needs (``hnsw.ef_search``,
``ivfflat.probes``, iterative scans when rows are filtered) and renders the statement
once per shape (`vector_sql.search_statement` applies those settings itself, with SET
LOCAL semantics); `search` runs it on a pooled autocommit connection and its reused
binary cursor. A filtered approximate search whose index scan finds fewer than k rows
answers with an exact scan of the matching rows inside the same statement, so it
returns ``min(k, matches)`` rows whatever the filter's selectivity (an HNSW scan may
stop early: ``hnsw.max_scan_tuples``).
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any, Final, LiteralString

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from shareddb._core.types import Connection, PgConnection
from shareddb._engines.postgres.connect import binary_cursor
from shareddb._engines.postgres.pgvector import (
    INSTALLED_VERSION,
    ITERATIVE_SCAN_PGVECTOR,
    version_tuple,
)
from shareddb._engines.postgres.vector_sql import (
    DEFAULT_EF_SEARCH,
    DIMENSION_OF,
    DIMENSIONS,
    SHOW_SEARCH_SETTINGS,
    StatementCache,
    search_statement,
    settings_select,
)
from shareddb._vectors.filters import Filter, indexed, to_postgres
from shareddb._vectors.request import RowFilter, SearchRequest
from shareddb._vectors.results import SearchHit, SearchResult
from shareddb._vectors.validation import query_dimension_mismatch
from shareddb.errors import EmbeddingNotFoundError

if TYPE_CHECKING:
    from shareddb._engines.postgres.engine import PostgresEngine

INERROR = TransactionStatus.INERROR

# A result row as a SearchResult / SearchHit without a Python-level call per row.
_search_result: Final = functools.partial(tuple.__new__, SearchResult)
_search_hit: Final = functools.partial(tuple.__new__, SearchHit)

Plan = tuple[bytes, tuple[Any, ...], tuple[str, ...], tuple[Any, ...]]

# A filter matching fewer rows than this is searched exactly, over its matching rows (found
# through the GIN index): measured at 100k x 384, an exact scan of 1,000 rows takes ~1 ms
# where an HNSW scan filtering for them visits ~1,500 index tuples in 5-9 ms, and the exact
# answer has every true neighbour. Where a filter keeps more rows, the HNSW scan wins.
EXACT_BELOW: Final = 2000
FILTER_COUNT_SECONDS: Final = 300.0
MAX_FILTER_COUNTS: Final = 256
COUNT_UP_TO: Final = sql.SQL(
    "SELECT count(*) FROM (SELECT 1 FROM {table} WHERE {where} LIMIT {n}) AS matching"
)


def row_conditions(rows: RowFilter) -> tuple[tuple[LiteralString, ...], list[Any]]:
    """SQL conditions for `rows` (``%s`` placeholders) and their parameters, in order."""
    conditions: list[LiteralString] = []
    params: list[Any] = []
    if rows.dimension is not None:
        conditions.append("dimension = %s")
        params.append(rows.dimension)
    if rows.backend is not None:
        conditions.append("backend = %s")
        params.append(rows.backend)
    if rows.model is not None:
        conditions.append("model = %s")
        params.append(rows.model)
    if rows.where is not None:
        text, values = _metadata_condition(rows.where)
        conditions.append(text)  # every key and value is a parameter
        params.extend(values)
    if rows.exclude:
        conditions.append("qualified_task_id <> ALL(%s::text[])")
        params.append(list(rows.exclude))
    return tuple(conditions), params


@functools.lru_cache(maxsize=256)
def _metadata_condition(where: Filter) -> tuple[LiteralString, tuple[Any, ...]]:
    """A filter rendered once: apps send the same few filters over and over."""
    text, values = to_postgres(where)
    return text, tuple(values)


class PostgresSearch:
    """Searches of one table; `conn` None means a pooled connection of ours."""

    def __init__(self, engine: PostgresEngine, table: str, statements: StatementCache) -> None:
        self._engine = engine
        self._table = table
        self._statements = statements
        self._iterative: bool | None = None
        # The table's dimensions as last seen: search_by_id writes the stored vector's
        # dimension into its statement (the partial index's predicate needs a literal).
        self._dimensions: list[int] | None = None
        # How many rows each value filter matches, capped (see _few_match), and when.
        self._counts: dict[tuple[Any, ...], tuple[int, float]] = {}

    def search(
        self, request: SearchRequest, conn: Connection | None
    ) -> list[SearchResult] | list[SearchHit]:
        if conn is None:
            # The lean path: a pooled connection (of the primary or a replica) resting in
            # autocommit mode, its reused binary cursor, one autocommitted statement (its
            # settings end with it).
            return self._engine.read(lambda c: self._search(c, binary_cursor(c), request, own=True))
        checked = self._engine.checked(conn)
        return self._search(checked, checked.cursor(binary=True), request, own=False)

    def _search(
        self, conn: PgConnection, cursor: Any, request: SearchRequest, *, own: bool
    ) -> list[SearchResult] | list[SearchHit]:
        dimension = self._dimension(conn, request)
        rows = self._run(conn, cursor, request, dimension, own=own)
        if not rows and request.by_id is not None:
            # No hit: the id may be missing, or of a dimension the cache did not know.
            actual = self._dimension_of(conn, request.by_id)
            if actual != dimension:
                self._dimensions = None
                rows = self._run(conn, cursor, request, actual, own=own)
        elif not rows:
            stored = self._stored_dimensions(conn)
            if stored and dimension not in stored:
                raise query_dimension_mismatch(self._table, dimension, stored)
        if request.max_distance is not None:
            rows = [row for row in rows if row[1] <= request.max_distance]
        if request.with_metadata:
            return list(map(_search_hit, rows))
        return list(map(_search_result, rows))

    def _run(
        self, conn: PgConnection, cursor: Any, request: SearchRequest, dimension: int, *, own: bool
    ) -> list[Any]:
        statement, params, settings, _ = self._plan(conn, request, dimension)
        # A filter on values is planned for its values, every time: one statement text
        # serves every metadata filter of a shape (keys are parameters too), and their
        # shares of the table differ by orders of magnitude. A prepared statement's
        # generic plan, costed without them, would scan HNSW for a filter matching 0.1 %
        # of the rows (tens of ms) where the GIN index finds them in a fraction of one.
        rows = request.rows
        # None: the connection's prepare_threshold decides (None behind a transaction
        # pooler: never prepared). Nothing in shareddb passes prepare=True.
        prepare = False if rows.backend or rows.model or rows.where is not None else None
        if settings and not own and self._engine.in_transaction(conn):
            return _in_rolled_back_savepoint(conn, statement, params, prepare)
        # One autocommitted statement: its settings end with it.
        found: list[Any] = cursor.execute(statement, params, prepare=prepare).fetchall()
        return found

    def _dimension(self, conn: PgConnection, request: SearchRequest) -> int:
        """The query's dimension; for search_by_id, the stored vector's (cached per table)."""
        if request.by_id is None:
            return request.dimension
        if self._dimensions is None:
            self._dimensions = self._stored_dimensions(conn)
        if len(self._dimensions) == 1:
            return self._dimensions[0]  # one round trip: the statement reads the vector
        return self._dimension_of(conn, request.by_id)

    def _dimension_of(self, conn: PgConnection, task_id: str) -> int:
        row = conn.execute(self._statements.simple("dimension_of", DIMENSION_OF), (task_id,))
        found = row.fetchone()
        if found is None:
            raise EmbeddingNotFoundError(
                f"no embedding is stored for {task_id!r} in {self._table}",
                fix="upsert() it first, or check the id",
            )
        return int(found[0])

    def _stored_dimensions(self, conn: PgConnection) -> list[int]:
        statement = self._statements.simple("dimensions", DIMENSIONS)
        return [int(r[0]) for r in conn.execute(statement)]

    def _few_match(self, conn: PgConnection, rows: RowFilter, dimension: int) -> bool:
        """Whether fewer than `EXACT_BELOW` rows of `dimension` meet the value filters.

        Only for filters an index finds (a backend, metadata equality or $in): a range
        would have the exact scan read every row. Counted once per filter (up to
        `EXACT_BELOW`, through that index) and remembered for `FILTER_COUNT_SECONDS`:
        the planner can't tell, as its estimates for metadata filters are a default
        share of the table. A stale answer only picks the slower of two correct plans.
        """
        if rows.backend is None and (rows.where is None or not indexed(rows.where)):
            return False
        key = (dimension, rows.backend, rows.model, rows.where)
        now = time.monotonic()
        known = self._counts.get(key)
        if known is None or now - known[1] > FILTER_COUNT_SECONDS:
            texts, params = row_conditions(rows._replace(dimension=dimension, exclude=()))
            statement = self._statements.statement(
                ("count_up_to", texts),
                lambda: COUNT_UP_TO.format(
                    table=self._statements.ident,
                    where=sql.SQL(" AND ".join(texts)),
                    n=sql.Literal(EXACT_BELOW),
                ),
            )
            row = conn.execute(statement, params, prepare=False).fetchone()
            known = (int(row[0]) if row else 0, now)
            if len(self._counts) >= MAX_FILTER_COUNTS:
                self._counts.pop(next(iter(self._counts)))
            self._counts[key] = known
        return known[0] < EXACT_BELOW

    def _iterative_scans(self, conn: PgConnection) -> bool:
        if self._iterative is None:
            version = self._engine.pgvector_version
            if version is None:
                row = conn.execute(INSTALLED_VERSION).fetchone()
                version = str(row[0]) if row else "0"
            self._iterative = version_tuple(version) >= ITERATIVE_SCAN_PGVECTOR
        return self._iterative

    def _plan(self, conn: PgConnection, request: SearchRequest, dimension: int) -> Plan:
        """The search statement and its params, and the settings it applies and theirs."""
        k, metric, exact, ef_search, probes = (
            request.k,
            request.metric,
            request.exact,
            request.ef_search,
            request.probes,
        )
        rows = request.rows
        if not exact and self._few_match(conn, rows, dimension):
            exact = True  # cheaper than an index scan, and every true neighbour
        if request.by_id is not None:
            rows = rows._replace(exclude=(*rows.exclude, request.by_id))
        conditions, condition_params = row_conditions(rows) if rows.narrows else ((), [])
        names: list[str] = []
        values: list[Any] = []
        if not exact:
            if ef_search is not None:
                names.append("ef_search")
                values.append(str(max(ef_search, k)))
            elif k > DEFAULT_EF_SEARCH:
                names.append("ef_search_at_least")
                values.append(k)
            if probes is not None:
                names.append("probes")
                values.append(str(probes))
            if rows.narrows and self._iterative_scans(conn):
                names.append("iterative")
        settings = tuple(names)
        by_id = request.by_id is not None
        key = (
            "search",
            dimension,
            metric,
            k,
            exact,
            settings,
            by_id,
            request.with_metadata,
            conditions,
        )
        statement = self._statements.statement(
            key,
            lambda: search_statement(
                self._statements.ident,
                dimension,
                metric,
                k,
                exact,
                settings,
                conditions=conditions,
                by_id=by_id,
                with_metadata=request.with_metadata,
            ),
        )
        if conditions and not exact:  # the query once, the conditions for both scans
            query = request.by_id if by_id else request.query
            params = (query, *values, *condition_params, *condition_params)
        else:
            ids = (request.by_id, request.by_id) if by_id else (request.query,)
            params = (*values, *ids, *condition_params)
        return statement, params, settings, tuple(values)

    def explain(self, request: SearchRequest, conn: Connection | None) -> str:
        return self._engine.read(lambda c: self._explain(c, request), conn)

    def _explain(self, c: PgConnection, request: SearchRequest) -> str:
        with self._engine.savepoint(c, "shareddb_explain", rollback=True):
            statement, params, settings, values = self._plan(c, request, request.dimension)
            lines: list[str] = []
            if settings:
                # Apply them first so that EXPLAIN plans, and shows, what search runs with.
                c.execute(
                    self._statements.statement(
                        ("settings", *settings), lambda: settings_select(settings)
                    ),
                    values,
                )
                shown = c.execute(SHOW_SEARCH_SETTINGS).fetchone()
                assert shown is not None
                lines.append(f"-- settings: {shown[0]}")
            lines.append("-- " + statement.decode())
            plan = c.execute(b"EXPLAIN " + statement, params).fetchall()
            lines.extend(str(r[0]) for r in plan)
        return "\n".join(lines)


def _in_rolled_back_savepoint(
    conn: PgConnection, search: bytes, params: tuple[Any, ...], prepare: bool | None
) -> list[tuple[Any, ...]]:
    """Run `search` in the caller's transaction, its settings undone right after.

    Pipeline mode sends savepoint, search and rollback together (one round trip);
    if the search fails, the savepoint still returns the transaction to the state
    it was in, so the caller can carry on.
    """
    cursor = conn.cursor(binary=True)
    try:
        with conn.pipeline():
            conn.execute(b"SAVEPOINT shareddb_search")
            cursor.execute(search, params, prepare=prepare)
            conn.execute(b"ROLLBACK TO SAVEPOINT shareddb_search")
            conn.execute(b"RELEASE SAVEPOINT shareddb_search")
    except psycopg.Error:
        if not conn.broken and conn.info.transaction_status == INERROR:
            conn.execute(b"ROLLBACK TO SAVEPOINT shareddb_search")
            conn.execute(b"RELEASE SAVEPOINT shareddb_search")
        raise
    return cursor.fetchall()
