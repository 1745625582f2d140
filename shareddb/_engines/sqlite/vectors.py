"""VectorStorage on SQLite: float32 blobs, exact search with numpy over cached matrices.

Each dimension's rows are loaded once into a read-only float32 matrix (plus, on
first use, a row-normalised copy for cosine and squared norms for l2) and reused
while the table is unchanged. Change detection is a random token that triggers on
the table replace on every insert, update and delete (see the migration): it sees
this connection's own writes, which ``PRAGMA data_version`` does not, and other
processes' commits, and unlike a counter it never comes back to an old value when
a transaction rolls back, so a matrix loaded from uncommitted rows is never
mistaken for the committed table.
"""

from __future__ import annotations

import logging
import random
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from shareddb._core.types import Connection
from shareddb._engines.sqlite.ranking import Matrix, nearest
from shareddb._vectors.batches import Batch
from shareddb._vectors.codec import blob_rows, blobs_matrix, from_blob, to_blob
from shareddb._vectors.request import IndexRequest, SearchRequest
from shareddb._vectors.results import IndexInfo, SearchResult
from shareddb._vectors.validation import (
    Float32Array,
    query_dimension_mismatch,
    stored_dimension_mismatch,
    vector_index_name,
)
from shareddb.errors import DimensionMismatchError

if TYPE_CHECKING:
    from shareddb._engines.sqlite.engine import SqliteEngine

logger = logging.getLogger("shareddb.vectors")

VERSIONS_TABLE: Final = "shareddb_vector_versions"
_ID_CHUNK: Final = 500


