"""Task embeddings: store vectors per qualified task id and search them by similarity.

`VectorStorage(db)` works the same on both engines. Each row is a record: the vector,
its task-source label (`backend`), a JSON object of `metadata` to filter on, the
`content_hash` of the embedded text and the `model` that made it. On PostgreSQL it
writes plain SQL for pgvector (binary COPY for bulk loads, partial expression indexes
per dimension, per-query settings with ``SET LOCAL`` semantics, filters in SQL); on
SQLite it stores little-endian float32 blobs and JSON text, filters in SQL and ranks
the matching rows exactly with numpy over a cached matrix.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np

from shareddb._core.types import Connection
from shareddb._vectors.batches import EmbeddingItem, checked_ids, iter_batches, row_fields
from shareddb._vectors.request import (
    DEFAULT_EF_CONSTRUCTION,
    DEFAULT_M,
    NO_FILTER,
    RowFilter,
    index_request,
    row_filter,
    search_request,
)
from shareddb._vectors.results import EmbeddingRecord, IndexInfo, SearchHit, SearchResult
from shareddb._vectors.validation import (
    Method,
    Metric,
    as_embedding,
    check_label,
    check_table_name,
    check_task_id,
    default_backend,
)
from shareddb.errors import InvalidArgumentError

if TYPE_CHECKING:
    from shareddb._core.service import DbService
    from shareddb._vectors.ops import VectorOps

__all__ = [
    "AsyncVectorStorage",
    "EmbeddingItem",
    "EmbeddingRecord",
    "IndexInfo",
    "SearchHit",
    "SearchResult",
    "VectorStorage",
]

# A filter over metadata keys (see the README's "Filters"): {"status": "open"},
# {"priority": {"$gte": 2}}, {"$or": [...]}.
Where = Mapping[str, Any]

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
        metadata: Mapping[str, Any] | None = None,
        content_hash: str | None = None,
        model: str | None = None,
        conn: Connection | None = None,
    ) -> None:
        """Store `embedding` and its record for a task, replacing the vector it had.

        On an existing id every field left None keeps its stored value (`backend`
        included; ``metadata={}`` clears the metadata); on a new id `backend` defaults
        to the prefix of the id before ``#`` (``md#253`` -> ``md``) and `metadata` to
        ``{}``. The row keeps its ``created_at`` and moves ``updated_at``. Raises
        DimensionMismatchError when the id is stored with another dimension (delete it
        first to change it), InvalidEmbeddingError for an empty, 2-D, non-numeric or
        non-finite embedding, InvalidArgumentError for metadata that is not a JSON
        object (naming the key). For many rows use `upsert_many`.
        """
        task_id = check_task_id(qualified_task_id)
        fields = row_fields(
            task_id, backend=backend, metadata=metadata, content_hash=content_hash, model=model
        )
        vector = as_embedding(embedding, what=f"embedding of {task_id!r}")
        with self._errors:
            self._impl.upsert(task_id, default_backend(task_id), vector, fields, conn)

    def upsert_many(
        self,
        items: Iterable[tuple[str, object] | EmbeddingItem] | tuple[Iterable[str], object],
        *,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        content_hashes: Sequence[str | None] | None = None,
        model: str | None = None,
        conn: Connection | None = None,
    ) -> int:
        """Store many embeddings at once, all or nothing; returns how many items were given.

        `items` is either one pair ``(ids, matrix)`` of a sequence of ids and a 2-D
        numpy array with a row per id — with `metadata` and `content_hashes` lists
        aligned with the ids — or an iterable of ``(qualified_task_id, embedding)``
        pairs or `EmbeddingItem` records carrying their own fields (consumed in
        bounded batches, never held in memory whole). `model` applies to every row
        (an item's own model wins). As in `upsert`, a field left None keeps the stored
        value. When an id repeats, its last item wins. On PostgreSQL rows stream
        through binary COPY: straight into the table while none of the ids exists yet,
        otherwise through a temporary table and one ``MERGE``. On SQLite,
        ``executemany`` in one transaction. Any bad item raises before the
        transaction commits and leaves the table exactly as it was.
        """
        batches = iter_batches(items, metadata=metadata, content_hashes=content_hashes, model=model)
        with self._errors:
            return self._impl.upsert_many(batches, conn)

    def delete(self, qualified_task_id: str, *, conn: Connection | None = None) -> bool:
        """Remove a task's embedding; True if there was one."""
        task_id = check_task_id(qualified_task_id)
        with self._errors:
            return self._impl.delete(task_id, conn)

    def delete_many(self, ids: Iterable[str], *, conn: Connection | None = None) -> int:
        """Remove the embeddings of these ids in one statement; how many there were."""
        checked = _id_list(ids, "delete_many")
        with self._errors:
            return self._impl.delete_many(checked, conn) if checked else 0

    # -- reads -------------------------------------------------------------------------

    def get(
        self, qualified_task_id: str, *, conn: Connection | None = None
    ) -> np.ndarray[Any, Any] | None:
        """The stored embedding as a 1-D float32 array (bit for bit), or None."""
        task_id = check_task_id(qualified_task_id)
        with self._errors:
            return self._impl.get(task_id, conn)

    def get_record(
        self, qualified_task_id: str, *, conn: Connection | None = None
    ) -> EmbeddingRecord | None:
        """The stored record (vector, backend, metadata, content hash, model, times), or None."""
        task_id = check_task_id(qualified_task_id)
        with self._errors:
            return self._impl.get_record(task_id, conn)

    def get_many(
        self, ids: Iterable[str], *, conn: Connection | None = None
    ) -> dict[str, np.ndarray[Any, Any]]:
        """The stored embeddings of these ids in one statement; missing ids are absent."""
        checked = _id_list(ids, "get_many")
        with self._errors:
            return self._impl.get_many(checked, conn) if checked else {}

    def exists(self, qualified_task_id: str, *, conn: Connection | None = None) -> bool:
        """Whether an embedding is stored for the id."""
        task_id = check_task_id(qualified_task_id)
        with self._errors:
            return self._impl.exists(task_id, conn)

    def ids(
        self,
        *,
        where: Where | None = None,
        backend: str | None = None,
        model: str | None = None,
        dimension: int | None = None,
        conn: Connection | None = None,
    ) -> Iterator[str]:
        """The ids of the matching rows, in code-point order, streamed.

        The ids never sit in memory all at once: PostgreSQL reads them through a
        server-side cursor (a pooled connection stays checked out until the iterator
        is exhausted or closed), SQLite in pages, each in a short read transaction.
        The filter is checked now; the rows are read as you iterate.
        """
        rows = row_filter(dimension=dimension, backend=backend, model=model, where=where)
        return self._ids(rows, conn)

    def _ids(self, rows: RowFilter, conn: Connection | None) -> Iterator[str]:
        with self._errors:
            yield from self._impl.ids(rows, conn)

    def count(
        self,
        *,
        dimension: int | None = None,
        backend: str | None = None,
        model: str | None = None,
        where: Where | None = None,
        conn: Connection | None = None,
    ) -> int:
        """How many embeddings are stored, or how many match the given filters."""
        rows = row_filter(dimension=dimension, backend=backend, model=model, where=where)
        with self._errors:
            return self._impl.count(rows, conn)

    def stale(
        self,
        hashes: Mapping[str, str],
        *,
        model: str | None = None,
        conn: Connection | None = None,
    ) -> list[str]:
        """Of ``{id: content_hash}``, the ids to embed again, in the given order.

        An id is stale when nothing is stored for it, when its stored content hash
        differs (or is missing), or — with `model` — when another model made it. One
        statement, however many ids.
        """
        if not isinstance(hashes, Mapping):
            raise InvalidArgumentError(
                f"stale() takes a mapping of id to content hash, not {type(hashes).__name__}",
                fix="pass {qualified_task_id: content_hash, ...}",
            )
        pairs = [
            (check_task_id(task_id), check_label("content_hash", digest))
            for task_id, digest in hashes.items()
        ]
        checked_model = None if model is None else check_label("model", model)
        if not pairs:
            return []
        with self._errors:
            return self._impl.stale(pairs, checked_model, conn)

    @overload
    def search(
        self,
        query: object,
        k: int = ...,
        *,
        metric: Metric = ...,
        backend: str | None = ...,
        model: str | None = ...,
        where: Where | None = ...,
        max_distance: float | None = ...,
        exclude: Iterable[str] | None = ...,
        exact: bool = ...,
        ef_search: int | None = ...,
        probes: int | None = ...,
        with_metadata: Literal[False] = ...,
        conn: Connection | None = ...,
    ) -> list[SearchResult]: ...

    @overload
    def search(
        self,
        query: object,
        k: int = ...,
        *,
        metric: Metric = ...,
        backend: str | None = ...,
        model: str | None = ...,
        where: Where | None = ...,
        max_distance: float | None = ...,
        exclude: Iterable[str] | None = ...,
        exact: bool = ...,
        ef_search: int | None = ...,
        probes: int | None = ...,
        with_metadata: Literal[True],
        conn: Connection | None = ...,
    ) -> list[SearchHit]: ...

    def search(
        self,
        query: object,
        k: int = 10,
        *,
        metric: Metric = "cosine",
        backend: str | None = None,
        model: str | None = None,
        where: Where | None = None,
        max_distance: float | None = None,
        exclude: Iterable[str] | None = None,
        exact: bool = False,
        ef_search: int | None = None,
        probes: int | None = None,
        with_metadata: bool = False,
        conn: Connection | None = None,
    ) -> list[SearchResult] | list[SearchHit]:
        """The `k` stored embeddings nearest to `query` that match the filters, nearest first.

        Only embeddings with the query's dimension are compared. `backend`, `model`
        and `where` (a filter over metadata keys, see the README) keep the matching
        rows, `exclude` drops ids; a filtered search returns ``min(k, matching rows)``
        rows whatever the filter's selectivity. `max_distance` keeps hits with
        ``distance <= max_distance`` (so it may return fewer than k).
        `with_metadata=True` returns `SearchHit` rows carrying each hit's metadata (no
        second round trip on PostgreSQL).

        On PostgreSQL an index of that dimension and metric is used when one exists:
        `ef_search` (HNSW, raised to at least `k`) and `probes` (IVFFlat) trade speed
        for recall and apply to this query only; filtered searches scan the index
        iteratively (pgvector 0.8+) and fall back to an exact scan of the matching rows
        when the index scan stops short. `exact=True` bypasses indexes (for recall
        checks). SQLite is always exact.

        Raises DimensionMismatchError when nothing of the query's dimension is stored
        but other dimensions are; InvalidEmbeddingError for a bad query (or an
        all-zero query with ``metric="cosine"``); InvalidArgumentError for a malformed
        filter, before any SQL runs.
        """
        if backend is None and model is None and where is None and exclude is None:
            rows = NO_FILTER  # the common case, spared the checks
        else:
            rows = row_filter(backend=backend, model=model, where=where, exclude=exclude)
        request = search_request(
            query,
            k,
            metric,
            rows,
            exact,
            ef_search,
            probes,
            max_distance,
            with_metadata=with_metadata,
        )
        with self._errors:
            return self._impl.search(request, conn)

    @overload
    def search_by_id(
        self,
        qualified_task_id: str,
        k: int = ...,
        *,
        metric: Metric = ...,
        backend: str | None = ...,
        model: str | None = ...,
        where: Where | None = ...,
        max_distance: float | None = ...,
        exclude: Iterable[str] | None = ...,
        exact: bool = ...,
        ef_search: int | None = ...,
        probes: int | None = ...,
        with_metadata: Literal[False] = ...,
        conn: Connection | None = ...,
    ) -> list[SearchResult]: ...

    @overload
    def search_by_id(
        self,
        qualified_task_id: str,
        k: int = ...,
        *,
        metric: Metric = ...,
        backend: str | None = ...,
        model: str | None = ...,
        where: Where | None = ...,
        max_distance: float | None = ...,
        exclude: Iterable[str] | None = ...,
        exact: bool = ...,
        ef_search: int | None = ...,
        probes: int | None = ...,
        with_metadata: Literal[True],
        conn: Connection | None = ...,
    ) -> list[SearchHit]: ...

    def search_by_id(
        self,
        qualified_task_id: str,
        k: int = 10,
        *,
        metric: Metric = "cosine",
        backend: str | None = None,
        model: str | None = None,
        where: Where | None = None,
        max_distance: float | None = None,
        exclude: Iterable[str] | None = None,
        exact: bool = False,
        ef_search: int | None = None,
        probes: int | None = None,
        with_metadata: bool = False,
        conn: Connection | None = None,
    ) -> list[SearchResult] | list[SearchHit]:
        """More like this: `search` with the stored vector of an id, the id itself never a hit.

        The vector is read inside the search (one round trip on PostgreSQL while the
        table holds one dimension). Raises EmbeddingNotFoundError (a KeyError) when
        nothing is stored for the id.
        """
        task_id = check_task_id(qualified_task_id)
        rows = row_filter(backend=backend, model=model, where=where, exclude=exclude)
        request = search_request(
            None,
            k,
            metric,
            rows,
            exact,
            ef_search,
            probes,
            max_distance,
            by_id=task_id,
            with_metadata=with_metadata,
        )
        with self._errors:
            return self._impl.search(request, conn)

    def explain(
        self,
        query: object,
        k: int = 10,
        *,
        metric: Metric = "cosine",
        backend: str | None = None,
        model: str | None = None,
        where: Where | None = None,
        exclude: Iterable[str] | None = None,
        exact: bool = False,
        ef_search: int | None = None,
        probes: int | None = None,
        conn: Connection | None = None,
    ) -> str:
        """How `search` with these arguments would run: PostgreSQL's EXPLAIN, with settings.

        Use it to check that a search uses the index you built (look for its name).
        On SQLite it describes the exact numpy scan.
        """
        rows = row_filter(backend=backend, model=model, where=where, exclude=exclude)
        request = search_request(query, k, metric, rows, exact, ef_search, probes)
        with self._errors:
            return self._impl.explain(request, conn)

    # -- indexes -----------------------------------------------------------------------

    def create_index(
        self,
        dimension: int,
        *,
        method: Method = "hnsw",
        metric: Metric = "cosine",
        m: int = DEFAULT_M,
        ef_construction: int = DEFAULT_EF_CONSTRUCTION,
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


def _id_list(ids: object, method: str) -> list[str]:
    """`ids` as a checked list without repeats, or InvalidArgumentError."""
    if isinstance(ids, str | bytes) or not isinstance(ids, Iterable):
        raise InvalidArgumentError(
            f"{method}() takes a collection of ids, not {type(ids).__name__}",
            fix="pass a list of qualified task ids",
        )
    return list(dict.fromkeys(checked_ids(list(ids))))


# The async twin, defined over VectorStorage (imported last: it imports this module).
from shareddb._async.vectors import AsyncVectorStorage  # noqa: E402

AsyncVectorStorage.__module__ = __name__
