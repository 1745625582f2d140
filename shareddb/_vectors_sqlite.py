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
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np

from ._embedding import Float32Array, Method, Metric, vector_index_name
from ._vector_batches import Batch
from .errors import DimensionMismatchError
from .vectors import IndexInfo, SearchResult

logger = logging.getLogger("shareddb.vectors")

VERSIONS_TABLE: Final = "shareddb_vector_versions"
# Extra candidates re-ranked in float64 beyond k, so float32 rounding in the
# matrix product can't push a true neighbour out of the top k.
RERANK_MARGIN: Final = 16
_LOWEST: Final = -np.finfo(np.float32).max  # cosine score of zero vectors: ranked last
# Above this bound on peak^2 * dimension (which bounds |row . query|, |row|^2 and
# |query|^2), float32 scores could overflow (an l2 score sums up to 3 such terms).
_FLOAT32_SAFE: Final = float(np.finfo(np.float32).max) / 4
_ID_CHUNK: Final = 500


def quote_identifier(name: str) -> str:
    """``"name"`` with embedded quotes doubled: the one way identifiers reach SQLite SQL."""
    return '"' + name.replace('"', '""') + '"'


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class _Matrix:
    """One dimension's rows, in id order, with lazily derived arrays (shared by threads)."""

    def __init__(
        self, token: int | None, ids: list[str], backends: list[str], raw: Float32Array
    ) -> None:
        self.token = token
        self.ids = ids
        self.backends = backends
        self.raw = raw
        self._lock = threading.Lock()
        self._unit: Float32Array | None = None
        self._zero: np.ndarray[Any, np.dtype[np.bool_]] | None = None
        self._sqnorms: Float32Array | None = None
        self._peak: float | None = None
        self._positions: dict[str, np.ndarray[Any, np.dtype[np.intp]]] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def unit(self) -> tuple[Float32Array, np.ndarray[Any, np.dtype[np.bool_]]]:
        """Rows scaled to length 1 (zero rows stay zero) and which rows are zero."""
        with self._lock:
            if self._unit is None or self._zero is None:
                norms = np.sqrt(np.einsum("ij,ij->i", self.raw, self.raw))
                zero = norms == 0
                scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=~zero)
                unit = self.raw * scale[:, None]
                unit.flags.writeable = False
                self._unit, self._zero = unit, zero
            return self._unit, self._zero

    def peak(self) -> float:
        """The largest magnitude of any value: whether float32 products may overflow."""
        with self._lock:
            if self._peak is None:
                raw = self.raw
                self._peak = max(float(raw.max()), -float(raw.min())) if raw.size else 0.0
            return self._peak

    def sqnorms(self) -> Float32Array:
        with self._lock:
            if self._sqnorms is None:
                self._sqnorms = np.einsum("ij,ij->i", self.raw, self.raw)
            return self._sqnorms

    def positions(self, backend: str) -> np.ndarray[Any, np.dtype[np.intp]]:
        with self._lock:
            if self._positions is None:
                groups: dict[str, list[int]] = {}
                for position, label in enumerate(self.backends):
                    groups.setdefault(label, []).append(position)
                self._positions = {b: np.array(p, dtype=np.intp) for b, p in groups.items()}
            return self._positions.get(backend, np.empty(0, dtype=np.intp))


