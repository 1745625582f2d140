"""What vector searches and index listings return (public through `shareddb.vectors`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from shareddb._vectors.metadata import load_metadata


class SearchResult(NamedTuple):
    """One search hit: the task's id and its distance to the query (smaller is nearer).

    Distances follow pgvector on both engines: ``cosine`` is 1 - cos θ, ``l2`` the
    Euclidean distance, ``inner_product`` the negated dot product -(a·b).
    """

    qualified_task_id: str
    distance: float


class SearchHit(NamedTuple):
    """A search hit with the row's metadata (`search(..., with_metadata=True)`)."""

    qualified_task_id: str
    distance: float
    metadata: dict[str, Any]


@dataclass(frozen=True)
class EmbeddingRecord:
    """One stored embedding with everything kept beside it (`VectorStorage.get_record`).

    `backend` is the task-source label (``md`` for ``md#253`` unless set), `metadata`
    the JSON object stored with it (``{}`` when none), `content_hash` and `model` what
    the application recorded (None when not), the timestamps aware UTC datetimes.
    """

    qualified_task_id: str
    backend: str
    dimension: int
    embedding: npt.NDArray[np.float32]
    metadata: dict[str, Any]
    content_hash: str | None
    model: str | None
    created_at: datetime
    updated_at: datetime


def record_from_row(
    row: Sequence[Any],
    vector: Callable[[Any], npt.NDArray[np.float32]],
    read_time: Callable[[Any], datetime],
) -> EmbeddingRecord:
    """A record from a row of the engines' ``get_record`` statement, with their decoders."""
    qid, backend, dimension, embedding, metadata, content_hash, model, created, updated = row
    return EmbeddingRecord(
        str(qid),
        str(backend),
        int(dimension),
        vector(embedding),
        load_metadata(metadata),
        content_hash,
        model,
        read_time(created),
        read_time(updated),
    )


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
for _public in (EmbeddingRecord, IndexInfo, SearchHit, SearchResult):
    _public.__module__ = "shareddb.vectors"
