"""AsyncVectorStorage: `VectorStorage`, awaited.

Each method hands its arguments, untouched, to the same method of a `VectorStorage` on
the service's sync implementation, run by `AsyncDbService.run`: every check, statement
and error is the sync class's own, so the two can't drift. ``conn=`` takes the
connection of ``AsyncDbService.transaction()``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from shareddb._vectors.batches import EmbeddingItem
from shareddb._vectors.request import DEFAULT_EF_CONSTRUCTION, DEFAULT_M
from shareddb._vectors.results import EmbeddingRecord, IndexInfo, SearchHit, SearchResult
from shareddb._vectors.validation import Method, Metric
from shareddb.vectors import DEFAULT_TABLE, VectorStorage

if TYPE_CHECKING:
    import numpy as np

    from shareddb._async.service import AsyncDbService, AsyncRows


class AsyncVectorStorage:
    """`VectorStorage` for asyncio: every method a coroutine with the same arguments.

    `ids()` is an async iterator. Results and errors are those of `VectorStorage`::

        vectors = AsyncVectorStorage(db)
        await vectors.upsert_many((ids, matrix))
        hits = await vectors.search(query, 10, metric="cosine")
    """

    def __init__(self, db: AsyncDbService, *, table: str = DEFAULT_TABLE) -> None:
        self._db = db
        self._sync = VectorStorage(db.sync_service, table=table)

    def __repr__(self) -> str:
        return f"<AsyncVectorStorage {self._sync.table!r} on {self._db!r}>"

    @property
    def table(self) -> str:
        return self._sync.table

    @property
    def db(self) -> AsyncDbService:
        return self._db

    # -- writes ------------------------------------------------------------------------

    async def upsert(
        self,
        qualified_task_id: str,
        embedding: object,
        *,
        backend: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        content_hash: str | None = None,
        model: str | None = None,
        conn: Any = None,
    ) -> None:
        """As `VectorStorage.upsert`."""
        await self._db.run(
            self._sync.upsert,
            qualified_task_id,
            embedding,
            backend=backend,
            metadata=metadata,
            content_hash=content_hash,
            model=model,
            conn=conn,
        )

    async def upsert_many(
        self,
        items: Iterable[tuple[str, object] | EmbeddingItem] | tuple[Iterable[str], object],
        *,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        content_hashes: Sequence[str | None] | None = None,
        model: str | None = None,
        conn: Any = None,
    ) -> int:
        """As `VectorStorage.upsert_many`: all or nothing, a cancelled call too.

        Its batches are checked and encoded off the event loop (on PostgreSQL on a
        worker thread whose waits are awaited on the loop).
        """
        return await self._db.run_cpu(
            self._sync.upsert_many,
            items,
            metadata=metadata,
            content_hashes=content_hashes,
            model=model,
            conn=conn,
        )

    async def delete(self, qualified_task_id: str, *, conn: Any = None) -> bool:
        return await self._db.run(self._sync.delete, qualified_task_id, conn=conn)

    async def delete_many(self, ids: Iterable[str], *, conn: Any = None) -> int:
        return await self._db.run(self._sync.delete_many, ids, conn=conn)

    # -- reads -------------------------------------------------------------------------

    async def get(self, qualified_task_id: str, *, conn: Any = None) -> np.ndarray[Any, Any] | None:
        return await self._db.run(self._sync.get, qualified_task_id, conn=conn)

    async def get_record(
        self, qualified_task_id: str, *, conn: Any = None
    ) -> EmbeddingRecord | None:
        return await self._db.run(self._sync.get_record, qualified_task_id, conn=conn)

    async def get_many(
        self, ids: Iterable[str], *, conn: Any = None
    ) -> dict[str, np.ndarray[Any, Any]]:
        return await self._db.run(self._sync.get_many, ids, conn=conn)

    async def exists(self, qualified_task_id: str, *, conn: Any = None) -> bool:
        return await self._db.run(self._sync.exists, qualified_task_id, conn=conn)

    def ids(
        self,
        *,
        where: Mapping[str, Any] | None = None,
        backend: str | None = None,
        model: str | None = None,
        dimension: int | None = None,
        conn: Any = None,
    ) -> AsyncRows[str]:
        """As `VectorStorage.ids`, an async iterator (``async for task_id in vectors.ids()``).

        The filter is checked now. On PostgreSQL it holds a pooled connection until
        exhausted or closed: ``async with contextlib.aclosing(vectors.ids()) as ids:``.
        """
        rows = self._sync.ids(
            where=where, backend=backend, model=model, dimension=dimension, conn=conn
        )
        return self._db.stream(rows, conn=conn)

    async def count(
        self,
        *,
        dimension: int | None = None,
        backend: str | None = None,
        model: str | None = None,
        where: Mapping[str, Any] | None = None,
        conn: Any = None,
    ) -> int:
        return await self._db.run(
            self._sync.count,
            dimension=dimension,
            backend=backend,
            model=model,
            where=where,
            conn=conn,
        )

    async def stale(
        self, hashes: Mapping[str, str], *, model: str | None = None, conn: Any = None
    ) -> list[str]:
        return await self._db.run(self._sync.stale, hashes, model=model, conn=conn)

    async def search(
        self, query: object, k: int = 10, **options: Any
    ) -> list[SearchResult] | list[SearchHit]:
        """As `VectorStorage.search`, with its keyword arguments (metric, where, ...).

        A cancelled search leaves no setting behind on its connection.
        """
        return await self._db.run(self._sync.search, query, k, **options)

    async def search_by_id(
        self, qualified_task_id: str, k: int = 10, **options: Any
    ) -> list[SearchResult] | list[SearchHit]:
        """As `VectorStorage.search_by_id`, with its keyword arguments."""
        return await self._db.run(self._sync.search_by_id, qualified_task_id, k, **options)

    async def explain(self, query: object, k: int = 10, **options: Any) -> str:
        """As `VectorStorage.explain`, with its keyword arguments."""
        return await self._db.run(self._sync.explain, query, k, **options)

    # -- indexes -----------------------------------------------------------------------

    async def create_index(
        self,
        dimension: int,
        *,
        method: Method = "hnsw",
        metric: Metric = "cosine",
        m: int = DEFAULT_M,
        ef_construction: int = DEFAULT_EF_CONSTRUCTION,
        lists: int | None = None,
        concurrently: bool = False,
        conn: Any = None,
    ) -> str:
        """As `VectorStorage.create_index` (its progress log lines are not written here)."""
        return await self._db.run(
            self._sync.create_index,
            dimension,
            method=method,
            metric=metric,
            m=m,
            ef_construction=ef_construction,
            lists=lists,
            concurrently=concurrently,
            conn=conn,
        )

    async def drop_index(self, name: str, *, concurrently: bool = False, conn: Any = None) -> None:
        await self._db.run(self._sync.drop_index, name, concurrently=concurrently, conn=conn)

    async def indexes(self, *, conn: Any = None) -> list[IndexInfo]:
        return await self._db.run(self._sync.indexes, conn=conn)

    async def create_table(self, *, conn: Any = None) -> None:
        await self._db.run(self._sync.create_table, conn=conn)
