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
import re
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Final, LiteralString

import numpy as np
import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool, PoolTimeout

from ._embedding import (
    MAX_HALFVEC_INDEX_DIMENSION,
    MAX_VECTOR_INDEX_DIMENSION,
    Float32Array,
    Method,
    Metric,
    short_name,
    vector_index_name,
)
from ._pg import ITERATIVE_SCAN_PGVECTOR, PgConnection, binary_cursor, version_tuple
from ._vector_batches import Batch
from .errors import DimensionMismatchError, InvalidArgumentError
from .vectors import IndexInfo, SearchResult

logger = logging.getLogger("shareddb.vectors")

IDLE = TransactionStatus.IDLE
INTRANS = TransactionStatus.INTRANS
INERROR = TransactionStatus.INERROR

OPERATORS: Final[dict[str, LiteralString]] = {"cosine": "<=>", "l2": "<->", "inner_product": "<#>"}
OPCLASS_SUFFIX: Final[dict[str, LiteralString]] = {
    "cosine": "cosine_ops",
    "l2": "l2_ops",
    "inner_product": "ip_ops",
}
METRIC_OF_OPCLASS: Final = {"cosine": "cosine", "l2": "l2", "ip": "inner_product"}
DEFAULT_EF_SEARCH: Final = 40  # pgvector's default hnsw.ef_search
DEFAULT_HNSW = {"m": 16, "ef_construction": 64}
DEFAULT_IVFFLAT_LISTS: Final = 100
# create_index raises maintenance_work_mem for its session up to this (kB): 1 GB.
MAX_BUILD_MEMORY_KB: Final = 1024 * 1024
PROGRESS_AFTER: Final = 3.0  # seconds of index build before progress is logged
PROGRESS_EVERY: Final = 10.0

COPY_SIGNATURE: Final = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
COPY_TRAILER: Final = b"\xff\xff"
COPY_CHUNK: Final = 120 * 1024  # below psycopg's MAX_BUFFER_SIZE: written without copies
_ROW_HEAD = struct.Struct(">hi")  # field count 4, then the id's length
_INT32 = struct.Struct(">i")
_DIMENSION_AND_VECTOR_HEAD = struct.Struct(">iiiHH")  # len 4, dimension, len, dim, unused

STAGING: Final = sql.Identifier("shareddb_vector_staging")

# A result row (id, distance) as a SearchResult without a Python-level call per row.
_search_result: Final = functools.partial(tuple.__new__, SearchResult)

