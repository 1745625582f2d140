"""upsert_many's input, checked and cut into bounded batches for either engine.

Besides ids and vectors a batch may carry, per row, the record fields of the call: a
backend label, metadata (as canonical JSON text), a content hash and a model. A field
left None keeps what an existing row has (and takes the default on a new row).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

import numpy as np

from shareddb._core.text import MAX_INDEXED_BYTES
from shareddb._vectors.metadata import check_metadata
from shareddb._vectors.validation import (
    MAX_DIMENSION,
    Float32Array,
    as_embedding,
    as_matrix,
    check_backend,
    check_label,
    check_task_id,
)
from shareddb.errors import DimensionMismatchError, InvalidArgumentError

# A batch holds at most this many rows and about this many bytes of vectors.
BATCH_ROWS: Final = 50_000
BATCH_BYTES: Final = 32 * 1024 * 1024
_MISSING: Final = object()


class EmbeddingItem(NamedTuple):
    """One item of `VectorStorage.upsert_many`'s streamed form, with its record fields.

    A plain ``(qualified_task_id, embedding)`` pair is an item with no fields. A field
    left None keeps the stored value of an existing id.
    """

    qualified_task_id: str
    embedding: object
    metadata: Mapping[str, Any] | None = None
    content_hash: str | None = None
    model: str | None = None
    backend: str | None = None


EmbeddingItem.__module__ = "shareddb.vectors"

# The optional columns a batch may carry, in the order the engines write them.
FIELDS: Final = ("backend", "metadata", "content_hash", "model")


@dataclass
class Batch:
    """Rows to write: ids, backends and vectors, each list in item order.

    `matrix` is set when every row has one dimension and the rows came as a matrix
    (the ``(ids, matrix)`` form); otherwise `vectors` holds one array per row.
    `first` is the 0-based position of the batch's first item in the whole input.
    """

    ids: list[str]
    backends: list[str]
    dimensions: list[int]
    matrix: Float32Array | None
    vectors: list[Float32Array] | None
    first: int = 0
    # Optional columns: field name -> one value per row (None: keep the stored value).
    fields: dict[str, list[str | None]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self) -> Iterable[Float32Array]:
        if self.matrix is not None:
            return self.matrix
        assert self.vectors is not None
        return self.vectors

    def deduplicated(self) -> Batch:
        """The batch with only the last occurrence of each id, in item order.

        Raises DimensionMismatchError when one id comes with two dimensions: applied
        one after the other, the second would fail.
        """
        if len(set(self.ids)) == len(self.ids):
            return self
        last: dict[str, int] = {}
        for position, task_id in enumerate(self.ids):
            previous = last.get(task_id)
            if previous is not None and self.dimensions[previous] != self.dimensions[position]:
                raise DimensionMismatchError(
                    f"qualified_task_id {task_id!r} appears twice in one upsert_many call, "
                    f"with {self.dimensions[previous]} and {self.dimensions[position]} "
                    "dimensions; an embedding keeps its dimension: delete it first to change it"
                )
            last[task_id] = position
        keep = sorted(last.values())
        fields = {name: [values[i] for i in keep] for name, values in self.fields.items()}
        return Batch(
            ids=[self.ids[i] for i in keep],
            backends=[self.backends[i] for i in keep],
            dimensions=[self.dimensions[i] for i in keep],
            matrix=None if self.matrix is None else self.matrix[keep],
            vectors=None if self.vectors is None else [self.vectors[i] for i in keep],
            first=self.first,
            fields=fields,
        )


def is_ids_and_matrix(items: object) -> bool:
    """True for the ``(ids, matrix)`` form: two elements, the second a 2-D numpy array."""
    return (
        isinstance(items, tuple | list)
        and len(items) == 2
        and isinstance(items[1], np.ndarray)
        and items[1].ndim == 2
    )


def iter_batches(
    items: object,
    *,
    metadata: object = None,
    content_hashes: object = None,
    model: object = None,
) -> Iterator[Batch]:
    """Check `items` lazily and yield bounded batches; errors name the bad item.

    `metadata` and `content_hashes` are sequences aligned with the ids of the
    ``(ids, matrix)`` form; the streamed form carries them in each `EmbeddingItem`.
    `model` is every row's model (an item's own model wins).
    """
    default_model = None if model is None else check_label("model", model)
    if is_ids_and_matrix(items):
        assert isinstance(items, tuple | list)
        rows = items[1].shape[0]
        columns = {
            "metadata": _aligned("metadata", metadata, rows),
            "content_hash": _aligned("content_hashes", content_hashes, rows),
        }
        return _matrix_batches(items[0], items[1], columns, default_model)
    if metadata is not None or content_hashes is not None:
        raise InvalidArgumentError(
            "upsert_many() takes metadata= and content_hashes= with the (ids, matrix) form; "
            "for an iterable, give each item its own fields",
            fix="yield EmbeddingItem(id, embedding, metadata=..., content_hash=...)",
        )
    if isinstance(items, str | bytes | np.ndarray) or not isinstance(items, Iterable):
        raise InvalidArgumentError(
            f"upsert_many() takes an iterable of (qualified_task_id, embedding) pairs or a "
            f"pair (ids, matrix) with a 2-D numpy array, not {type(items).__name__}"
        )
    return _pair_batches(items, default_model)


def _aligned(name: str, values: object, rows: int) -> Sequence[Any] | None:
    """A per-row sequence argument, checked for its length."""
    if values is None:
        return None
    if isinstance(values, str | bytes | Mapping) or not isinstance(values, Sequence):
        raise InvalidArgumentError(
            f"upsert_many(..., {name}=) is a {type(values).__name__}",
            fix=f"pass a list with one entry per id (None keeps a row's stored {name})",
        )
    if len(values) != rows:
        raise InvalidArgumentError(
            f"upsert_many(..., {name}=) has {len(values)} entries for {rows} rows",
            fix="pass one entry per id",
        )
    return values


def row_fields(
    task_id: str,
    *,
    backend: object = None,
    metadata: object = None,
    content_hash: object = None,
    model: object = None,
) -> dict[str, str | None]:
    """One row's record fields checked and in stored form (metadata as JSON text)."""
    return {
        "backend": None if backend is None else check_backend(backend),
        "metadata": None if metadata is None else check_metadata(metadata, task_id),
        "content_hash": None if content_hash is None else check_label("content_hash", content_hash),
        "model": None if model is None else check_label("model", model),
    }


