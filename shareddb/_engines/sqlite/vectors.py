"""VectorStorage on SQLite: float32 blobs and JSON-text records in one table.

Writes run in ``BEGIN IMMEDIATE`` (the engine's transaction, or a savepoint in the
caller's); reads in a deferred transaction that sees one WAL snapshot. Searches:
`shareddb._engines.sqlite.vector_search`.
"""

from __future__ import annotations

import json
import logging
import random
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from shareddb._core.types import Connection
from shareddb._engines.sqlite.engine import quote_identifier
from shareddb._engines.sqlite.vector_search import (
    VERSIONS_TABLE,
    SqliteSearch,
    row_conditions,
)
from shareddb._vectors.batches import Batch
from shareddb._vectors.codec import blob_rows, from_blob, to_blob
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
    stored_dimension_mismatch,
    vector_index_name,
)
from shareddb.errors import DimensionMismatchError

if TYPE_CHECKING:
    from shareddb._engines.sqlite.engine import SqliteEngine

logger = logging.getLogger("shareddb.vectors")

IDS_PER_PAGE: Final = 10_000  # ids() reads this many per short read transaction


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class SqliteVectors:
    """`VectorStorage` on SQLite; `conn` None means a transaction of our own."""

    def __init__(self, engine: SqliteEngine, table: str) -> None:
        self._engine = engine
        self._table = table
        self._search = SqliteSearch(engine, table)
        t = quote_identifier(table)
        self._t = t
        # ?1 id, ?2 given label (None keeps), ?3 default label, ?4 dimension, ?5 blob,
        # ?6 metadata, ?7 content hash, ?8 model (None keeps each), ?9 now.
        self._upsert = (
            f"INSERT INTO {t} (qualified_task_id, backend, dimension, embedding, metadata, "
            "content_hash, model, created_at, updated_at) VALUES (?1, coalesce(?2, ?3), ?4, "
            "?5, coalesce(?6, '{}'), ?7, ?8, ?9, ?9) ON CONFLICT (qualified_task_id) DO UPDATE "
            "SET backend = coalesce(?2, backend), embedding = excluded.embedding, "
            "metadata = coalesce(?6, metadata), content_hash = coalesce(?7, content_hash), "
            "model = coalesce(?8, model), updated_at = excluded.updated_at "
            "WHERE dimension = excluded.dimension"
        )
        self._get = f"SELECT embedding FROM {t} WHERE qualified_task_id = ?"
        self._get_record = (
            "SELECT qualified_task_id, backend, dimension, embedding, metadata, content_hash, "
            f"model, created_at, updated_at FROM {t} WHERE qualified_task_id = ?"
        )
        self._in_ids = "qualified_task_id IN (SELECT value FROM json_each(?))"
        self._exists = f"SELECT EXISTS (SELECT 1 FROM {t} WHERE qualified_task_id = ?)"
        self._delete = f"DELETE FROM {t} WHERE qualified_task_id = ?"
        self._ids_of_dimension = f"SELECT qualified_task_id FROM {t} WHERE dimension = ?"
        # Of the given [id, hash] pairs, in their order: those missing, or stored with
        # another hash (or, with a model, made by another model).
        self._stale = (
            "SELECT g.value ->> 0 FROM json_each(?1) AS g "
            f"LEFT JOIN {t} AS t ON t.qualified_task_id = g.value ->> 0 "
            "WHERE t.qualified_task_id IS NULL OR t.content_hash IS NOT g.value ->> 1 "
            "OR (?2 IS NOT NULL AND t.model IS NOT ?2) ORDER BY g.key"
        )

    # -- writes ------------------------------------------------------------------------

    def upsert(
        self,
        task_id: str,
        default_backend: str,
        embedding: Float32Array,
        fields: dict[str, str | None],
        conn: Connection | None,
    ) -> None:
        params = (
            task_id,
            fields["backend"],
            default_backend,
            embedding.shape[0],
            to_blob(embedding),
            fields["metadata"],
            fields["content_hash"],
            fields["model"],
            _now(),
        )
        with self._engine.joined(conn) as c:
            if c.execute(self._upsert, params).rowcount == 0:
                row = c.execute(
                    f"SELECT dimension FROM {self._t} WHERE qualified_task_id = ?", (task_id,)
                ).fetchone()
                raise stored_dimension_mismatch(
                    task_id, int(row[0]) if row else -1, embedding.shape[0]
                )

    def upsert_many(self, batches: Iterator[Batch], conn: Connection | None) -> int:
        total = 0
        with self._engine.atomic(conn, "shareddb_vectors") as c:
            for given in batches:
                total += len(given)
                batch = given.deduplicated()
                n = len(batch)
                if batch.matrix is not None:
                    blobs: Any = blob_rows(batch.matrix)
                else:
                    assert batch.vectors is not None
                    blobs = [to_blob(v) for v in batch.vectors]
                none = [None] * n
                fields = batch.fields
                rows = zip(
                    batch.ids,
                    fields.get("backend", none),
                    batch.backends,
                    batch.dimensions,
                    blobs,
                    fields.get("metadata", none),
                    fields.get("content_hash", none),
                    fields.get("model", none),
                    [_now()] * n,
                    strict=True,
                )
                if c.executemany(self._upsert, rows).rowcount != n:
                    self._raise_mismatch(c, batch)
        return total

    def _raise_mismatch(self, conn: sqlite3.Connection, batch: Batch) -> None:
        """Name the first row of `batch` whose id is stored with another dimension."""
        query = f"SELECT qualified_task_id, dimension FROM {self._t} WHERE {self._in_ids}"
        found = conn.execute(query, (json.dumps(batch.ids),))
        stored = {str(i): int(d) for i, d in found}
        for task_id, dimension in zip(batch.ids, batch.dimensions, strict=True):
            if stored.get(task_id, dimension) != dimension:
                raise stored_dimension_mismatch(task_id, stored[task_id], dimension)
        raise DimensionMismatchError(  # pragma: no cover - rowcount disagreed without a cause
            f"upsert_many into {self._table} could not write every row; nothing was written"
        )

    def delete(self, task_id: str, conn: Connection | None) -> bool:
        with self._engine.joined(conn) as c:
            return c.execute(self._delete, (task_id,)).rowcount > 0

    def delete_many(self, ids: list[str], conn: Connection | None) -> int:
        with self._engine.joined(conn) as c:
            query = f"DELETE FROM {self._t} WHERE {self._in_ids}"
            return int(c.execute(query, (json.dumps(ids),)).rowcount)

    # -- reads -------------------------------------------------------------------------

    def get(self, task_id: str, conn: Connection | None) -> Float32Array | None:
        with self._engine.joined(conn, read=True) as c:
            row = c.execute(self._get, (task_id,)).fetchone()
        return None if row is None else from_blob(row[0])

    def get_record(self, task_id: str, conn: Connection | None) -> EmbeddingRecord | None:
        with self._engine.joined(conn, read=True) as c:
            row = c.execute(self._get_record, (task_id,)).fetchone()
        if row is None:
            return None
        return record_from_row(row, from_blob, self._engine.read_time)

    def get_many(self, ids: list[str], conn: Connection | None) -> dict[str, Float32Array]:
        query = f"SELECT qualified_task_id, embedding FROM {self._t} WHERE {self._in_ids}"
        with self._engine.joined(conn, read=True) as c:
            rows = c.execute(query, (json.dumps(ids),)).fetchall()
        return {str(qid): from_blob(blob) for qid, blob in rows}

    def exists(self, task_id: str, conn: Connection | None) -> bool:
        with self._engine.joined(conn, read=True) as c:
            return bool(c.execute(self._exists, (task_id,)).fetchone()[0])

    def ids(self, rows: RowFilter, conn: Connection | None) -> Iterator[str]:
        """Pages in id order, each in a short read transaction of its own (keyset paging)."""
        conditions, params = row_conditions(rows)
        where = " AND ".join([*conditions, "qualified_task_id > ?"])
        query = (
            f"SELECT qualified_task_id FROM {self._t} WHERE {where} "
            f"ORDER BY qualified_task_id LIMIT {IDS_PER_PAGE}"
        )
        after = ""
        while True:
            with self._engine.joined(conn, read=True) as c:
                page = [str(r[0]) for r in c.execute(query, (*params, after))]
            yield from page
            if len(page) < IDS_PER_PAGE:
                return
            after = page[-1]

    def count(self, rows: RowFilter, conn: Connection | None) -> int:
        conditions, params = row_conditions(rows)
        where = " AND ".join(conditions) or "1"
        with self._engine.joined(conn, read=True) as c:
            row = c.execute(f"SELECT count(*) FROM {self._t} WHERE {where}", params).fetchone()
        return int(row[0])

    def stale(
        self, hashes: list[tuple[str, str]], model: str | None, conn: Connection | None
    ) -> list[str]:
        with self._engine.joined(conn, read=True) as c:
            rows = c.execute(self._stale, (json.dumps(hashes), model))
            return [str(r[0]) for r in rows]

    # -- search and indexes ----------------------------------------------------------------

    def search(
        self, request: SearchRequest, conn: Connection | None
    ) -> list[SearchResult] | list[SearchHit]:
        return self._search.search(request, conn)

    def explain(self, request: SearchRequest, conn: Connection | None) -> str:
        return self._search.explain(request, conn)

    def create_index(self, request: IndexRequest, conn: Connection | None) -> str:
        name = vector_index_name(self._table, request.method, request.metric, request.dimension)
        logger.info(
            "create_index(%d, method=%r, metric=%r) does nothing on SQLite: search is exact "
            "(numpy over a cached matrix)",
            request.dimension,
            request.method,
            request.metric,
        )
        return name

    def drop_index(self, name: str, concurrently: bool, conn: Connection | None) -> None:
        logger.info("drop_index(%r) does nothing on SQLite: there are no vector indexes", name)

    def indexes(self, conn: Connection | None) -> list[IndexInfo]:
        return []

    def sample_ids(self, dimension: int, size: int, seed: int) -> list[str]:
        with self._engine.reading() as c:
            ids = [str(r[0]) for r in c.execute(self._ids_of_dimension, (dimension,))]
        return random.Random(seed).sample(ids, min(size, len(ids)))

    def create_table(self, conn: Connection | None) -> None:
        t = quote_identifier(self._table)
        index = quote_identifier(f"{self._table}_dimension_backend_idx")
        literal = "'" + self._table.replace("'", "''") + "'"
        statements = [
            f"CREATE TABLE IF NOT EXISTS {t} ("
            "id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "qualified_task_id TEXT NOT NULL UNIQUE CHECK (qualified_task_id <> ''), "
            "backend TEXT NOT NULL, "
            "dimension INTEGER NOT NULL CHECK (dimension BETWEEN 1 AND 16000), "
            "embedding BLOB NOT NULL CHECK (typeof(embedding) = 'blob' AND "
            "length(embedding) = 4 * dimension), "
            "created_at TEXT NOT NULL, "
            "updated_at TEXT NOT NULL, "
            "metadata TEXT NOT NULL DEFAULT '{}' CHECK (json_type(metadata) = 'object'), "
            "content_hash TEXT, "
            "model TEXT)",
            f"CREATE INDEX IF NOT EXISTS {index} ON {t} (dimension, backend)",
            f"CREATE TABLE IF NOT EXISTS {VERSIONS_TABLE} (table_name TEXT NOT NULL PRIMARY "
            "KEY, token INTEGER NOT NULL) WITHOUT ROWID",
            f"INSERT OR IGNORE INTO {VERSIONS_TABLE} (table_name, token) VALUES ({literal}, "
            "random())",
        ]
        for event in ("insert", "update", "delete"):
            trigger = quote_identifier(f"{self._table}_version_{event}")
            statements.append(
                f"CREATE TRIGGER IF NOT EXISTS {trigger} AFTER {event.upper()} ON {t} BEGIN "
                f"UPDATE {VERSIONS_TABLE} SET token = random() WHERE table_name = {literal}; END"
            )
        with self._engine.atomic(conn, "shareddb_vectors") as c:
            for statement in statements:
                c.execute(statement)