UPSERT: Final = sql.SQL(
    "INSERT INTO {table} AS t (qualified_task_id, backend, dimension, embedding) "
    "VALUES (%s, %s, %s, %s) "
    "ON CONFLICT (qualified_task_id) DO UPDATE SET backend = EXCLUDED.backend, "
    "embedding = EXCLUDED.embedding, updated_at = clock_timestamp() "
    "WHERE t.dimension = EXCLUDED.dimension RETURNING 1"
)
CREATE_STAGING: Final = sql.SQL(
    "CREATE TEMPORARY TABLE {staging} (qualified_task_id text NOT NULL, backend text NOT NULL, "
    "dimension integer NOT NULL, embedding vector NOT NULL) ON COMMIT DROP"
)
PROBE: Final = sql.SQL(
    "SELECT EXISTS (SELECT 1 FROM {table} WHERE qualified_task_id = ANY(%s::text[]))"
)
PROBE_IDS: Final = 64
GET: Final = sql.SQL("SELECT embedding FROM {table} WHERE qualified_task_id = %s")
DIMENSION_OF: Final = sql.SQL("SELECT dimension FROM {table} WHERE qualified_task_id = %s")
DELETE: Final = sql.SQL("DELETE FROM {table} WHERE qualified_task_id = %s")
COUNT: Final = sql.SQL("SELECT count(*) FROM {table}")
COUNT_DIMENSION: Final = sql.SQL("SELECT count(*) FROM {table} WHERE dimension = %s")
# The stored dimensions, read with a skip scan of the (dimension, backend) index.
DIMENSIONS: Final = sql.SQL(
    "WITH RECURSIVE dims(d) AS ("
    "SELECT min(dimension) FROM {table} "
    "UNION ALL SELECT (SELECT min(dimension) FROM {table} WHERE dimension > dims.d) "
    "FROM dims WHERE dims.d IS NOT NULL) "
    "SELECT d FROM dims WHERE d IS NOT NULL LIMIT 20"
)
INDEXES: Final = (
    "SELECT c.relname, n.nspname, am.amname, opc.opcname, c.reloptions, "
    "pg_get_expr(i.indpred, i.indrelid), pg_relation_size(c.oid), i.indisvalid, "
    "pg_get_indexdef(c.oid) "
    "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
    "JOIN pg_namespace n ON n.oid = c.relnamespace "
    "JOIN pg_am am ON am.oid = c.relam "
    "JOIN pg_opclass opc ON opc.oid = i.indclass[0] "
    "WHERE i.indrelid = to_regclass(quote_ident(%s)) AND am.amname IN ('hnsw', 'ivfflat') "
    "ORDER BY c.relname"
)
ANALYZE: Final = sql.SQL("ANALYZE {table} (dimension, backend)")
PROGRESS: Final = (
    "SELECT phase, tuples_done, tuples_total, blocks_done, blocks_total "
    "FROM pg_stat_progress_create_index WHERE pid = %s"
)
PGVECTOR_VERSION: Final = "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
MAINTENANCE_WORK_MEM_KB: Final = (
    "SELECT setting::bigint * CASE unit WHEN 'kB' THEN 1 WHEN 'MB' THEN 1024 "
    "WHEN 'GB' THEN 1048576 ELSE 1 END, current_setting('maintenance_work_mem') "
    "FROM pg_settings WHERE name = 'maintenance_work_mem'"
)
SET_MAINTENANCE_WORK_MEM: Final = "SELECT set_config('maintenance_work_mem', %s, %s)"

CREATE_TABLE: Final = sql.SQL(
    "CREATE TABLE IF NOT EXISTS {table} ("
    "id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, "
    "qualified_task_id text NOT NULL, "
    "backend text NOT NULL, "
    "dimension integer NOT NULL, "
    "embedding vector NOT NULL, "
    "created_at timestamptz NOT NULL DEFAULT now(), "
    "updated_at timestamptz NOT NULL DEFAULT now(), "
    "CONSTRAINT {key} UNIQUE (qualified_task_id), "
    "CONSTRAINT {id_check} CHECK (qualified_task_id <> ''), "
    "CONSTRAINT {dimension_check} CHECK (dimension BETWEEN 1 AND 16000), "
    "CONSTRAINT {embedding_check} CHECK (vector_dims(embedding) = dimension))"
)
CREATE_DIMENSION_INDEX: Final = sql.SQL(
    "CREATE INDEX IF NOT EXISTS {index} ON {table} (dimension, backend)"
)


