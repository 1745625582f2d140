"""Task embeddings: store vectors per qualified task id and search them by similarity.

`VectorStorage(db)` works the same on both backends. On PostgreSQL it writes plain
SQL for pgvector (binary COPY for bulk loads, partial expression indexes per
dimension, per-query settings with ``SET LOCAL`` semantics); on SQLite it stores
little-endian float32 blobs and searches exactly with numpy over a cached matrix.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np
import psycopg

from ._embedding import (
    MAX_EF_SEARCH,
    MAX_PROBES,
    Float32Array,
    Method,
    Metric,
    as_dimension,
    as_embedding,
    as_int,
    as_query,
    check_backend,
    check_indexable,
    check_k,
    check_method,
    check_metric,
    check_table_name,
    check_task_id,
    default_backend,
)
from ._vector_batches import Batch, iter_batches
from .errors import InvalidArgumentError

if TYPE_CHECKING:
    from ._service import DbService

__all__ = ["IndexInfo", "SearchResult", "VectorStorage"]

logger = logging.getLogger("shareddb.vectors")

DEFAULT_TABLE = "task_embeddings"
# What the drivers raise for a table that is missing or lacks a column (sqlite3 raises
# OperationalError for both, and for much else: see _raise_table_error).
_DRIVER_ERRORS = (
    psycopg.errors.UndefinedTable,
    psycopg.errors.UndefinedColumn,
    sqlite3.OperationalError,
)


class SearchResult(NamedTuple):
    """One search hit: the task's id and its distance to the query (smaller is nearer).

    Distances follow pgvector on both backends: ``cosine`` is 1 - cos θ, ``l2`` the
    Euclidean distance, ``inner_product`` the negated dot product -(a·b).
    """

    qualified_task_id: str
    distance: float


@dataclass(frozen=True)
class IndexInfo:
    """A vector index of the table, as `VectorStorage.indexes()` reports it.

    `parameters` holds the build options (``m`` and ``ef_construction`` for HNSW,
    ``lists`` for IVFFlat); `size` is in bytes; `valid` is False for an index whose
    ``CONCURRENTLY`` build failed (drop it and build again). `halfvec` tells that
    the index compares in half precision (dimensions 2,001 to 4,000).
    """

    name: str
    dimension: int
    metric: str
    method: str
    parameters: dict[str, int] = field(default_factory=dict)
    size: int = 0
    valid: bool = True
    halfvec: bool = False


class _Backend(Protocol):
    """What each backend implements; `conn` None means "open our own transaction"."""

    def upsert(self, task_id: str, backend: str, embedding: Float32Array, conn: Any) -> None: ...

    def upsert_many(self, batches: Iterator[Batch], conn: Any) -> int: ...

    def get(self, task_id: str, conn: Any) -> Float32Array | None: ...

    def delete(self, task_id: str, conn: Any) -> bool: ...

    def count(self, dimension: int | None, conn: Any) -> int: ...

    def search(
        self,
        query: Float32Array,
        k: int,
        metric: Metric,
        backend: str | None,
        exact: bool,
        ef_search: int | None,
        probes: int | None,
        conn: Any,
    ) -> list[SearchResult]: ...

    def explain(
        self,
        query: Float32Array,
        k: int,
        metric: Metric,
        backend: str | None,
        exact: bool,
        ef_search: int | None,
        probes: int | None,
        conn: Any,
    ) -> str: ...

    def create_index(
        self,
        dimension: int,
        method: Method,
        metric: Metric,
        m: int,
        ef_construction: int,
        lists: int | None,
        concurrently: bool,
        conn: Any,
    ) -> str: ...

    def drop_index(self, name: str, concurrently: bool, conn: Any) -> None: ...

    def indexes(self, conn: Any) -> list[IndexInfo]: ...

    def create_table(self, conn: Any) -> None: ...


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
        self._impl: _Backend
        if db.get_backend_type() == "postgres":
            from ._vectors_pg import PgVectors

            self._impl = PgVectors(db, self._table)
        else:
            from ._vectors_sqlite import SqliteVectors

            self._impl = SqliteVectors(db, self._table)

    def __repr__(self) -> str:
        return f"<VectorStorage {self._table!r} on {self._db!r}>"

    @property
    def table(self) -> str:
        """The table's name."""
        return self._table

    def _raise_table_error(self, error: Exception) -> None:
        """InvalidArgumentError for a driver error about a missing table or one of another layout.

        Returns (and the caller re-raises `error`) for any other error.
        """
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        if isinstance(error, psycopg.errors.UndefinedTable) or "no such table" in reason:
            raise InvalidArgumentError(
                f"table {self._table!r} does not exist in {self._db.url} ({reason}); run "
                "db.initialize() for task_embeddings, or create_table() for a table of your own"
            ) from error
        if isinstance(error, psycopg.errors.UndefinedColumn) or (
            isinstance(error, sqlite3.OperationalError)
            and ("no such column" in reason or "has no column named" in reason)
        ):
            raise InvalidArgumentError(
                f"table {self._table!r} in {self._db.url} does not have the layout of "
                f"task_embeddings ({reason}); choose another table name, or drop that table and "
                "create it with create_table()"
            ) from error

    # -- writes ------------------------------------------------------------------------

    def upsert(
        self,
        qualified_task_id: str,
        embedding: object,
        *,
        backend: str | None = None,
        conn: Any = None,
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
        try:
            self._impl.upsert(task_id, label, vector, conn)
        except _DRIVER_ERRORS as e:
            self._raise_table_error(e)
            raise

    def upsert_many(
        self,
        items: Iterable[tuple[str, object]] | tuple[Iterable[str], object],
        *,
        conn: Any = None,
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
        try:
            return self._impl.upsert_many(iter_batches(items), conn)
        except _DRIVER_ERRORS as e:
            self._raise_table_error(e)
            raise

    def delete(self, qualified_task_id: str, *, conn: Any = None) -> bool:
        """Remove a task's embedding; True if there was one."""
        task_id = check_task_id(qualified_task_id)
        try:
            return self._impl.delete(task_id, conn)
        except _DRIVER_ERRORS as e:
            self._raise_table_error(e)
            raise

    # -- reads -------------------------------------------------------------------------

    def get(self, qualified_task_id: str, *, conn: Any = None) -> np.ndarray[Any, Any] | None:
        """The stored embedding as a 1-D float32 array (bit for bit), or None."""
        task_id = check_task_id(qualified_task_id)
        try:
            return self._impl.get(task_id, conn)
        except _DRIVER_ERRORS as e:
            self._raise_table_error(e)
            raise

    def count(self, *, dimension: int | None = None, conn: Any = None) -> int:
        """How many embeddings are stored, or how many of one dimension."""
        dim = None if dimension is None else as_dimension(dimension)
        try:
            return self._impl.count(dim, conn)
        except _DRIVER_ERRORS as e:
            self._raise_table_error(e)
            raise

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
        conn: Any = None,
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
        args = self._search_args(query, k, metric, backend, exact, ef_search, probes)
        try:
            return self._impl.search(*args, conn)
        except _DRIVER_ERRORS as e:
            self._raise_table_error(e)
            raise

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
        conn: Any = None,
    ) -> str:
        """How `search` with these arguments would run: PostgreSQL's EXPLAIN, with settings.

        Use it to check that a search uses the index you built (look for its name).
        On SQLite it describes the exact numpy scan.
        """
        args = self._search_args(query, k, metric, backend, exact, ef_search, probes)
        try:
            return self._impl.explain(*args, conn)
        except _DRIVER_ERRORS as e:
            self._raise_table_error(e)
            raise

    def _search_args(
        self,
        query: object,
        k: object,
        metric: object,
        backend: object,
        exact: object,
        ef_search: object,
        probes: object,
    ) -> tuple[Float32Array, int, Metric, str | None, bool, int | None, int | None]:
        vector = as_query(query, metric)
        checked_metric = check_metric(metric)
        return (
            vector,
            check_k(k),
            checked_metric,
            None if backend is None else check_backend(backend),
            bool(exact),
            None if ef_search is None else as_int(ef_search, "ef_search", 1, MAX_EF_SEARCH),
            None if probes is None else as_int(probes, "probes", 1, MAX_PROBES),
        )

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
        conn: Any = None,
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
        dim = as_dimension(dimension)
        check_indexable(dim)
        checked_method = check_method(method)
        checked_metric = check_metric(metric)
        m_value = as_int(m, "m", 2, 100)
        ef_value = as_int(ef_construction, "ef_construction", 4, 1000)
        if checked_method == "hnsw" and ef_value < 2 * m_value:
            raise InvalidArgumentError(
                f"ef_construction={ef_value} must be at least 2 * m = {2 * m_value} "
                "(pgvector's rule); raise ef_construction or lower m"
            )
        lists_value = None if lists is None else as_int(lists, "lists", 1, MAX_PROBES)
        try:
            return self._impl.create_index(
                dim,
                checked_method,
                checked_metric,
                m_value,
                ef_value,
                lists_value,
                bool(concurrently),
                conn,
            )
        except _DRIVER_ERRORS as e:
            self._raise_table_error(e)
            raise

    def drop_index(self, name: str, *, concurrently: bool = False, conn: Any = None) -> None:
        """Drop a vector index of this table by name (see `indexes()`); no-op on SQLite."""
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(
                f"index name {name!r} must be a non-empty str; see indexes()"
            )
        try:
            self._impl.drop_index(name, bool(concurrently), conn)
        except _DRIVER_ERRORS as e:
            self._raise_table_error(e)
            raise

    def indexes(self, *, conn: Any = None) -> list[IndexInfo]:
        """The table's vector indexes (HNSW and IVFFlat) by name; empty on SQLite."""
        try:
            return self._impl.indexes(conn)
        except _DRIVER_ERRORS as e:
            self._raise_table_error(e)
            raise

    def create_table(self, *, conn: Any = None) -> None:
        """Create this storage's table if missing, with the layout of ``task_embeddings``.

        Only needed for a custom `table`: ``db.initialize()`` creates the default one.
        """
        try:
            self._impl.create_table(conn)
        except _DRIVER_ERRORS as e:
            self._raise_table_error(e)
            raise