def quote_identifier(name: str) -> str:
    """``"name"`` with embedded quotes doubled: the one way identifiers reach SQLite SQL."""
    return '"' + name.replace('"', '""') + '"'


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class SqliteVectors:
    """`VectorStorage` on SQLite; `conn` None means a transaction of our own."""

    def __init__(self, engine: SqliteEngine, table: str) -> None:
        self._engine = engine
        self._table = table
        t = quote_identifier(table)
        self._upsert = (
            f"INSERT INTO {t} (qualified_task_id, backend, dimension, embedding, created_at, "
            "updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (qualified_task_id) DO UPDATE "
            "SET backend = excluded.backend, embedding = excluded.embedding, "
            "updated_at = excluded.updated_at WHERE dimension = excluded.dimension"
        )
        self._get = f"SELECT embedding FROM {t} WHERE qualified_task_id = ?"
        self._dimension_of = f"SELECT dimension FROM {t} WHERE qualified_task_id = ?"
        self._delete = f"DELETE FROM {t} WHERE qualified_task_id = ?"
        self._count = f"SELECT count(*) FROM {t}"
        self._count_dimension = f"SELECT count(*) FROM {t} WHERE dimension = ?"
        self._dimensions = f"SELECT DISTINCT dimension FROM {t} ORDER BY dimension LIMIT 20"
        # A scan in rowid (= id) order: through the (dimension, backend) index SQLite
        # would first sort every blob in a temporary b-tree, several times slower.
        self._load = (
            f"SELECT qualified_task_id, backend, embedding FROM {t} NOT INDEXED "
            "WHERE dimension = ? ORDER BY id"
        )
        self._token = f"SELECT token FROM {VERSIONS_TABLE} WHERE table_name = ?"
        self._ids_of_dimension = (
            f"SELECT qualified_task_id FROM {t} WHERE dimension = ? ORDER BY id"
        )
        self._cache: dict[int, Matrix] = {}
        self._warned_untracked = False

    # -- writes ------------------------------------------------------------------------

    def upsert(
        self, task_id: str, backend: str, embedding: Float32Array, conn: Connection | None
    ) -> None:
        now = _now()
        blob = to_blob(embedding)
        with self._engine.joined(conn) as c:
            cursor = c.execute(self._upsert, (task_id, backend, embedding.shape[0], blob, now, now))
            if cursor.rowcount == 0:
                row = c.execute(self._dimension_of, (task_id,)).fetchone()
                raise stored_dimension_mismatch(
                    task_id, int(row[0]) if row else -1, embedding.shape[0]
                )

    def upsert_many(self, batches: Iterator[Batch], conn: Connection | None) -> int:
        total = 0
        with self._engine.atomic(conn, "shareddb_vectors") as c:
            for given in batches:
                total += len(given)
                batch = given.deduplicated()
                now = _now()
                if batch.matrix is not None:
                    blobs: Any = blob_rows(batch.matrix)
                else:
                    assert batch.vectors is not None
                    blobs = [to_blob(v) for v in batch.vectors]
                rows = zip(
                    batch.ids,
                    batch.backends,
                    batch.dimensions,
                    blobs,
                    [now] * len(batch),
                    [now] * len(batch),
                    strict=True,
                )
                written = c.executemany(self._upsert, rows).rowcount
                if written != len(batch):
                    self._raise_mismatch(c, batch)
        return total

    def _raise_mismatch(self, conn: sqlite3.Connection, batch: Batch) -> None:
        """Name the first row of `batch` whose id is stored with another dimension."""
        stored: dict[str, int] = {}
        for start in range(0, len(batch), _ID_CHUNK):
            chunk = batch.ids[start : start + _ID_CHUNK]
            marks = ", ".join("?" * len(chunk))
            t = quote_identifier(self._table)
            query = (
                f"SELECT qualified_task_id, dimension FROM {t} WHERE qualified_task_id IN ({marks})"
            )
            stored.update((str(i), int(d)) for i, d in conn.execute(query, chunk))
        for task_id, dimension in zip(batch.ids, batch.dimensions, strict=True):
            if stored.get(task_id, dimension) != dimension:
                raise stored_dimension_mismatch(task_id, stored[task_id], dimension)
        raise DimensionMismatchError(  # pragma: no cover - rowcount disagreed without a cause
            f"upsert_many into {self._table} could not write every row; nothing was written"
        )

    def delete(self, task_id: str, conn: Connection | None) -> bool:
        with self._engine.joined(conn) as c:
            return c.execute(self._delete, (task_id,)).rowcount > 0

    # -- reads -------------------------------------------------------------------------

    def get(self, task_id: str, conn: Connection | None) -> Float32Array | None:
        with self._engine.joined(conn, read=True) as c:
            row = c.execute(self._get, (task_id,)).fetchone()
        if row is None:
            return None
        return from_blob(row[0])

    def count(self, dimension: int | None, conn: Connection | None) -> int:
        with self._engine.joined(conn, read=True) as c:
            if dimension is None:
                row = c.execute(self._count).fetchone()
            else:
                row = c.execute(self._count_dimension, (dimension,)).fetchone()
        return int(row[0])

    def _matrix(self, conn: Connection | None, dimension: int) -> Matrix:
        """The cached matrix of `dimension`, reloaded when the table's token changed."""
        with self._engine.joined(conn, read=True) as c:
            row = c.execute(self._token, (self._table,)).fetchone()
            token = None if row is None else int(row[0])
            cached = self._cache.get(dimension)
            if cached is not None and token is not None and cached.token == token:
                return cached
            if token is None and not self._warned_untracked:
                self._warned_untracked = True
                logger.warning(
                    "table %s has no change token in %s, so searches reload it every "
                    "time; create it with VectorStorage.create_table()",
                    self._table,
                    VERSIONS_TABLE,
                )
            rows = c.execute(self._load, (dimension,)).fetchall()
            if not rows:
                dimensions = [int(r[0]) for r in c.execute(self._dimensions)]
                if dimensions:
                    raise query_dimension_mismatch(self._table, dimension, dimensions)
        raw = blobs_matrix([r[2] for r in rows], dimension)
        matrix = Matrix(token, [r[0] for r in rows], [r[1] for r in rows], raw)
        if token is not None:
            self._cache[dimension] = matrix
        logger.debug("loaded %d rows of dimension %d from %s", len(rows), dimension, self._table)
        return matrix

    def search(self, request: SearchRequest, conn: Connection | None) -> list[SearchResult]:
        matrix = self._matrix(conn, request.dimension)
        positions, distances = nearest(
            matrix, request.query, request.k, request.metric, request.backend
        )
        ids = matrix.ids
        return [
            SearchResult(ids[p], d)
            for p, d in zip(positions.tolist(), distances.tolist(), strict=True)
        ]

    def explain(self, request: SearchRequest, conn: Connection | None) -> str:
        matrix = self._matrix(conn, request.dimension)
        scope = "" if request.backend is None else f" of backend {request.backend!r}"
        return (
            f"exact {request.metric} search with numpy over {len(matrix):,} cached rows{scope} "
            f"of dimension {request.dimension} in {self._table} (SQLite has no vector index)"
        )

    # -- indexes -----------------------------------------------------------------------

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
            "updated_at TEXT NOT NULL)",
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
