"""What each engine implements for `VectorStorage`: the vector domain's SQL and I/O.

`VectorStorage` checks every argument once (`shareddb._vectors.request`,
`shareddb._vectors.validation`, `shareddb._vectors.batches`) and hands the engine's
`VectorOps` values it can trust; `conn` None means "a connection of our own".
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from shareddb._core.types import Connection
from shareddb._vectors.batches import Batch
from shareddb._vectors.request import IndexRequest, RowFilter, SearchRequest
from shareddb._vectors.results import EmbeddingRecord, IndexInfo, SearchHit, SearchResult
from shareddb._vectors.validation import Float32Array


class VectorOps(Protocol):
    def upsert(
        self,
        task_id: str,
        default_backend: str,
        embedding: Float32Array,
        fields: dict[str, str | None],
        conn: Connection | None,
    ) -> None:
        """`fields`: backend, metadata (JSON text), content_hash, model; None keeps."""
        ...

    def upsert_many(self, batches: Iterator[Batch], conn: Connection | None) -> int: ...

    def delete(self, task_id: str, conn: Connection | None) -> bool: ...

    def delete_many(self, ids: list[str], conn: Connection | None) -> int: ...

    def get(self, task_id: str, conn: Connection | None) -> Float32Array | None: ...

    def get_record(self, task_id: str, conn: Connection | None) -> EmbeddingRecord | None: ...

    def get_many(self, ids: list[str], conn: Connection | None) -> dict[str, Float32Array]: ...

    def exists(self, task_id: str, conn: Connection | None) -> bool: ...

    def ids(self, rows: RowFilter, conn: Connection | None) -> Iterator[str]: ...

    def count(self, rows: RowFilter, conn: Connection | None) -> int: ...

    def stale(
        self, hashes: list[tuple[str, str]], model: str | None, conn: Connection | None
    ) -> list[str]: ...

    def search(
        self, request: SearchRequest, conn: Connection | None
    ) -> list[SearchResult] | list[SearchHit]: ...

    def explain(self, request: SearchRequest, conn: Connection | None) -> str: ...

    def create_index(self, request: IndexRequest, conn: Connection | None) -> str: ...

    def drop_index(self, name: str, concurrently: bool, conn: Connection | None) -> None: ...

    def indexes(self, conn: Connection | None) -> list[IndexInfo]: ...

    def create_table(self, conn: Connection | None) -> None: ...

    def sample_ids(self, dimension: int, size: int, seed: int) -> list[str]:
        """Up to `size` ids of `dimension`, drawn by a repeatable `seed` (for tuning)."""
        ...
