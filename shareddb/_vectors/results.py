"""What vector searches and index listings return (public through `shareddb.vectors`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


class SearchResult(NamedTuple):
    """One search hit: the task's id and its distance to the query (smaller is nearer).

    Distances follow pgvector on both engines: ``cosine`` is 1 - cos θ, ``l2`` the
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


# Documented, pickled and shown under the module users import them from.
SearchResult.__module__ = IndexInfo.__module__ = "shareddb.vectors"