def _matrix_batches(
    ids: object,
    matrix: np.ndarray[Any, Any],
    columns: dict[str, Sequence[Any] | None],
    model: str | None,
) -> Iterator[Batch]:
    if isinstance(ids, str | bytes) or not isinstance(ids, Iterable):
        raise InvalidArgumentError(
            f"upsert_many((ids, matrix)): ids is a {type(ids).__name__}; pass a sequence of "
            "qualified task ids, one per row of the matrix"
        )
    rows, dimension = matrix.shape
    if isinstance(ids, list | tuple | np.ndarray) and len(ids) != rows:
        raise InvalidArgumentError(
            f"upsert_many((ids, matrix)) got {len(ids)} ids for a matrix of {rows} rows; "
            "pass one id per row"
        )
    checked = as_matrix(matrix, what="upsert_many matrix")
    step = max(1, min(BATCH_ROWS, BATCH_BYTES // (4 * max(dimension, 1))))
    id_iter = iter(ids)
    for start in range(0, rows, step):
        stop = min(start + step, rows)
        batch_ids = checked_ids(list(itertools.islice(id_iter, stop - start)))
        if len(batch_ids) < stop - start:
            raise InvalidArgumentError(
                f"upsert_many((ids, matrix)) got {start + len(batch_ids)} ids for a matrix of "
                f"{rows} rows; pass one id per row"
            )
        fields: dict[str, list[str | None]] = {}
        metadata, hashes = columns["metadata"], columns["content_hash"]
        if metadata is not None:
            fields["metadata"] = [
                None if m is None else check_metadata(m, task_id)
                for task_id, m in zip(batch_ids, metadata[start:stop], strict=True)
            ]
        if hashes is not None:
            fields["content_hash"] = [
                None if h is None else check_label("content_hash", h) for h in hashes[start:stop]
            ]
        if model is not None:
            fields["model"] = [model] * len(batch_ids)
        yield Batch(
            ids=batch_ids,
            backends=backends_of(batch_ids),
            dimensions=[dimension] * len(batch_ids),
            matrix=checked[start:stop],
            vectors=None,
            first=start,
            fields=fields,
        )
    if next(id_iter, _MISSING) is not _MISSING:
        raise InvalidArgumentError(
            f"upsert_many((ids, matrix)) got more ids than the matrix's {rows} rows; "
            "pass one id per row"
        )


def checked_ids(ids: list[Any]) -> list[str]:
    """`ids` (in place) after checking each as `check_task_id` does.

    The usual id, a short ASCII str without NUL, passes inline; ASCII can't hold a lone
    surrogate. Anything else gets the full check.
    """
    for position, task_id in enumerate(ids):
        if (
            type(task_id) is not str
            or not task_id
            or "\x00" in task_id
            or len(task_id) > MAX_INDEXED_BYTES
            or not task_id.isascii()
        ):
            ids[position] = str(check_task_id(task_id))  # raises, or a str subclass
    return ids


def backends_of(ids: list[str]) -> list[str]:
    """Each id's default backend: the prefix before the first '#', else ""."""
    return [head if sep else "" for head, sep, _ in (i.partition("#") for i in ids)]


def _pair_batches(items: Iterable[Any], model: str | None) -> Iterator[Batch]:
    ids: list[str] = []
    vectors: list[Any] = []
    fields: list[dict[str, str | None] | None] = []
    size = 0
    first = 0
    for position, item in enumerate(items):
        if isinstance(item, EmbeddingItem):
            task_id, vector, *extra = item
        elif isinstance(item, tuple | list) and len(item) == 2:
            task_id, vector = item
            extra = []
        else:
            raise InvalidArgumentError(
                f"upsert_many() item {position} is {_short(item)}; each item must be a pair "
                "(qualified_task_id, embedding) or an EmbeddingItem"
            )
        if (  # as in checked_ids
            type(task_id) is not str
            or not task_id
            or "\x00" in task_id
            or len(task_id) > MAX_INDEXED_BYTES
            or not task_id.isascii()
        ):
            task_id = str(check_task_id(task_id))
        if type(vector) is np.ndarray and vector.ndim == 1 and vector.dtype.kind in "iuf":
            vector = vector.copy()  # a generator may reuse its buffer for the next item
        else:  # anything but a plain numeric 1-D array is checked and converted now
            vector = as_embedding(vector, what=f"embedding of {task_id!r} (item {position})")
        ids.append(task_id)
        vectors.append(vector)
        if extra or model is not None:
            given = dict(zip(EmbeddingItem._fields[2:], extra, strict=False))
            given.setdefault("model", None)
            if given["model"] is None:
                given["model"] = model
            fields.append(row_fields(task_id, **given))
        else:
            fields.append(None)
        size += vector.shape[0] * 4
        if len(ids) >= BATCH_ROWS or size >= BATCH_BYTES:
            yield _pair_batch(ids, vectors, fields, first)
            ids, vectors, fields, size, first = [], [], [], 0, position + 1
    if ids:
        yield _pair_batch(ids, vectors, fields, first)


def _columns(rows: list[dict[str, str | None] | None]) -> dict[str, list[str | None]]:
    """Per-row field dicts as one list per field any row sets."""
    present = [name for name in FIELDS if any(r is not None and r[name] is not None for r in rows)]
    return {name: [None if r is None else r[name] for r in rows] for name in present}


def _pair_batch(
    ids: list[str], vectors: list[Any], rows: list[dict[str, str | None] | None], first: int
) -> Batch:
    """One batch of pairs: one float32 matrix when every vector has one length."""
    dimensions = [v.shape[0] for v in vectors]
    backends = backends_of(ids)
    fields = _columns(rows)
    if min(dimensions) == max(dimensions) and 1 <= dimensions[0] <= MAX_DIMENSION:
        with np.errstate(over="ignore"):
            matrix = np.stack(vectors).astype(np.float32, copy=False)
        finite = np.isfinite(matrix).all(axis=1)
        if finite.all():
            return Batch(ids, backends, dimensions, matrix, None, first, fields)
    checked = [
        as_embedding(v, what=f"embedding of {task_id!r} (item {first + row})")
        for row, (task_id, v) in enumerate(zip(ids, vectors, strict=True))
    ]
    return Batch(ids, backends, dimensions, None, checked, first, fields)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
