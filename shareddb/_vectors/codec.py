"""Every float32 wire format of an embedding, in one place.

- SQLite stores each vector as little-endian float32 bytes (a blob).
- pgvector's binary ``vector``: uint16 dimension, uint16 unused, big-endian float32.
- ``COPY task_embeddings (qualified_task_id, backend, dimension, embedding) FROM STDIN
  (FORMAT BINARY)``: PostgreSQL's binary COPY rows around that vector form.

Vectors are converted with numpy, a whole matrix at a time where there is one; the
only per-row Python work is a row's small header.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from typing import Any, Final

import numpy as np

from shareddb._vectors.batches import Batch
from shareddb._vectors.validation import Float32Array

LITTLE: Final = "<f4"  # SQLite blobs
BIG: Final = ">f4"  # PostgreSQL's binary vector

_VECTOR_HEAD = struct.Struct(">HH")  # dimension, unused

COPY_SIGNATURE: Final = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
COPY_TRAILER: Final = b"\xff\xff"
COPY_CHUNK: Final = 120 * 1024  # below psycopg's MAX_BUFFER_SIZE: written without copies
_ROW_HEAD = struct.Struct(">hi")  # field count 4, then the id's length
_INT32 = struct.Struct(">i")
_DIMENSION_AND_VECTOR_HEAD = struct.Struct(">iiiHH")  # len 4, dimension, len, dim, unused


def to_blob(vector: Float32Array) -> bytes:
    """A vector as SQLite stores it."""
    return np.ascontiguousarray(vector, dtype=LITTLE).tobytes()


def from_blob(data: bytes) -> Float32Array:
    """A stored blob as a new, writable native float32 array."""
    return np.frombuffer(data, dtype=LITTLE).astype(np.float32)


def blob_rows(matrix: Float32Array) -> Any:
    """Each row of `matrix` as a blob, without a Python object per value (for executemany)."""
    little = np.ascontiguousarray(matrix, dtype=LITTLE)
    return little.view(np.uint8).reshape(matrix.shape[0], -1)


def blobs_matrix(blobs: list[bytes], dimension: int) -> Float32Array:
    """Stored blobs of one dimension as one read-only float32 matrix."""
    raw = np.frombuffer(b"".join(blobs), dtype=LITTLE).reshape(len(blobs), dimension)
    return raw.astype(np.float32, copy=False)


def to_pgvector(vector: np.ndarray[Any, Any]) -> bytes:
    """A 1-D array as pgvector's binary ``vector`` (one conversion to big-endian)."""
    return _VECTOR_HEAD.pack(vector.shape[0], 0) + vector.astype(BIG).tobytes()


def copy_chunks(
    batch: Batch, backends: Sequence[str], extras: Sequence[str] = (), *, new_rows: bool = False
) -> Iterator[bytes]:
    """The batch as a binary COPY stream, in chunks: signature, rows, trailer.

    Each row: text id; text backend (from `backends`); int4 dimension; vector (uint16
    dimension, uint16 unused, big-endian float32 values, as pgvector's vector_recv reads
    it); then one field per name in `extras` from the batch's record fields: text, or
    jsonb (version 1, then the JSON text) for ``metadata``, NULL for None — or, with
    `new_rows` (rows going straight into the table), ``'{}'`` for metadata. Vectors are
    converted to big-endian with numpy; the only per-row Python work is the row's small
    header. Chunks are built one at a time, so the server inserts the first rows while
    the next chunk is being built.
    """
    n = len(batch)
    yield COPY_SIGNATURE
    if n == 0:
        yield COPY_TRAILER
        return
    backend_fields = {b: _text(b) for b in set(backends)}
    tails = {
        d: _DIMENSION_AND_VECTOR_HEAD.pack(4, d, 4 + 4 * d, d, 0) for d in set(batch.dimensions)
    }
    pack_head = _ROW_HEAD.pack
    count = 4 + len(extras)
    ids, dimensions = batch.ids, batch.dimensions
    matrix, vectors = batch.matrix, batch.vectors
    columns = [_extra_fields(name, batch.fields.get(name), n, new_rows) for name in extras]
    average = 4 * sum(dimensions[:64]) // min(n, 64) + 64
    step = max(1, COPY_CHUNK // average)
    width = 3 if extras else 2
    for start in range(0, n, step):
        stop = min(start + step, n)
        values: list[Any]
        if matrix is not None:
            block = np.ascontiguousarray(matrix[start:stop], dtype=BIG)
            size = block.shape[1] * 4
            flat = block.reshape(-1).view(np.uint8).data
            values = [flat[i : i + size] for i in range(0, (stop - start) * size, size)]
        else:
            assert vectors is not None
            values = [v.astype(BIG).tobytes() for v in vectors[start:stop]]
        parts: list[Any] = [None] * (width * (stop - start))
        parts[0::width] = [
            pack_head(count, len(e)) + e + backend_fields[b] + tails[d]
            for e, b, d in zip(
                (i.encode() for i in ids[start:stop]),
                backends[start:stop],
                dimensions[start:stop],
                strict=True,
            )
        ]
        parts[1::width] = values
        if extras:
            parts[2::width] = [
                b"".join(row) for row in zip(*(c[start:stop] for c in columns), strict=True)
            ]
        yield b"".join(parts)
    yield COPY_TRAILER


_NULL: Final = b"\xff\xff\xff\xff"  # a field's length -1: NULL
_EMPTY_OBJECT: Final = _INT32.pack(3) + b"\x01{}"


def _text(value: str) -> bytes:
    data = value.encode()
    return _INT32.pack(len(data)) + data


def _extra_fields(
    name: str, values: list[str | None] | None, n: int, new_rows: bool
) -> list[bytes]:
    """One encoded COPY field per row for the record field `name`."""
    missing = _EMPTY_OBJECT if name == "metadata" and new_rows else _NULL
    if values is None:
        return [missing] * n
    if name == "metadata":  # jsonb's binary form: version 1, then the text
        return [
            missing if v is None else _INT32.pack(len(d) + 1) + b"\x01" + d
            for v in values
            for d in (b"" if v is None else v.encode(),)
        ]
    return [missing if v is None else _text(v) for v in values]
