"""Vector search on SQLite: filters in SQL, ranking with numpy over cached matrices.

Each dimension's rows are loaded once into a read-only float32 matrix and reused while
the table is unchanged. Change detection is a random token that triggers on the table
replace on every insert, update and delete (see the migration): it sees this
connection's own writes, which ``PRAGMA data_version`` does not, and other processes'
commits, and unlike a counter it never comes back to an old value when a transaction
rolls back, so a matrix loaded from uncommitted rows is never mistaken for the
committed table.

A filter (model, metadata) runs in SQL once per matrix and filter, in the same read
transaction as the token check; its rows are kept with the matrix, so searching again
with the same filter costs the numpy scan of the matching rows only.
"""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from shareddb._core.types import Connection
from shareddb._engines.sqlite.engine import quote_identifier
from shareddb._engines.sqlite.ranking import Matrix, Selection, nearest
from shareddb._vectors.codec import blobs_matrix, from_blob
from shareddb._vectors.filters import Filter, canonical, to_sqlite
from shareddb._vectors.metadata import load_metadata
from shareddb._vectors.request import RowFilter, SearchRequest
from shareddb._vectors.results import SearchHit, SearchResult
from shareddb._vectors.validation import Float32Array, query_dimension_mismatch
from shareddb.errors import EmbeddingNotFoundError

if TYPE_CHECKING:
    from shareddb._engines.sqlite.engine import SqliteEngine

logger = logging.getLogger("shareddb.vectors")

VERSIONS_TABLE: Final = "shareddb_vector_versions"
MAX_SELECTIONS: Final = 64  # filters whose matching rows a matrix keeps

Positions = np.ndarray[Any, np.dtype[np.intp]]


@functools.lru_cache(maxsize=256)
def _key(where: Filter) -> str:
    """A filter's cache key, rendered once: apps send the same few filters over and over."""
    return canonical(where)


def row_conditions(rows: RowFilter) -> tuple[list[str], list[Any]]:
    """SQL conditions for `rows` (``?`` placeholders) and their parameters, in order."""
    conditions: list[str] = []
    params: list[Any] = []
    if rows.dimension is not None:
        conditions.append("dimension = ?")
        params.append(rows.dimension)
    if rows.backend is not None:
        conditions.append("backend = ?")
        params.append(rows.backend)
    if rows.model is not None:
        conditions.append("model = ?")
        params.append(rows.model)
    if rows.where is not None:
        text, values = to_sqlite(rows.where)
        conditions.append(text)
        params.extend(values)
    if rows.exclude:
        conditions.append("qualified_task_id NOT IN (SELECT value FROM json_each(?))")
        params.append(json.dumps(list(rows.exclude)))
    return conditions, params


def _hits(
    matrix: Matrix,
    query: Float32Array,
    request: SearchRequest,
    subset: Selection | Positions | None,
) -> list[tuple[str, float]]:
    """The nearest rows' ids and distances, within `max_distance`."""
    positions, distances = nearest(matrix, query, request.k, request.metric, subset)
    ids = matrix.ids
    hits = [(ids[p], d) for p, d in zip(positions.tolist(), distances.tolist(), strict=True)]
    if request.max_distance is not None:
        hits = [hit for hit in hits if hit[1] <= request.max_distance]
    return hits