class PgVectors:
    """The PostgreSQL half of VectorStorage; `conn` None means a pooled connection of ours."""

    def __init__(self, db: Any, table: str) -> None:
        self._db = db
        self._table = table
        self._ident = sql.Identifier(table)
        self._statements: dict[tuple[Any, ...], bytes] = {}
        self._iterative: bool | None = None

    # -- plumbing ----------------------------------------------------------------------

    def _connection(
        self, conn: PgConnection | None, *, autocommit: bool
    ) -> AbstractContextManager[PgConnection]:
        """The caller's connection, or a pooled one (autocommit: one statement, one trip).

        Pooled connections rest in autocommit mode, so the autocommit checkout
        switches nothing; otherwise `DbService.connection()` wraps the block in a
        transaction.
        """
        if conn is not None:
            return nullcontext(conn)
        if autocommit:
            return self._db._autocommit()  # type: ignore[no-any-return]
        return self._db.connection()  # type: ignore[no-any-return]

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
            version = self._db.pgvector_version
            if version is None:
                row = conn.execute(PGVECTOR_VERSION).fetchone()
                version = str(row[0]) if row else "0"
            self._iterative = version_tuple(version) >= ITERATIVE_SCAN_PGVECTOR
        return self._iterative

    # -- writes ------------------------------------------------------------------------

    def upsert(
        self, task_id: str, backend: str, embedding: Float32Array, conn: PgConnection | None
    ) -> None:
        statement = self._simple("upsert", UPSERT)
        params = (task_id, backend, embedding.shape[0], embedding)
        with self._connection(conn, autocommit=True) as c:
            for _ in range(3):
                if c.execute(statement, params).fetchone() is not None:
                    return
                stored = self._stored_dimension(c, task_id)
                if stored is not None:
                    raise _mismatch(task_id, stored, embedding.shape[0])
            raise DimensionMismatchError(  # pragma: no cover - needs a concurrent writer
                f"qualified_task_id {task_id!r} kept changing dimension under concurrent "
                "writers; try again"
            )

    def _stored_dimension(self, conn: PgConnection, task_id: str) -> int | None:
        row = conn.execute(self._simple("dimension_of", DIMENSION_OF), (task_id,)).fetchone()
        return None if row is None else int(row[0])

    def upsert_many(self, batches: Iterator[Batch], conn: PgConnection | None) -> int:
        total = 0
        direct: bool | None = None  # COPY straight into the table? None: not decided yet
        staging = False
        with self._connection(conn, autocommit=False) as c, _savepoint(c, "shareddb_upsert_many"):
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
                        with _savepoint(c, "shareddb_copy"):
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
        raise _mismatch(str(row[0]), int(row[1]), int(row[2]))

    def delete(self, task_id: str, conn: PgConnection | None) -> bool:
        with self._connection(conn, autocommit=True) as c:
            return c.execute(self._simple("delete", DELETE), (task_id,)).rowcount > 0

    # -- reads -------------------------------------------------------------------------

    def get(self, task_id: str, conn: PgConnection | None) -> Float32Array | None:
        with self._connection(conn, autocommit=True) as c:
            cursor = c.cursor(binary=True) if conn is not None else binary_cursor(c)
            row = cursor.execute(self._simple("get", GET), (task_id,)).fetchone()
        if row is None:
            return None
        return np.array(row[0].to_numpy(), dtype=np.float32)

    def count(self, dimension: int | None, conn: PgConnection | None) -> int:
        with self._connection(conn, autocommit=True) as c:
            if dimension is None:
                row = c.execute(self._simple("count", COUNT)).fetchone()
            else:
                row = c.execute(self._simple("count_dim", COUNT_DIMENSION), (dimension,)).fetchone()
        assert row is not None
        return int(row[0])

    def _dimensions(self, conn: PgConnection) -> list[int]:
        return [int(r[0]) for r in conn.execute(self._simple("dimensions", DIMENSIONS))]

    # -- search ------------------------------------------------------------------------

    def _plan(
        self,
        conn: PgConnection,
        query: Float32Array,
        k: int,
        metric: Metric,
        backend: str | None,
        exact: bool,
        ef_search: int | None,
        probes: int | None,
    ) -> tuple[bytes, tuple[Any, ...], tuple[str, ...], tuple[Any, ...]]:
        """The search statement and its params, and the settings it applies and theirs."""
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

    def search(
        self,
        query: Float32Array,
        k: int,
        metric: Metric,
        backend: str | None,
        exact: bool,
        ef_search: int | None,
        probes: int | None,
        conn: PgConnection | None,
    ) -> list[SearchResult]:
        if conn is None:
            # The lean path: a pooled connection resting in autocommit mode, its
            # reused binary cursor, one autocommitted statement (its settings end
            # with it), one round trip.
            with self._db._autocommit() as c:
                search, params, _, _ = self._plan(
                    c, query, k, metric, backend, exact, ef_search, probes
                )
                rows = binary_cursor(c).execute(search, params).fetchall()
                if not rows:
                    self._check_dimension(c, query.shape[0])
            return list(map(_search_result, rows))
        search, params, settings, _ = self._plan(
            conn, query, k, metric, backend, exact, ef_search, probes
        )
        if settings and not (conn.autocommit and conn.info.transaction_status == IDLE):
            rows = _in_rolled_back_savepoint(conn, search, params)
        else:  # one autocommitted statement: its settings end with it
            rows = conn.cursor(binary=True).execute(search, params).fetchall()
        if not rows:
            self._check_dimension(conn, query.shape[0])
        return list(map(_search_result, rows))

    def _check_dimension(self, conn: PgConnection, dimension: int) -> None:
        """After an empty result: DimensionMismatchError if only other dimensions are stored."""
        stored = self._dimensions(conn)
        if stored and dimension not in stored:
            shown = ", ".join(map(str, stored))
            raise DimensionMismatchError(
                f"query has {dimension} dimensions but {self._table} stores embeddings of "
                f"{shown} dimensions only; embed the query with the same model as the "
                "stored vectors"
            )

    def explain(
        self,
        query: Float32Array,
        k: int,
        metric: Metric,
        backend: str | None,
        exact: bool,
        ef_search: int | None,
        probes: int | None,
        conn: PgConnection | None,
    ) -> str:
        with (
            self._connection(conn, autocommit=False) as c,
            _savepoint(c, "shareddb_explain", rollback=True),
        ):
            search, params, settings, values = self._plan(
                c, query, k, metric, backend, exact, ef_search, probes
            )
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

    def create_index(
        self,
        dimension: int,
        method: Method,
        metric: Metric,
        m: int,
        ef_construction: int,
        lists: int | None,
        concurrently: bool,
        conn: PgConnection | None,
    ) -> str:
        if concurrently and conn is not None:
            raise InvalidArgumentError(
                "create_index(concurrently=True) can't run inside a transaction (conn=); "
                "call it without conn="
            )
        name = vector_index_name(self._table, method, metric, dimension)
        with self._connection(conn, autocommit=concurrently) as c:
            rows = self._count_dimension(c, dimension)
            parameters: dict[str, int]
            if method == "hnsw":
                parameters = {"m": m, "ef_construction": ef_construction}
            else:
                parameters = {"lists": lists if lists is not None else max(1, rows // 1000)}
                parameters["lists"] = min(parameters["lists"], 32_768)
            existing = next((i for i in self._indexes(c) if i.name == name), None)
            if existing is not None:
                if existing.valid and _same_build(existing, parameters, lists is None):
                    logger.debug("index %s exists; nothing to build", name)
                    return name
                if existing.valid:
                    raise InvalidArgumentError(
                        f"index {name} exists with {_describe(existing.parameters)}, not "
                        f"{_describe(parameters)}; drop_index({name!r}) first to rebuild it"
                    )
                logger.warning("dropping invalid index %s (a failed CONCURRENTLY build)", name)
                self._drop(c, existing, concurrently)
            statement = create_index_statement(
                self._ident, name, dimension, method, metric, parameters, concurrently
            )
            needed_kb = build_memory_kb(method, rows, dimension, parameters)
            started = time.monotonic()
            with (
                _maintenance_memory(c, needed_kb, session=concurrently),
                _progress(self._db, c.info.backend_pid, name),
            ):
                c.execute(statement)
            # Fresh statistics for "dimension = d" let the planner pick the new index.
            c.execute(self._simple("analyze", ANALYZE))
            elapsed = time.monotonic() - started
            log = logger.info if elapsed >= PROGRESS_AFTER else logger.debug
            log("built index %s on %s rows in %.1f s", name, f"{rows:,}", elapsed)
        return name

    def _count_dimension(self, conn: PgConnection, dimension: int) -> int:
        row = conn.execute(self._simple("count_dim", COUNT_DIMENSION), (dimension,)).fetchone()
        assert row is not None
        return int(row[0])

    def drop_index(self, name: str, concurrently: bool, conn: PgConnection | None) -> None:
        if concurrently and conn is not None:
            raise InvalidArgumentError(
                "drop_index(concurrently=True) can't run inside a transaction (conn=); "
                "call it without conn="
            )
        with self._connection(conn, autocommit=concurrently) as c:
            found = next((i for i in self._index_rows(c) if i[0].name == name), None)
            if found is None:
                known = ", ".join(i.name for i in self._indexes(c)) or "none"
                raise InvalidArgumentError(
                    f"{name!r} is not a vector index of table {self._table} (its vector "
                    f"indexes: {known}); see indexes()"
                )
            self._drop(c, found[0], concurrently, schema=found[1])

    def _drop(
        self, conn: PgConnection, index: IndexInfo, concurrently: bool, schema: str | None = None
    ) -> None:
        target = sql.Identifier(schema, index.name) if schema else sql.Identifier(index.name)
        verb = sql.SQL(
            "DROP INDEX CONCURRENTLY IF EXISTS" if concurrently else "DROP INDEX IF EXISTS"
        )
        conn.execute(sql.SQL("{} {}").format(verb, target))

    def indexes(self, conn: PgConnection | None) -> list[IndexInfo]:
        with self._connection(conn, autocommit=True) as c:
            return self._indexes(c)

    def _indexes(self, conn: PgConnection) -> list[IndexInfo]:
        return [info for info, _ in self._index_rows(conn)]

    def _index_rows(self, conn: PgConnection) -> list[tuple[IndexInfo, str]]:
        result = []
        for (
            name,
            schema,
            method,
            opclass,
            options,
            predicate,
            size,
            valid,
            definition,
        ) in conn.execute(INDEXES, (self._table,)):
            result.append(
                (
                    parse_index(name, method, opclass, options, predicate, size, valid, definition),
                    str(schema),
                )
            )
        return result

    def create_table(self, conn: PgConnection | None) -> None:
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


# -- statements ------------------------------------------------------------------------

COPY_INTO_TABLE: Final = sql.SQL(
    "COPY {table} (qualified_task_id, backend, dimension, embedding) FROM STDIN (FORMAT BINARY)"
)
COPY_INTO_STAGING_BYTES: Final = (
    b"COPY pg_temp.shareddb_vector_staging (qualified_task_id, backend, dimension, embedding) "
    b"FROM STDIN (FORMAT BINARY)"
)
UPSERT_FROM_STAGING_T: Final = sql.SQL(
    "INSERT INTO {table} AS t (qualified_task_id, backend, dimension, embedding) "
    "SELECT qualified_task_id, backend, dimension, embedding "
    "FROM pg_temp.shareddb_vector_staging "
    "ON CONFLICT (qualified_task_id) DO UPDATE SET backend = EXCLUDED.backend, "
    "embedding = EXCLUDED.embedding, updated_at = clock_timestamp() "
    "WHERE t.dimension = EXCLUDED.dimension"
)
STAGING_MISMATCH_T: Final = sql.SQL(
    "SELECT s.qualified_task_id, t.dimension, s.dimension "
    "FROM pg_temp.shareddb_vector_staging s "
    "JOIN {table} t ON t.qualified_task_id = s.qualified_task_id "
    "WHERE t.dimension <> s.dimension LIMIT 1"
)
SHOW_SEARCH_SETTINGS: Final = (
    "SELECT concat_ws(', ', 'hnsw.ef_search = ' || current_setting('hnsw.ef_search', true), "
    "'ivfflat.probes = ' || current_setting('ivfflat.probes', true), "
    "'hnsw.iterative_scan = ' || current_setting('hnsw.iterative_scan', true))"
)
_SETTINGS: Final[dict[str, LiteralString]] = {
    "ef_search": "set_config('hnsw.ef_search', %s, true)",
    # Raise ef_search to k without lowering a larger configured value.
    "ef_search_at_least": (
        "set_config('hnsw.ef_search', GREATEST(COALESCE(NULLIF("
        "current_setting('hnsw.ef_search', true), '')::integer, 40), %s::integer)::text, true)"
    ),
    "probes": "set_config('ivfflat.probes', %s, true)",
    "iterative": (
        "set_config('hnsw.iterative_scan', 'relaxed_order', true), "
        "set_config('ivfflat.iterative_scan', 'relaxed_order', true)"
    ),
}


def settings_expression(names: Iterable[str]) -> sql.Composed:
    """``concat(set_config(..., true), ...)``: the search's transaction-local settings."""
    return (
        sql.SQL("concat(") + sql.SQL(", ").join(sql.SQL(_SETTINGS[n]) for n in names) + sql.SQL(")")
    )


def settings_select(names: Iterable[str]) -> sql.Composed:
    return sql.SQL("SELECT ") + settings_expression(names)


def distance_expression(dimension: int, metric: Metric, exact: bool) -> sql.Composed:
    """The ORDER BY expression; approximate searches use the index's own expression."""
    operator = sql.SQL(OPERATORS[metric])
    if exact:
        return sql.SQL("embedding {op} %s").format(op=operator)
    d = sql.Literal(dimension)
    if MAX_VECTOR_INDEX_DIMENSION < dimension <= MAX_HALFVEC_INDEX_DIMENSION:
        return sql.SQL("(embedding::halfvec({d})) {op} (%s::halfvec({d}))").format(d=d, op=operator)
    return sql.SQL("(embedding::vector({d})) {op} %s").format(d=d, op=operator)


def search_statement(
    table: sql.Identifier,
    dimension: int,
    metric: Metric,
    k: int,
    filtered: bool,
    exact: bool,
    settings: tuple[str, ...] = (),
) -> sql.Composed:
    """The search SELECT: nearest `k` rows of one dimension, optionally of one backend.

    ``WHERE dimension = d`` matches the partial index's predicate and the distance
    expression matches its expression, so the planner can scan the index in
    distance order. Exact searches order ties by id (insertion order), like SQLite.

    With `settings` the statement applies them itself, in one round trip: a one-row
    subquery calls ``set_config(..., is_local => true)`` and the search is a LATERAL
    subquery that refers to it. Its reference becomes a one-time filter (or the
    inner side of a nested loop), which the executor evaluates before the index scan
    starts, so pgvector reads the new values when it begins; ``is_local`` ends them
    with the statement's transaction. With iterative scans the index returns rows in
    relaxed order, so the k rows are re-sorted exactly (``+ 0`` keeps the planner
    from trusting the subquery's order).
    """
    where = sql.SQL("dimension = {d}").format(d=sql.Literal(dimension))
    if filtered:
        where = where + sql.SQL(" AND backend = %s")
    if settings:
        where = where + sql.SQL(" AND s.applied IS NOT NULL")
    order = sql.SQL("distance, id") if exact else sql.SQL("distance")
    inner = sql.SQL(
        "SELECT qualified_task_id, {expr} AS distance FROM {table} WHERE {where} "
        "ORDER BY {order} LIMIT {k}"
    ).format(
        expr=distance_expression(dimension, metric, exact),
        table=table,
        where=where,
        order=order,
        k=sql.Literal(k),
    )
    if not settings:
        return inner
    resort = sql.SQL(" ORDER BY r.distance + 0") if "iterative" in settings else sql.SQL("")
    return sql.SQL(
        "SELECT r.qualified_task_id, r.distance FROM (SELECT {applied}) AS s(applied), "
        "LATERAL ({inner}) AS r{resort}"
    ).format(applied=settings_expression(settings), inner=inner, resort=resort)


def create_index_statement(
    table: sql.Identifier,
    name: str,
    dimension: int,
    method: Method,
    metric: Metric,
    parameters: dict[str, int],
    concurrently: bool,
) -> sql.Composed:
    halfvec = dimension > MAX_VECTOR_INDEX_DIMENSION
    kind = sql.SQL("halfvec" if halfvec else "vector")
    opclass = sql.SQL(("halfvec_" if halfvec else "vector_") + OPCLASS_SUFFIX[metric])
    options = sql.SQL(", ").join(
        sql.SQL("{} = {}").format(sql.SQL(key), sql.Literal(value))  # keys are our own constants
        for key, value in parameters.items()
        if key in ("m", "ef_construction", "lists")
    )
    return sql.SQL(
        "CREATE INDEX {concurrently}IF NOT EXISTS {name} ON {table} USING {method} "
        "((embedding::{kind}({d})) {opclass}) WITH ({options}) WHERE dimension = {d}"
    ).format(
        concurrently=sql.SQL("CONCURRENTLY " if concurrently else ""),
        name=sql.Identifier(name),
        table=table,
        method=sql.SQL("hnsw" if method == "hnsw" else "ivfflat"),
        kind=kind,
        d=sql.Literal(dimension),
        opclass=opclass,
        options=options,
    )


def build_memory_kb(method: str, rows: int, dimension: int, parameters: dict[str, int]) -> int:
    """Estimated maintenance_work_mem (kB) for building the index in memory.

    HNSW keeps the whole graph in memory while it fits: per element the vector, its
    neighbour lists (2m at layer 0, m on the few upper layers, 16 bytes a candidate)
    and about 200 bytes of bookkeeping. IVFFlat needs its k-means sample: 50 rows a
    list, at least 10,000. Both get 25 % headroom.
    """
    value = 8 + (2 if dimension > MAX_VECTOR_INDEX_DIMENSION else 4) * dimension
    if method == "hnsw":
        m = parameters.get("m", 16)
        per_element = value + (2 * m + m // 2) * 16 + 200
        needed = rows * per_element
    else:
        lists = parameters.get("lists", DEFAULT_IVFFLAT_LISTS)
        samples = min(rows, max(lists * 50, 10_000))
        needed = (samples + lists) * value * 2
    return int(needed * 1.25 / 1024) + 1024


def parse_index(
    name: str,
    method: str,
    opclass: str,
    options: list[str] | None,
    predicate: str | None,
    size: int,
    valid: bool,
    definition: str,
) -> IndexInfo:
    """IndexInfo from the catalog: dimension from the predicate, metric from the opclass."""
    match = re.search(r"dimension\s*=\s*(\d+)", predicate or "") or re.search(
        r"(?:vector|halfvec)\((\d+)\)", definition
    )
    dimension = int(match.group(1)) if match else 0
    family = re.sub(r"^(vector|halfvec|bit|sparsevec)_|_ops$", "", opclass)
    parameters: dict[str, int] = (
        dict(DEFAULT_HNSW) if method == "hnsw" else {"lists": DEFAULT_IVFFLAT_LISTS}
    )
    for option in options or []:
        key, _, value = option.partition("=")
        if key in parameters and value.isdigit():
            parameters[key] = int(value)
    return IndexInfo(
        name=name,
        dimension=dimension,
        metric=METRIC_OF_OPCLASS.get(family, family),
        method=method,
        parameters=parameters,
        size=int(size),
        valid=bool(valid),
        halfvec=opclass.startswith("halfvec"),
    )


def _same_build(existing: IndexInfo, parameters: dict[str, int], default_lists: bool) -> bool:
    if existing.method == "ivfflat" and default_lists:
        return True  # lists=None accepts whatever the index was built with
    return all(existing.parameters.get(k) == v for k, v in parameters.items())


def _describe(parameters: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in parameters.items())


def _mismatch(task_id: str, stored: int, given: int) -> DimensionMismatchError:
    return DimensionMismatchError(
        f"qualified_task_id {task_id!r} is stored with {stored} dimensions, got {given}; "
        "an embedding keeps its dimension: delete it first to store one of another size"
    )


# -- copy stream -----------------------------------------------------------------------


def copy_chunks(batch: Batch) -> Iterator[bytes]:
    """The batch as a binary COPY stream, in chunks: signature, rows, trailer.

    Each row: 4 fields; text id; text backend; int4 dimension; vector (uint16
    dimension, uint16 unused, big-endian float32 values), as pgvector's vector_recv
    reads it. Vectors are converted to big-endian with numpy; the only per-row
    Python work is the row's small header. Chunks are built one at a time, so the
    server inserts the first rows while the next chunk is being built.
    """
    n = len(batch)
    yield COPY_SIGNATURE
    if n == 0:
        yield COPY_TRAILER
        return
    backend_fields = {
        b: _INT32.pack(len(e)) + e for b in set(batch.backends) for e in (b.encode(),)
    }
    tails = {
        d: _DIMENSION_AND_VECTOR_HEAD.pack(4, d, 4 + 4 * d, d, 0) for d in set(batch.dimensions)
    }
    pack_head = _ROW_HEAD.pack
    ids, backends, dimensions = batch.ids, batch.backends, batch.dimensions
    matrix, vectors = batch.matrix, batch.vectors
    average = 4 * sum(dimensions[:64]) // min(n, 64) + 64
    step = max(1, COPY_CHUNK // average)
    for start in range(0, n, step):
        stop = min(start + step, n)
        values: list[Any]
        if matrix is not None:
            block = np.ascontiguousarray(matrix[start:stop], dtype=">f4")
            width = block.shape[1] * 4
            flat = block.reshape(-1).view(np.uint8).data
            values = [flat[i : i + width] for i in range(0, (stop - start) * width, width)]
        else:
            assert vectors is not None
            values = [v.astype(">f4").tobytes() for v in vectors[start:stop]]
        parts: list[Any] = [None] * (2 * (stop - start))
        parts[0::2] = [
            pack_head(4, len(e)) + e + backend_fields[b] + tails[d]
            for e, b, d in zip(
                (i.encode() for i in ids[start:stop]),
                backends[start:stop],
                dimensions[start:stop],
                strict=True,
            )
        ]
        parts[1::2] = values
        yield b"".join(parts)
    yield COPY_TRAILER


# -- transactions and settings ---------------------------------------------------------


@contextmanager
def _savepoint(
    conn: PgConnection, name: LiteralString, *, rollback: bool = False
) -> Iterator[None]:
    """All or nothing inside whatever transaction `conn` is in (or a new one).

    A savepoint joins the caller's transaction instead of committing it; on an
    autocommit connection outside a transaction, a transaction of its own. With
    `rollback`, the work is always undone (read-only blocks with SET LOCAL).
    """
    if conn.autocommit and conn.info.transaction_status == IDLE:
        with conn.transaction(force_rollback=rollback):
            yield
        return
    conn.execute(f"SAVEPOINT {name}")
    try:
        yield
    except BaseException:
        if not conn.broken and conn.info.transaction_status in (INTRANS, INERROR):
            conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
            conn.execute(f"RELEASE SAVEPOINT {name}")
        raise
    if rollback:
        conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
    conn.execute(f"RELEASE SAVEPOINT {name}")


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


@contextmanager
def _maintenance_memory(conn: PgConnection, needed_kb: int, *, session: bool) -> Iterator[None]:
    """Raise maintenance_work_mem to `needed_kb` (capped) for this build, then restore it."""
    row = conn.execute(MAINTENANCE_WORK_MEM_KB).fetchone()
    assert row is not None
    current_kb, current = int(row[0]), str(row[1])
    target_kb = min(needed_kb, MAX_BUILD_MEMORY_KB)
    if target_kb <= current_kb:
        yield
        return
    logger.info(
        "raising maintenance_work_mem from %s to %d MB for this index build",
        current,
        target_kb // 1024,
    )
    conn.execute(SET_MAINTENANCE_WORK_MEM, (f"{target_kb}kB", not session))
    try:
        yield
    finally:
        if not conn.broken and conn.info.transaction_status in (IDLE, INTRANS):
            conn.execute(SET_MAINTENANCE_WORK_MEM, (current, not session))


@contextmanager
def _progress(db: Any, pid: int, name: str) -> Iterator[None]:
    """Log pg_stat_progress_create_index for `pid` while a build runs past PROGRESS_AFTER."""
    pool = db.get_sql()
    if not isinstance(pool, ConnectionPool):
        yield
        return
    stop = threading.Event()
    watcher = threading.Thread(
        target=_watch_progress,
        args=(pool, pid, name, stop),
        name=f"shareddb-progress-{name}",
        daemon=True,
    )
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join(timeout=5.0)


def _watch_progress(pool: ConnectionPool[Any], pid: int, name: str, stop: threading.Event) -> None:
    started = time.monotonic()
    if stop.wait(PROGRESS_AFTER):
        return
    while not stop.is_set():
        try:
            with pool.connection(timeout=2.0) as conn:  # in autocommit mode, as all of ours
                row = conn.execute(PROGRESS, (pid,)).fetchone()
        except (PoolTimeout, psycopg.Error) as e:
            logger.debug("no progress for index %s: %s", name, e)
            row = None
        if row is not None:
            phase, tuples_done, tuples_total, blocks_done, blocks_total = row
            if tuples_total:
                share = 100 * tuples_done / tuples_total
                done = f"{tuples_done:,} of {tuples_total:,} tuples ({share:.0f}%)"
            elif blocks_total:
                share = 100 * blocks_done / blocks_total
                done = f"{blocks_done:,} of {blocks_total:,} blocks ({share:.0f}%)"
            else:
                done = "running"
            logger.info(
                "building index %s: %s, %s after %.0f s",
                name,
                phase,
                done,
                time.monotonic() - started,
            )
        if stop.wait(PROGRESS_EVERY):
            return
