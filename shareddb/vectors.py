"""Task embeddings: store vectors per qualified task id and search them by similarity.

`VectorStorage(db)` works the same on both backends. On PostgreSQL it writes plain
SQL for pgvector (binary COPY for bulk loads, partial expression indexes per
dimension, per-query settings with ``SET LOCAL`` semantics); on SQLite it stores
little-endian float32 blobs and searches exactly with numpy over a cached matrix.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from shareddb._core.types import Connection
from shareddb._vectors.batches import iter_batches
from shareddb._vectors.request import index_request, search_request
from shareddb._vectors.results import IndexInfo, SearchResult
from shareddb._vectors.validation import (
    Method,
    Metric,
    as_dimension,
    as_embedding,
    check_backend,
    check_table_name,
    check_task_id,
    default_backend,
)
from shareddb.errors import InvalidArgumentError

if TYPE_CHECKING:
    from shareddb._core.service import DbService
    from shareddb._vectors.ops import VectorOps

__all__ = ["IndexInfo", "SearchResult", "VectorStorage"]

logger = logging.getLogger("shareddb.vectors")

DEFAULT_TABLE = "task_embeddings"


class VectorStorage:
    """Embeddings of tasks in one table: upsert, get, delete, count, search, indexes.

    Takes a `DbService` and never opens connections of its own. Every method
    accepts ``conn=`` (a connection from ``db.transaction()``) to run inside the
    caller's transaction instead of its own::

        vectors = VectorStorage(db)
        vectors.upsert("md#253", embedding)
        vectors.upsert_many((ids, matrix))          # or an iterable of (id, embedding)
        hits = vectors.search(query, k=10, metric="cosine", backend="md")

    Embeddings are any 1-D array-like of finite real numbers, stored as float32
    (up to 16,000 dimensions); `get` returns a float32 numpy array equal to what
    was stored. The query's length picks which embeddings a search compares.

    On PostgreSQL, build an index per dimension and metric with `create_index`
    after loading; without one, searches are exact sequential scans. On SQLite,
    searches are always exact and the index methods do nothing.

    :param db: the application's DbService (``initialize()`` creates the default
        table ``task_embeddings``).
    :param table: another table with the same layout, created with `create_table`.
    """

    def __init__(self, db: DbService, *, table: str = DEFAULT_TABLE) -> None:
        self._db = db
        self._table = check_table_name(table)
        self._engine = db.engine
        self._impl: VectorOps = self._engine.vector_ops(self._table)
        self._errors = self._engine.table_errors(self._table)

    def __repr__(self) -> str:
        return f"<VectorStorage {self._table!r} on {self._db!r}>"

    @property
    def table(self) -> str:
        """The table's name."""
        return self._table

    @property
    def db(self) -> DbService:
        """The DbService this storage runs on."""
        return self._db

    # -- writes ------------------------------------------------------------------------

    def upsert(
        self,
        qualified_task_id: str,
        embedding: object,
        *,
        backend: str | None = None,
        conn: Connection | None = None,
    ) -> None:
        """Store `embedding` for a task, replacing the one it had (same dimension only).

        An existing row keeps its ``created_at`` and moves ``updated_at``. `backend`
        defaults to the prefix of the id before ``#`` (``md#253`` -> ``md``).
        Raises DimensionMismatchError when the id is stored with another dimension
        (delete it first to change it), InvalidEmbeddingError for an empty, 2-D,
        non-numeric or non-finite embedding. For many rows use `upsert_many`.
        """
        task_id = check_task_id(qualified_task_id)
        label = default_backend(task_id) if backend is None else check_backend(backend)
        vector = as_embedding(embedding, what=f"embedding of {task_id!r}")
        with self._errors:
            self._impl.upsert(task_id, label, vector, conn)

    def upsert_many(
        self,
        items: Iterable[tuple[str, object]] | tuple[Iterable[str], object],
        *,
        conn: Connection | None = None,
    ) -> int:
        """Store many embeddings at once, all or nothing; returns how many items were given.

        `items` is either an iterable of ``(qualified_task_id, embedding)`` pairs
        (consumed in bounded batches, never held in memory whole) or one pair
        ``(ids, matrix)`` of a sequence of ids and a 2-D numpy array with a row per
        id. When an id repeats, its last embedding wins. On PostgreSQL rows stream
        through binary COPY: straight into the table while none of the ids exists
        yet, otherwise through a temporary table and one ``INSERT … ON CONFLICT``.
        On SQLite, ``executemany`` in one transaction. Any bad item raises before
        the transaction commits and leaves the table exactly as it was.
        """
        with self._errors:
            return self._impl.upsert_many(iter_batches(items), conn)

    def delete(self, qualified_task_id: str, *, conn: Connection | None = None) -> bool:
        """Remove a task's embedding; True if there was one."""
        task_id = check_task_id(qualified_task_id)
        with self._errors:
            return self._impl.delete(task_id, conn)

    # -- reads -------------------------------------------------------------------------

    def get(
        self, qualified_task_id: str, *, conn: Connection | None = None
    ) -> np.ndarray[Any, Any] | None:
        """The stored embedding as a 1-D float32 array (bit for bit), or None."""
        task_id = check_task_id(qualified_task_id)
        with self._errors:
            return self._impl.get(task_id, conn)

    def count(self, *, dimension: int | None = None, conn: Connection | None = None) -> int:
        """How many embeddings are stored, or how many of one dimension."""
        dim = None if dimension is None else as_dimension(dimension)
        with self._errors:
            return self._impl.count(dim, conn)

    def search(
        self,
        query: object,
        k: int = 10,
        *,
        metric: Metric = "cosine",
        backend: str | None = None,
        exact: bool = False,
        ef_search: int | None = None,
        probes: int | None = None,
        conn: Connection | None = None,
    ) -> list[SearchResult]:
        """The `k` stored embeddings nearest to `query`, nearest first.

        Only embeddings with the query's dimension are compared; `backend` keeps
        those of one backend (``"md"``, ``"gh"``). On PostgreSQL an index of that
        dimension and metric is used when one exists: `ef_search` (HNSW, raised to
        at least `k`) and `probes` (IVFFlat) trade speed for recall and apply to
        this query only; a filtered search on pgvector 0.8+ scans the index
        iteratively so it still returns `k` rows when `k` exist. `exact=True`
        bypasses indexes (for recall checks). SQLite is always exact.

        Raises DimensionMismatchError when nothing of the query's dimension is
        stored but other dimensions are; InvalidEmbeddingError for a bad query
        (or an all-zero query with ``metric="cosine"``).
        """
        request = search_request(query, k, metric, backend, exact, ef_search, probes)
        with self._errors:
            return self._impl.search(request, conn)

    def explain(
        self,
        query: object,
        k: int = 10,
        *,
        metric: Metric = "cosine",
        backend: str | None = None,
        exact: bool = False,
        ef_search: int | None = None,
        probes: int | None = None,
        conn: Connection | None = None,
    ) -> str:
        """How `search` with these arguments would run: PostgreSQL's EXPLAIN, with settings.

        Use it to check that a search uses the index you built (look for its name).
        On SQLite it describes the exact numpy scan.
        """
        request = search_request(query, k, metric, backend, exact, ef_search, probes)
        with self._errors:
            return self._impl.explain(request, conn)

    # -- indexes -----------------------------------------------------------------------

    def create_index(
        self,
        dimension: int,
        *,
        method: Method = "hnsw",
        metric: Metric = "cosine",
        m: int = 16,
        ef_construction: int = 64,
        lists: int | None = None,
        concurrently: bool = False,
        conn: Connection | None = None,
    ) -> str:
        """Build the index for one dimension and metric (if missing) and return its name.

        PostgreSQL: a partial expression index ``USING hnsw ((embedding::vector(d))
        vector_<metric>_ops) WHERE dimension = d`` named
        ``<table>_<method>_<metric>_<d>``; dimensions 2,001 to 4,000 are indexed as
        ``halfvec(d)``, larger ones can't be (use exact search). HNSW takes `m` and
        `ef_construction`; IVFFlat takes `lists` (default rows/1000, at least 1) and
        should be built after loading. `concurrently=True` builds without blocking
        writes (not inside ``conn=``). Raises maintenance_work_mem for this build
        when the graph would not fit, and logs progress for long builds. An existing
        index built with other parameters raises InvalidArgumentError: `drop_index` it first.

        SQLite: does nothing (search is exact) and returns the same name.
        """
        request = index_request(dimension, method, metric, m, ef_construction, lists, concurrently)
        with self._errors:
            return self._impl.create_index(request, conn)

    def drop_index(
        self, name: str, *, concurrently: bool = False, conn: Connection | None = None
    ) -> None:
        """Drop a vector index of this table by name (see `indexes()`); no-op on SQLite."""
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(
                f"index name {name!r} must be a non-empty str; see indexes()"
            )
        with self._errors:
            self._impl.drop_index(name, bool(concurrently), conn)

    def indexes(self, *, conn: Connection | None = None) -> list[IndexInfo]:
        """The table's vector indexes (HNSW and IVFFlat) by name; empty on SQLite."""
        with self._errors:
            return self._impl.indexes(conn)

    def create_table(self, *, conn: Connection | None = None) -> None:
        """Create this storage's table if missing, with the layout of ``task_embeddings``.

        Only needed for a custom `table`: ``db.initialize()`` creates the default one.
        """
        with self._errors:
            self._impl.create_table(conn)
