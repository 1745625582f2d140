"""VectorStorage on PostgreSQL + pgvector: binary COPY, records, and the table's reads.

* Single-row writes and reads are one autocommitted statement, one round trip.
* ``upsert_many`` builds the binary COPY stream itself with numpy (`shareddb._vectors.codec`:
  big-endian float32 rows, no per-value Python objects). It copies straight into the
  table, under a savepoint, while none of the ids exists yet (a probe of a few ids of
  the first batch decides); the unique index has the last word: a UniqueViolation (an
  id that exists, or one a concurrent writer just committed) rolls the savepoint back,
  and the call continues through a temporary staging table and one ``MERGE`` per batch,
  which keeps the record fields a row leaves None. A concurrent writer inserting one of
  the ids between the two makes MERGE fail; it is run again, so no table lock is needed.
* Searches: `shareddb._engines.postgres.vector_search`; indexes: `index_build`.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, Final, LiteralString

import numpy as np
import psycopg
from psycopg import sql

from shareddb._core.types import Connection, PgConnection
from shareddb._engines.postgres.connect import binary_cursor
from shareddb._engines.postgres.index_build import PostgresIndexes
from shareddb._engines.postgres.vector_search import PostgresSearch, row_conditions
from shareddb._engines.postgres.vector_sql import (
    COPY_INTO,
    COUNT_WHERE,
    CREATE_DIMENSION_INDEX,
    CREATE_METADATA_INDEX,
    CREATE_STAGING,
    CREATE_TABLE,
    DELETE,
    DELETE_MANY,
    DIMENSION_OF,
    EXISTS,
    GET,
    GET_MANY,
    GET_RECORD,
    IDS,
    MERGE_FROM_STAGING,
    PROBE,
    PROBE_IDS,
    SAMPLE_IDS,
    STAGING,
    STAGING_COLUMNS,
    STAGING_MISMATCH_T,
    STALE,
    TABLE_COLUMNS,
    UPSERT,
    StatementCache,
)
from shareddb._vectors.batches import FIELDS, Batch
from shareddb._vectors.codec import copy_chunks
from shareddb._vectors.request import IndexRequest, RowFilter, SearchRequest
from shareddb._vectors.results import (
    EmbeddingRecord,
    IndexInfo,
    SearchHit,
    SearchResult,
    record_from_row,
)
from shareddb._vectors.validation import (
    Float32Array,
    short_name,
    stored_dimension_mismatch,
)
from shareddb.errors import DimensionMismatchError, InvalidArgumentError

if TYPE_CHECKING:
    from shareddb._engines.postgres.engine import PostgresEngine

logger = logging.getLogger("shareddb.vectors")

IDS_PER_FETCH: Final = 10_000  # ids() reads its server-side cursor in pages of this many
MERGE_TRIES: Final = 3  # MERGE meets a concurrent insert of one of its ids at most this often


class PostgresVectors:
    """`VectorStorage` on PostgreSQL; `conn` None means a pooled connection of ours."""

    def __init__(self, engine: PostgresEngine, table: str) -> None:
        self._engine = engine
        self._table = table
        self._statements = StatementCache(table)
        self._ident = self._statements.ident
        self._simple = self._statements.simple
        self._search = PostgresSearch(engine, table, self._statements)
        self._indexes = PostgresIndexes(engine, table)

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

    # -- writes ------------------------------------------------------------------------

    def upsert(
        self,
        task_id: str,
        default_backend: str,
        embedding: Float32Array,
        fields: dict[str, str | None],
        conn: Connection | None,
    ) -> None:
        statement = self._simple("upsert", UPSERT)
        params = {
            "id": task_id,
            "default_backend": default_backend,
            "dimension": embedding.shape[0],
            "embedding": embedding,
            **fields,
        }
        with self._connection(conn, autocommit=True) as c:
            for _ in range(3):
                if c.execute(statement, params).fetchone() is not None:
                    return
                row = c.execute(self._simple("dimension_of", DIMENSION_OF), (task_id,))
                stored = row.fetchone()
                if stored is not None:
                    raise stored_dimension_mismatch(task_id, int(stored[0]), embedding.shape[0])
            raise DimensionMismatchError(  # pragma: no cover - needs a concurrent writer
                f"qualified_task_id {task_id!r} kept changing dimension under concurrent writers",
                fix="try again",
            )

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
                            self._copy_new(c, rows)
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
                self._copy_staged(c, rows)
                self._merge(c, len(rows))
            if staging:
                c.execute(b"DROP TABLE pg_temp.shareddb_vector_staging")
        return total

    def _copy_new(self, conn: PgConnection, batch: Batch) -> None:
        """New rows straight into the table: a given label, else the id's prefix."""
        extras = [name for name in FIELDS if name in batch.fields and name != "backend"]
        labels = batch.fields.get("backend")
        backends = (
            batch.backends
            if labels is None
            else [given or default for given, default in zip(labels, batch.backends, strict=True)]
        )
        columns = (*TABLE_COLUMNS, *extras)
        self._copy(conn, self._copy_into(self._ident, columns), batch, backends, extras, True)

    def _copy_staged(self, conn: PgConnection, batch: Batch) -> None:
        extras = [name for name in FIELDS if name in batch.fields]
        columns = (*STAGING_COLUMNS, *extras)
        staging = sql.Identifier("pg_temp", "shareddb_vector_staging")
        statement = self._copy_into(staging, columns)
        self._copy(conn, statement, batch, batch.backends, extras, False)

    def _copy_into(self, table: sql.Identifier, columns: tuple[str, ...]) -> bytes:
        return self._statements.statement(
            ("copy", table.as_string(None), columns),
            lambda: COPY_INTO.format(
                table=table, columns=sql.SQL(", ").join(map(sql.Identifier, columns))
            ),
        )

    def _copy(
        self,
        conn: PgConnection,
        statement: bytes,
        batch: Batch,
        backends: list[str],
        extras: Sequence[str],
        new_rows: bool,
    ) -> None:
        with conn.cursor() as cursor, cursor.copy(statement) as copy:
            for chunk in copy_chunks(batch, backends, extras, new_rows=new_rows):
                copy.write(chunk)

    def _merge(self, conn: PgConnection, expected: int) -> None:
        """MERGE the staged rows, again if a concurrent writer inserted one of the ids."""
        statement = self._simple("merge", MERGE_FROM_STAGING)
        for attempt in range(MERGE_TRIES):
            try:
                with self._engine.savepoint(conn, "shareddb_merge"):
                    written = conn.execute(statement).rowcount
                break
            except psycopg.errors.UniqueViolation:
                if attempt == MERGE_TRIES - 1:
                    raise
        if written != expected:
            row = conn.execute(self._simple("staging_mismatch", STAGING_MISMATCH_T)).fetchone()
            if row is None:  # pragma: no cover - a concurrent delete between the two statements
                raise DimensionMismatchError(
                    f"upsert_many into {self._table} could not write every row (rows changed "
                    "concurrently); nothing was written",
                    fix="try again",
                )
            raise stored_dimension_mismatch(str(row[0]), int(row[1]), int(row[2]))

    def delete(self, task_id: str, conn: Connection | None) -> bool:
        with self._connection(conn, autocommit=True) as c:
            return c.execute(self._simple("delete", DELETE), (task_id,)).rowcount > 0

    def delete_many(self, ids: list[str], conn: Connection | None) -> int:
        with self._connection(conn, autocommit=True) as c:
            return c.execute(self._simple("delete_many", DELETE_MANY), (ids,)).rowcount

    # -- reads -------------------------------------------------------------------------

    # Reads run through `engine.read`, which may send them to a replica (and runs them
    # again elsewhere when the replica fails): each is one function of the connection.

    def get(self, task_id: str, conn: Connection | None) -> Float32Array | None:
        statement = self._simple("get", GET)

        def read(c: PgConnection) -> Any:
            cursor = binary_cursor(c) if conn is None else c.cursor(binary=True)
            return cursor.execute(statement, (task_id,)).fetchone()

        row = self._engine.read(read, conn)
        return None if row is None else _array(row[0])

    def get_record(self, task_id: str, conn: Connection | None) -> EmbeddingRecord | None:
        statement = self._simple("get_record", GET_RECORD)

        def read(c: PgConnection) -> Any:
            cursor = binary_cursor(c) if conn is None else c.cursor(binary=True)
            return cursor.execute(statement, (task_id,)).fetchone()

        row = self._engine.read(read, conn)
        if row is None:
            return None
        return record_from_row(row, _array, self._engine.read_time)

    def get_many(self, ids: list[str], conn: Connection | None) -> dict[str, Float32Array]:
        statement = self._simple("get_many", GET_MANY)

        def read(c: PgConnection) -> list[Any]:
            return c.cursor(binary=True).execute(statement, (ids,)).fetchall()

        rows = self._engine.read(read, conn)
        return {str(qid): _array(embedding) for qid, embedding in rows}

    def exists(self, task_id: str, conn: Connection | None) -> bool:
        statement = self._simple("exists", EXISTS)
        row = self._engine.read(lambda c: c.execute(statement, (task_id,)).fetchone(), conn)
        return bool(row and row[0])

    def ids(self, rows: RowFilter, conn: Connection | None) -> Iterator[str]:
        """Streams through a server-side cursor: the ids never sit in memory all at once."""
        conditions, params = row_conditions(rows)
        statement = IDS.format(table=self._ident, where=_all(conditions))
        with (
            self._engine.streaming(conn) as c,
            c.cursor(name=f"shareddb_ids_{uuid.uuid4().hex}") as cursor,  # one per iteration
        ):
            cursor.itersize = IDS_PER_FETCH
            cursor.execute(statement, params)
            for row in cursor:
                yield str(row[0])

    def count(self, rows: RowFilter, conn: Connection | None) -> int:
        conditions, params = row_conditions(rows)
        statement = COUNT_WHERE.format(table=self._ident, where=_all(conditions))
        row = self._engine.read(lambda c: c.execute(statement, params).fetchone(), conn)
        assert row is not None
        return int(row[0])

    def stale(
        self, hashes: list[tuple[str, str]], model: str | None, conn: Connection | None
    ) -> list[str]:
        ids = json.dumps([task_id for task_id, _ in hashes], ensure_ascii=False)
        digests = json.dumps([digest for _, digest in hashes], ensure_ascii=False)
        statement = self._simple("stale", STALE)

        def read(c: PgConnection) -> list[str]:
            rows = c.execute(statement, (ids, digests, model, model))
            return [str(row[0]) for row in rows]

        return self._engine.read(read, conn)

    # -- search and indexes ----------------------------------------------------------------

    def search(
        self, request: SearchRequest, conn: Connection | None
    ) -> list[SearchResult] | list[SearchHit]:
        return self._search.search(request, conn)

    def explain(self, request: SearchRequest, conn: Connection | None) -> str:
        return self._search.explain(request, conn)

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
        return self._engine.read(self._indexes.listing, conn)

    def create_table(self, conn: Connection | None) -> None:
        table = self._table

        def name(suffix: str) -> sql.Identifier:
            return sql.Identifier(short_name(f"{table}_{suffix}"))

        with self._connection(conn, autocommit=False) as c:
            c.execute(
                CREATE_TABLE.format(
                    table=self._ident,
                    key=name("qualified_task_id_key"),
                    id_check=name("qualified_task_id_check"),
                    dimension_check=name("dimension_check"),
                    embedding_check=name("embedding_check"),
                    metadata_check=name("metadata_check"),
                )
            )
            c.execute(
                CREATE_DIMENSION_INDEX.format(
                    index=name("dimension_backend_idx"), table=self._ident
                )
            )
            c.execute(CREATE_METADATA_INDEX.format(index=name("metadata_idx"), table=self._ident))

    def sample_ids(self, dimension: int, size: int, seed: int) -> list[str]:
        with self._engine.statement() as c:
            rows = c.execute(self._simple("sample", SAMPLE_IDS), (dimension, str(seed), size))
            return [str(row[0]) for row in rows]


def _array(vector: Any) -> Float32Array:
    return np.array(vector.to_numpy(), dtype=np.float32)


def _all(conditions: Sequence[LiteralString]) -> sql.Composable:
    return sql.SQL(" AND ".join(conditions) if conditions else "true")


def _concurrently_in_transaction(method: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"{method}(concurrently=True) can't run inside a transaction (conn=)",
        fix="call it without conn=",
    )