class SqliteSearch:
    """Exact searches of one table; `conn` None means a read transaction of our own."""

    def __init__(self, engine: SqliteEngine, table: str) -> None:
        self._engine = engine
        self._table = table
        t = quote_identifier(table)
        self._t = t
        # A scan in rowid (= id) order: through the (dimension, backend) index SQLite
        # would first sort every blob in a temporary b-tree, several times slower.
        self._load = (
            f"SELECT id, qualified_task_id, backend, embedding FROM {t} NOT INDEXED "
            "WHERE dimension = ? ORDER BY id"
        )
        self._dimensions = f"SELECT DISTINCT dimension FROM {t} ORDER BY dimension LIMIT 20"
        self._token = f"SELECT token FROM {VERSIONS_TABLE} WHERE table_name = ?"
        self._vector_of = f"SELECT embedding FROM {t} WHERE qualified_task_id = ?"
        self._metadata_of = (
            f"SELECT qualified_task_id, metadata FROM {t} "
            "WHERE qualified_task_id IN (SELECT value FROM json_each(?))"
        )
        self._cache: dict[int, Matrix] = {}
        self._warned_untracked = False

    def search(
        self, request: SearchRequest, conn: Connection | None
    ) -> list[SearchResult] | list[SearchHit]:
        with self._engine.joined(conn, read=True) as c:
            query = request.query
            rows = request.rows
            if request.by_id is not None:
                query = self._vector_of_id(c, request.by_id)
                rows = rows._replace(exclude=(*rows.exclude, request.by_id))
            assert query is not None
            matrix = self._matrix(c, query.shape[0])
            subset = self._selection(c, matrix, rows)
            if request.with_metadata:  # read in the transaction the matrix comes from
                hits = _hits(matrix, query, request, subset)
                found = c.execute(self._metadata_of, (json.dumps([i for i, _ in hits]),))
                metadata = {str(i): load_metadata(m) for i, m in found}
                return [SearchHit(i, d, metadata[i]) for i, d in hits]
        # The ranking needs only the matrix and the rows read above: meanwhile, other
        # threads' searches use the connection (and rank on the other cores).
        return [SearchResult(i, d) for i, d in _hits(matrix, query, request, subset)]

    def explain(self, request: SearchRequest, conn: Connection | None) -> str:
        with self._engine.joined(conn, read=True) as c:
            matrix = self._matrix(c, request.dimension)
            subset = self._selection(c, matrix, request.rows)
        positions = subset.positions if isinstance(subset, Selection) else subset
        count = len(matrix) if positions is None else int(positions.size)
        scope = "" if subset is None else " matching the filter"
        return (
            f"exact {request.metric} search with numpy over {count:,} cached rows{scope} "
            f"of dimension {request.dimension} in {self._table} (SQLite has no vector index)"
        )

    def _vector_of_id(self, conn: sqlite3.Connection, task_id: str) -> Float32Array:
        row = conn.execute(self._vector_of, (task_id,)).fetchone()
        if row is None:
            raise EmbeddingNotFoundError(
                f"no embedding is stored for {task_id!r} in {self._table}",
                fix="upsert() it first, or check the id",
            )
        return from_blob(row[0])

    def _matrix(self, conn: sqlite3.Connection, dimension: int) -> Matrix:
        """The cached matrix of `dimension`, reloaded when the table's token changed."""
        row = conn.execute(self._token, (self._table,)).fetchone()
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
        rows = conn.execute(self._load, (dimension,)).fetchall()
        if not rows:
            dimensions = [int(r[0]) for r in conn.execute(self._dimensions)]
            if dimensions:
                raise query_dimension_mismatch(self._table, dimension, dimensions)
        matrix = Matrix(
            token,
            np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)),
            [r[1] for r in rows],
            [r[2] for r in rows],
            blobs_matrix([r[3] for r in rows], dimension),
        )
        if token is not None:
            self._cache[dimension] = matrix
        logger.debug("loaded %d rows of dimension %d from %s", len(rows), dimension, self._table)
        return matrix

    def _selection(
        self, conn: sqlite3.Connection, matrix: Matrix, rows: RowFilter
    ) -> Selection | Positions | None:
        """The rows of `matrix` that `rows` keeps; None for all of them.

        Runs in the read transaction that checked the matrix's token, so the rows it
        selects are the matrix's rows.
        """
        if not rows.narrows:
            return None
        selected: Selection | None = None
        if rows.backend is not None or rows.model is not None or rows.where is not None:
            key = (rows.backend, rows.model, None if rows.where is None else _key(rows.where))
            selected = matrix.selections.get(key)
            if selected is None:
                if rows.model is None and rows.where is None:
                    assert rows.backend is not None
                    positions = matrix.positions(rows.backend)
                else:
                    positions = self._select(conn, matrix, rows._replace(exclude=()))
                selected = matrix.keep(key, Selection(matrix, positions), MAX_SELECTIONS)
        if not rows.exclude:
            return selected
        dropped = [p for p in map(matrix.position_of, rows.exclude) if p is not None]
        everyone = np.arange(len(matrix), dtype=np.intp) if selected is None else selected.positions
        return everyone[~np.isin(everyone, np.asarray(dropped, dtype=np.intp))]

    def _select(self, conn: sqlite3.Connection, matrix: Matrix, rows: RowFilter) -> Positions:
        conditions, params = row_conditions(rows._replace(dimension=int(matrix.raw.shape[1])))
        query = f"SELECT id FROM {self._t} WHERE " + " AND ".join(conditions)
        rowids = [int(r[0]) for r in conn.execute(query, params)]
        return np.sort(matrix.of_rowids(rowids))
