"""What each engine implements for `VectorStorage`: the vector domain's SQL and I/O.

`VectorStorage` checks every argument once (`shareddb._vectors.request`,
`shareddb._vectors.validation`) and hands the engine's `VectorOps` values it can
trust; `conn` None means "a connection of our own".
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from shareddb._core.types import Connection
from shareddb._vectors.batches import Batch
from shareddb._vectors.request import IndexRequest, SearchRequest
from shareddb._vectors.results import IndexInfo, SearchResult
from shareddb._vectors.validation import Float32Array


class VectorOps(Protocol):
    def upsert(
        self, task_id: str, backend: str, embedding: Float32Array, conn: Connection | None
    ) -> None: ...

    def upsert_many(self, batches: Iterator[Batch], conn: Connection | None) -> int: ...

    def get(self, task_id: str, conn: Connection | None) -> Float32Array | None: ...

    def delete(self, task_id: str, conn: Connection | None) -> bool: ...

    def count(self, dimension: int | None, conn: Connection | None) -> int: ...

    def search(self, request: SearchRequest, conn: Connection | None) -> list[SearchResult]: ...

    def explain(self, request: SearchRequest, conn: Connection | None) -> str: ...

    def create_index(self, request: IndexRequest, conn: Connection | None) -> str: ...

    def drop_index(self, name: str, concurrently: bool, conn: Connection | None) -> None: ...

    def indexes(self, conn: Connection | None) -> list[IndexInfo]: ...

    def create_table(self, conn: Connection | None) -> None: ...

    def sample_ids(self, dimension: int, size: int, seed: int) -> list[str]:
        """Up to `size` ids of `dimension`, drawn by a repeatable `seed` (for tuning)."""
        ...