class SqliteVectors:
    """The SQLite half of VectorStorage; `conn` None means a transaction of our own."""

    def __init__(self, db: Any, table: str) -> None:
        self._db = db
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
        self._cache: dict[int, _Matrix] = {}
        self._warned_untracked = False

    @contextmanager
    def _connection(
        self, conn: sqlite3.Connection | None, *, read: bool = False
    ) -> Iterator[sqlite3.Connection]:
        if conn is not None:
            yield conn
        else:
            with self._db._reading() if read else self._db.connection() as own:
                yield own

    @contextmanager
    def _atomic(self, conn: sqlite3.Connection | None) -> Iterator[sqlite3.Connection]:
        """All or nothing: our own transaction, or a savepoint in the caller's."""
        if conn is None:
            with self._db.connection() as own:
                yield own
            return
        conn.execute("SAVEPOINT shareddb_vectors")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK TO SAVEPOINT shareddb_vectors")
            conn.execute("RELEASE SAVEPOINT shareddb_vectors")
            raise
        conn.execute("RELEASE SAVEPOINT shareddb_vectors")

    # -- writes ------------------------------------------------------------------------

    def upsert(
        self, task_id: str, backend: str, embedding: Float32Array, conn: sqlite3.Connection | None
    ) -> None:
        now = _now()
        blob = _blob(embedding)
        with self._connection(conn) as c:
            cursor = c.execute(self._upsert, (task_id, backend, embedding.shape[0], blob, now, now))
            if cursor.rowcount == 0:
                row = c.execute(self._dimension_of, (task_id,)).fetchone()
                raise _mismatch(task_id, int(row[0]) if row else -1, embedding.shape[0])

    def upsert_many(self, batches: Iterator[Batch], conn: sqlite3.Connection | None) -> int:
        total = 0
        with self._atomic(conn) as c:
            for given in batches:
                total += len(given)
                batch = given.deduplicated()
                now = _now()
                if batch.matrix is not None:
                    little = np.ascontiguousarray(batch.matrix, dtype="<f4")
                    blobs: Any = little.view(np.uint8).reshape(len(batch), -1)  # rows are blobs
                else:
                    assert batch.vectors is not None
                    blobs = [_blob(v) for v in batch.vectors]
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
                raise _mismatch(task_id, stored[task_id], dimension)
        raise DimensionMismatchError(  # pragma: no cover - rowcount disagreed without a cause
            f"upsert_many into {self._table} could not write every row; nothing was written"
        )

    def delete(self, task_id: str, conn: sqlite3.Connection | None) -> bool:
        with self._connection(conn) as c:
            return c.execute(self._delete, (task_id,)).rowcount > 0

    # -- reads -------------------------------------------------------------------------

    def get(self, task_id: str, conn: sqlite3.Connection | None) -> Float32Array | None:
        with self._connection(conn, read=True) as c:
            row = c.execute(self._get, (task_id,)).fetchone()
        if row is None:
            return None
        return np.frombuffer(row[0], dtype="<f4").astype(np.float32)

    def count(self, dimension: int | None, conn: sqlite3.Connection | None) -> int:
        with self._connection(conn, read=True) as c:
            if dimension is None:
                row = c.execute(self._count).fetchone()
            else:
                row = c.execute(self._count_dimension, (dimension,)).fetchone()
        return int(row[0])

    def _matrix(self, conn: sqlite3.Connection | None, dimension: int) -> _Matrix:
        """The cached matrix of `dimension`, reloaded when the table's token changed."""
        with self._connection(conn, read=True) as c:
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
                    raise DimensionMismatchError(
                        f"query has {dimension} dimensions but {self._table} stores "
                        f"embeddings of {', '.join(map(str, dimensions))} dimensions only; "
                        "embed the query with the same model as the stored vectors"
                    )
        raw = np.frombuffer(b"".join([r[2] for r in rows]), dtype="<f4").reshape(
            len(rows), dimension
        )
        matrix = _Matrix(
            token, [r[0] for r in rows], [r[1] for r in rows], raw.astype(np.float32, copy=False)
        )
        if token is not None:
            self._cache[dimension] = matrix
        logger.debug("loaded %d rows of dimension %d from %s", len(rows), dimension, self._table)
        return matrix

    def search(
        self,
        query: Float32Array,
        k: int,
        metric: Metric,
        backend: str | None,
        exact: bool,
        ef_search: int | None,
        probes: int | None,
        conn: sqlite3.Connection | None,
    ) -> list[SearchResult]:
        matrix = self._matrix(conn, query.shape[0])
        positions, distances = nearest(matrix, query, k, metric, backend)
        ids = matrix.ids
        return [
            SearchResult(ids[p], d)
            for p, d in zip(positions.tolist(), distances.tolist(), strict=True)
        ]

    def explain(
        self,
        query: Float32Array,
        k: int,
        metric: Metric,
        backend: str | None,
        exact: bool,
        ef_search: int | None,
        probes: int | None,
        conn: sqlite3.Connection | None,
    ) -> str:
        matrix = self._matrix(conn, query.shape[0])
        scope = "" if backend is None else f" of backend {backend!r}"
        return (
            f"exact {metric} search with numpy over {len(matrix):,} cached rows{scope} of "
            f"dimension {query.shape[0]} in {self._table} (SQLite has no vector index)"
        )

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
        conn: sqlite3.Connection | None,
    ) -> str:
        name = vector_index_name(self._table, method, metric, dimension)
        logger.info(
            "create_index(%d, method=%r, metric=%r) does nothing on SQLite: search is exact "
            "(numpy over a cached matrix)",
            dimension,
            method,
            metric,
        )
        return name

    def drop_index(self, name: str, concurrently: bool, conn: sqlite3.Connection | None) -> None:
        logger.info("drop_index(%r) does nothing on SQLite: there are no vector indexes", name)

    def indexes(self, conn: sqlite3.Connection | None) -> list[IndexInfo]:
        return []

    def create_table(self, conn: sqlite3.Connection | None) -> None:
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
        with self._atomic(conn) as c:
            for statement in statements:
                c.execute(statement)


