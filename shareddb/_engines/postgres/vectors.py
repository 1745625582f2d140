"""VectorStorage on PostgreSQL + pgvector: binary COPY, partial expression indexes, SET LOCAL.

Round trips are what a search costs beyond the server's own work, so:

* A search on our own pooled connection is one autocommitted statement, one round
  trip. When it needs settings (``hnsw.ef_search``, ``ivfflat.probes``, iterative
  scans) the statement applies them itself with ``set_config(..., is_local =>
  true)`` before its index scan starts (see `search_statement`): they hold for this
  query only and end with its transaction (SET LOCAL semantics: nothing leaks to
  the next user of the connection). Psycopg's pipeline mode would also make it one
  round trip, but costs about 60 µs of client time per search. Inside a caller's
  transaction (``conn=``) the search runs in a savepoint that is rolled back right
  after, pipelined, so the settings don't outlive it there either.
* Single-row writes run as one autocommitted statement.
* ``upsert_many`` builds the binary COPY stream itself with numpy (big-endian
  float32 rows, no per-value Python objects). It copies straight into the table,
  under a savepoint, while none of the ids exists yet (a probe of a few ids of the
  first batch decides); the unique index has the last word: a UniqueViolation (an
  id that exists, or one a concurrent writer just committed) rolls the savepoint
  back, and the call continues through a temporary staging table and one
  ``INSERT … ON CONFLICT DO UPDATE`` per batch. That is correct against concurrent
  writers without any table lock.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from shareddb._core.types import Connection, PgConnection
from shareddb._engines.postgres.connect import binary_cursor
from shareddb._engines.postgres.index_build import PostgresIndexes
from shareddb._engines.postgres.pgvector import (
    INSTALLED_VERSION,
    ITERATIVE_SCAN_PGVECTOR,
    version_tuple,
)
from shareddb._engines.postgres.vector_sql import (
    COPY_INTO_STAGING_BYTES,
    COPY_INTO_TABLE,
    COUNT,
    COUNT_DIMENSION,
    CREATE_DIMENSION_INDEX,
    CREATE_STAGING,
    CREATE_TABLE,
    DEFAULT_EF_SEARCH,
    DELETE,
    DIMENSION_OF,
    DIMENSIONS,
    GET,
    PROBE,
    PROBE_IDS,
    SAMPLE_IDS,
    SHOW_SEARCH_SETTINGS,
    STAGING,
    STAGING_MISMATCH_T,
    UPSERT,
    UPSERT_FROM_STAGING_T,
    search_statement,
    settings_select,
)
from shareddb._vectors.batches import Batch
from shareddb._vectors.codec import copy_chunks
from shareddb._vectors.request import IndexRequest, SearchRequest
from shareddb._vectors.results import IndexInfo, SearchResult
from shareddb._vectors.validation import (
    Float32Array,
    query_dimension_mismatch,
    short_name,
    stored_dimension_mismatch,
)
from shareddb.errors import DimensionMismatchError, InvalidArgumentError

if TYPE_CHECKING:
    from shareddb._engines.postgres.engine import PostgresEngine

logger = logging.getLogger("shareddb.vectors")

INERROR = TransactionStatus.INERROR

# A result row (id, distance) as a SearchResult without a Python-level call per row.
_search_result: Final = functools.partial(tuple.__new__, SearchResult)


class PostgresVectors:
    """`VectorStorage` on PostgreSQL; `conn` None means a pooled connection of ours."""

    def __init__(self, engine: PostgresEngine, table: str) -> None:
        self._engine = engine
        self._table = table
        self._indexes = PostgresIndexes(engine, table)
        self._ident = sql.Identifier(table)
        self._statements: dict[tuple[Any, ...], bytes] = {}
        self._iterative: bool | None = None

    # -- plumbing ----------------------------------------------------------------------

    def _connection(
        self, conn: Connection | None, *, autocommit: bool
    ) -> AbstractContextManager[PgConnection]:
        """The caller's connection, or a pooled one (autocommit: one statement, one trip).

        Pooled connections rest in autocommit mode, so the autocommit checkout
        switches nothing; otherwise the engine wraps the block in a transaction.
        """
        if conn is not None:
            return nullcontext(self._engine.checked(conn))
        return self._engine.statement() if autocommit else self._engine.transaction()

    def _statement(self, key: tuple[Any, ...], build: Any) -> bytes:
        """A composed statement rendered to bytes once per key (psycopg then caches its parse)."""
        statement = self._statements.get(key)
        if statement is None:
            composed = build()
            statement = composed.as_string(None).encode()
            self._statements[key] = statement
        return statement

    def _simple(self, name: str, template: sql.SQL) -> bytes:
        return self._statement((name,), lambda: template.format(table=self._ident))

    def _iterative_scans(self, conn: PgConnection) -> bool:
        if self._iterative is None:
            version = self._engine.pgvector_version
            if version is None:
                row = conn.execute(INSTALLED_VERSION).fetchone()
                version = str(row[0]) if row else "0"
            self._iterative = version_tuple(version) >= ITERATIVE_SCAN_PGVECTOR
        return self._iterative

    # -- writes ------------------------------------------------------------------------

    def upsert(
        self, task_id: str, backend: str, embedding: Float32Array, conn: Connection | None
    ) -> None:
        statement = self._simple("upsert", UPSERT)
        params = (task_id, backend, embedding.shape[0], embedding)
        with self._connection(conn, autocommit=True) as c:
            for _ in range(3):
                if c.execute(statement, params).fetchone() is not None:
                    return
                stored = self._stored_dimension(c, task_id)
                if stored is not None:
                    raise stored_dimension_mismatch(task_id, stored, embedding.shape[0])
            raise DimensionMismatchError(  # pragma: no cover - needs a concurrent writer
                f"qualified_task_id {task_id!r} kept changing dimension under concurrent "
                "writers; try again"
            )

    def _stored_dimension(self, conn: PgConnection, task_id: str) -> int | None:
        row = conn.execute(self._simple("dimension_of", DIMENSION_OF), (task_id,)).fetchone()
        return None if row is None else int(row[0])

    def upsert_many(self, batches: Iterator[Batch], conn: Connection | None) -> int:
        total = 0
        direct: bool | None = None  # COPY straight into the table? None: not decided yet
        staging = False
        with (
            self._connection(conn, autocommit=False) as c,
            self._engine.savepoint(c, "shareddb_upsert_many"),
        ):
            for batch in batches:
                total += len(batch)
                rows = batch.deduplicated()
                if direct is None:
                    # A few of the ids, spread over the first batch: if any exists this is
                    # an update, and a COPY into the table would fail on it.
                    sample = rows.ids[:: max(1, len(rows) // PROBE_IDS)][:PROBE_IDS]
                    probe = c.execute(self._simple("probe", PROBE), (sample,)).fetchone()
                    direct = not (probe and probe[0])
                if direct:
                    try:
                        with self._engine.savepoint(c, "shareddb_copy"):
                            self._copy(c, self._simple("copy", COPY_INTO_TABLE), rows)
                        continue
                    except psycopg.errors.UniqueViolation:
                        logger.debug(
                            "upsert_many into %s: some ids exist, continuing through a "
                            "staging table",
                            self._table,
                        )
                        direct = False
                if staging:
                    c.execute(b"TRUNCATE pg_temp.shareddb_vector_staging")
                else:
                    c.execute(CREATE_STAGING.format(staging=STAGING))
                    staging = True
                self._copy(c, COPY_INTO_STAGING_BYTES, rows)
                cursor = c.execute(self._simple("upsert_staging", UPSERT_FROM_STAGING_T))
                if cursor.rowcount != len(rows):
                    self._raise_staging_mismatch(c)
            if staging:
                c.execute(b"DROP TABLE pg_temp.shareddb_vector_staging")
        return total

    def _copy(self, conn: PgConnection, statement: bytes, batch: Batch) -> None:
        with conn.cursor() as cursor, cursor.copy(statement) as copy:
            for chunk in copy_chunks(batch):
                copy.write(chunk)

    def _raise_staging_mismatch(self, conn: PgConnection) -> None:
        row = conn.execute(self._simple("staging_mismatch", STAGING_MISMATCH_T)).fetchone()
        if row is None:  # pragma: no cover - a concurrent delete between the two statements
            raise DimensionMismatchError(
                f"upsert_many into {self._table} could not write every row (rows changed "
                "concurrently); nothing was written, try again"
            )
        raise stored_dimension_mismatch(str(row[0]), int(row[1]), int(row[2]))

    def delete(self, task_id: str, conn: Connection | None) -> bool:
        with self._connection(conn, autocommit=True) as c:
            return c.execute(self._simple("delete", DELETE), (task_id,)).rowcount > 0

    # -- reads -------------------------------------------------------------------------

    def get(self, task_id: str, conn: Connection | None) -> Float32Array | None:
        with self._connection(conn, autocommit=True) as c:
            cursor = binary_cursor(c) if conn is None else c.cursor(binary=True)
            row = cursor.execute(self._simple("get", GET), (task_id,)).fetchone()
        if row is None:
            return None
        return np.array(row[0].to_numpy(), dtype=np.float32)

    def count(self, dimension: int | None, conn: Connection | None) -> int:
        with self._connection(conn, autocommit=True) as c:
            if dimension is None:
                row = c.execute(self._simple("count", COUNT)).fetchone()
            else:
                row = c.execute(self._simple("count_dim", COUNT_DIMENSION), (dimension,)).fetchone()
        assert row is not None
        return int(row[0])

    # -- search ------------------------------------------------------------------------

    def _plan(
        self, conn: PgConnection, request: SearchRequest
    ) -> tuple[bytes, tuple[Any, ...], tuple[str, ...], tuple[Any, ...]]:
        """The search statement and its params, and the settings it applies and theirs."""
        query, k, metric, backend, exact, ef_search, probes = request
        dimension = query.shape[0]
        filtered = backend is not None
        iterative = filtered and not exact and self._iterative_scans(conn)
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
            if iterative:
                names.append("iterative")
        settings = tuple(names)
        search = self._statement(
            ("search", dimension, metric, k, filtered, exact, settings),
            lambda: search_statement(self._ident, dimension, metric, k, filtered, exact, settings),
        )
        params: tuple[Any, ...] = (query,) if backend is None else (query, backend)
        return search, (*values, *params), settings, tuple(values)

    def search(self, request: SearchRequest, conn: Connection | None) -> list[SearchResult]:
        if conn is None:
            # The lean path: a pooled connection resting in autocommit mode, its
            # reused binary cursor, one autocommitted statement (its settings end
            # with it), one round trip.
            with self._engine.statement() as c:
                search, params, _, _ = self._plan(c, request)
                rows = binary_cursor(c).execute(search, params).fetchall()
                if not rows:
                    self._check_dimension(c, request.dimension)
            return list(map(_search_result, rows))
        own = self._engine.checked(conn)
        search, params, settings, _ = self._plan(own, request)
        if settings and self._engine.in_transaction(own):
            rows = _in_rolled_back_savepoint(own, search, params)
        else:  # one autocommitted statement: its settings end with it
            rows = own.cursor(binary=True).execute(search, params).fetchall()
        if not rows:
            self._check_dimension(own, request.dimension)
        return list(map(_search_result, rows))

    def _check_dimension(self, conn: PgConnection, dimension: int) -> None:
        """After an empty result: DimensionMismatchError if only other dimensions are stored."""
        stored = [int(r[0]) for r in conn.execute(self._simple("dimensions", DIMENSIONS))]
        if stored and dimension not in stored:
            raise query_dimension_mismatch(self._table, dimension, stored)

    def explain(self, request: SearchRequest, conn: Connection | None) -> str:
        with (
            self._connection(conn, autocommit=False) as c,
            self._engine.savepoint(c, "shareddb_explain", rollback=True),
        ):
            search, params, settings, values = self._plan(c, request)
            lines: list[str] = []
            if settings:
                # Apply them first so that EXPLAIN plans, and shows, what search runs with.
                c.execute(
                    self._statement(("settings", *settings), lambda: settings_select(settings)),
                    values,
                )
                shown = c.execute(SHOW_SEARCH_SETTINGS).fetchone()
                assert shown is not None
                lines.append(f"-- settings: {shown[0]}")
            lines.append("-- " + search.decode())
            plan = c.execute(b"EXPLAIN " + search, params).fetchall()
            lines.extend(str(r[0]) for r in plan)
        return "\n".join(lines)

    # -- indexes -----------------------------------------------------------------------

    def create_index(self, request: IndexRequest, conn: Connection | None) -> str:
        if request.concurrently and conn is not None:
            raise _concurrently_in_transaction("create_index")
        with self._connection(conn, autocommit=request.concurrently) as c:
            return self._indexes.create(c, request)

    def drop_index(self, name: str, concurrently: bool, conn: Connection | None) -> None:
        if concurrently and conn is not None:
            raise _concurrently_in_transaction("drop_index")
        with self._connection(conn, autocommit=concurrently) as c:
            self._indexes.drop(c, name, concurrently)

    def indexes(self, conn: Connection | None) -> list[IndexInfo]:
        with self._connection(conn, autocommit=True) as c:
            return self._indexes.listing(c)

    def create_table(self, conn: Connection | None) -> None:
        table = self._table
        with self._connection(conn, autocommit=False) as c:
            c.execute(
                CREATE_TABLE.format(
                    table=self._ident,
                    key=sql.Identifier(short_name(f"{table}_qualified_task_id_key")),
                    id_check=sql.Identifier(short_name(f"{table}_qualified_task_id_check")),
                    dimension_check=sql.Identifier(short_name(f"{table}_dimension_check")),
                    embedding_check=sql.Identifier(short_name(f"{table}_embedding_check")),
                )
            )
            c.execute(
                CREATE_DIMENSION_INDEX.format(
                    index=sql.Identifier(short_name(f"{table}_dimension_backend_idx")),
                    table=self._ident,
                )
            )

    def sample_ids(self, dimension: int, size: int, seed: int) -> list[str]:
        with self._engine.statement() as c:
            rows = c.execute(self._simple("sample", SAMPLE_IDS), (dimension, str(seed), size))
            return [str(row[0]) for row in rows]


def _concurrently_in_transaction(method: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"{method}(concurrently=True) can't run inside a transaction (conn=)",
        fix="call it without conn=",
    )


def _in_rolled_back_savepoint(
    conn: PgConnection, search: bytes, params: tuple[Any, ...]
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
            cursor.execute(search, params)
            conn.execute(b"ROLLBACK TO SAVEPOINT shareddb_search")
            conn.execute(b"RELEASE SAVEPOINT shareddb_search")
    except psycopg.Error:
        if not conn.broken and conn.info.transaction_status == INERROR:
            conn.execute(b"ROLLBACK TO SAVEPOINT shareddb_search")
            conn.execute(b"RELEASE SAVEPOINT shareddb_search")
        raise
    return cursor.fetchall()