def _blob(vector: Float32Array) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def _mismatch(task_id: str, stored: int, given: int) -> DimensionMismatchError:
    return DimensionMismatchError(
        f"qualified_task_id {task_id!r} is stored with {stored} dimensions, got {given}; "
        "an embedding keeps its dimension: delete it first to store one of another size"
    )


def nearest(
    matrix: _Matrix, query: Float32Array, k: int, metric: Metric, backend: str | None
) -> tuple[np.ndarray[Any, np.dtype[np.intp]], np.ndarray[Any, np.dtype[np.float64]]]:
    """Positions of the `k` rows nearest to `query` and their distances, nearest first.

    Candidates come from one float32 matrix-vector product (the cost of a bare
    numpy scan); the best ``k + margin`` are then re-ranked by distances computed
    in float64, with ties in insertion order. Where values are so large that float32
    products could overflow, every row is ranked in float64. Distances follow
    pgvector; a zero row has no cosine distance (NaN) and comes last, as in
    PostgreSQL.
    """
    n = len(matrix)
    empty = (np.empty(0, dtype=np.intp), np.empty(0, dtype=np.float64))
    if n == 0:
        return empty
    subset: np.ndarray[Any, np.dtype[np.intp]] | None = None
    if backend is not None:
        subset = matrix.positions(backend)
        if subset.size == 0:
            return empty
    raw = matrix.raw
    peak = max(matrix.peak(), float(np.abs(query).max()))
    if peak * peak * query.shape[0] > _FLOAT32_SAFE:
        everyone = np.arange(n) if subset is None else subset
        return _ranked(raw, everyone, query, k, metric)
    mask_from: np.ndarray[Any, np.dtype[np.intp]] | None = None
    if subset is not None and subset.size > n // 4:
        # A large share of the rows: one product over all of them and a mask is cheaper
        # than copying the subset's rows out of the matrix.
        mask_from, subset = subset, None
    if metric == "cosine":
        unit, zero = matrix.unit()
        q = query / np.float32(np.linalg.norm(query))
        scores = (unit if subset is None else unit[subset]) @ q
        zero_rows = zero if subset is None else zero[subset]
        if zero_rows.any():
            scores[zero_rows] = _LOWEST
    elif metric == "inner_product":
        scores = (raw if subset is None else raw[subset]) @ query
    else:  # l2: rank by 2 r·q - |r|², which orders as -|r - q|²
        sqnorms = matrix.sqnorms()
        scores = 2 * ((raw if subset is None else raw[subset]) @ query)
        scores -= sqnorms if subset is None else sqnorms[subset]
    eligible = scores.shape[0]
    if mask_from is not None:
        masked = np.full_like(scores, -np.inf)
        masked[mask_from] = scores[mask_from]
        scores, eligible = masked, mask_from.size
    m = scores.shape[0]
    candidates = min(eligible, k + max(k, RERANK_MARGIN))
    top = (
        np.argpartition(scores, m - candidates)[m - candidates :]
        if candidates < m
        else np.arange(m)
    )
    return _ranked(raw, top if subset is None else subset[top], query, k, metric)


def _ranked(
    raw: Float32Array,
    positions: np.ndarray[Any, np.dtype[np.intp]],
    query: Float32Array,
    k: int,
    metric: Metric,
) -> tuple[np.ndarray[Any, np.dtype[np.intp]], np.ndarray[Any, np.dtype[np.float64]]]:
    """The `k` nearest of the rows at `positions`, by distances computed in float64."""
    rows = raw[positions].astype(np.float64)
    q64 = query.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        if metric == "cosine":
            distances = 1.0 - (rows @ q64) / (np.linalg.norm(rows, axis=1) * np.linalg.norm(q64))
        elif metric == "inner_product":
            distances = -(rows @ q64)
        else:
            distances = np.sqrt(np.square(rows - q64).sum(axis=1))
    order = np.lexsort((positions, distances))[:k]
    return positions[order], distances[order]
