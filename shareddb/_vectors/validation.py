"""The numpy boundary: every coercion and check of embeddings, ids and search arguments.

Both backends call these before touching the database, so bad input raises the
same error on SQLite and PostgreSQL and changes nothing.
"""

from __future__ import annotations

import operator
import re
from hashlib import sha1
from typing import Any, Final, Literal, TypeAlias, TypeGuard

import numpy as np
import numpy.typing as npt

from shareddb._core.text import check_stored_text, show
from shareddb._vectors.products import dot
from shareddb.errors import DimensionMismatchError, InvalidArgumentError, InvalidEmbeddingError

Metric: TypeAlias = Literal["cosine", "l2", "inner_product"]
Method: TypeAlias = Literal["hnsw", "ivfflat"]
Float32Array: TypeAlias = npt.NDArray[np.float32]

METRICS: Final = ("cosine", "l2", "inner_product")
METHODS: Final = ("hnsw", "ivfflat")
MAX_DIMENSION: Final = 16_000  # pgvector's limit for the vector type
MAX_K: Final = 1000
MAX_VECTOR_INDEX_DIMENSION: Final = 2000  # pgvector indexes vector up to 2,000 dimensions
MAX_HALFVEC_INDEX_DIMENSION: Final = 4000  # and halfvec up to 4,000
MAX_EF_SEARCH: Final = 1000  # pgvector's limit for hnsw.ef_search
MAX_PROBES: Final = 32_768  # pgvector's limit for ivfflat.probes and lists
# qualified_task_id and backend are indexed, and a PostgreSQL btree entry holds at most
# about 2,700 bytes: both backends refuse longer ids and labels the same way.
# Tables a VectorStorage must not use: shareddb's own other tables, and names the
# databases reserve for their catalogs.
_RESERVED_TABLES: Final = frozenset({"schema_migrations", "sessions", "shareddb_vector_versions"})
# shareddb_: its own tables, and the names its search statements give their parts.
_RESERVED_PREFIXES: Final = ("sqlite_", "pg_", "shareddb_")
# Numeric kinds accepted: signed and unsigned integers and floats (not bool or complex).
_NUMERIC_KINDS: Final = frozenset("iuf")
_PLAIN_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_FLOAT32: Final = np.dtype(np.float32)  # numpy's one native float32 dtype object
_INFINITY: Final = float("inf")


def _ready(value: object) -> TypeGuard[Float32Array]:
    """True for a 1-D, C-contiguous float32 ndarray of finite numbers, not all zero.

    The fast path of `as_embedding` and `as_query`, for what callers usually pass:
    one dot product checks both finiteness (NaN and infinity propagate into it)
    and non-zeroness. An array it can't vouch for (zeros, an overflowing square,
    another dtype) takes the full checks, which decide.
    """
    if (
        type(value) is np.ndarray
        and value.dtype is _FLOAT32
        and value.ndim == 1
        and value.flags.c_contiguous
        and 0 < value.shape[0] <= MAX_DIMENSION
    ):
        with np.errstate(over="ignore", invalid="ignore"):
            square = dot(value, value)  # no BLAS threads for long vectors
        return 0.0 < square < _INFINITY
    return False


def as_embedding(value: object, *, what: str = "embedding") -> Float32Array:
    """`value` as a 1-D, C-contiguous float32 array of finite numbers, or InvalidEmbeddingError.

    Accepts any 1-D array-like of real numbers (lists, tuples, numpy arrays of any
    integer or float dtype). Values are rounded to float32 once, here; a float32
    array comes back as is (no copy).
    """
    if _ready(value):
        return value
    if isinstance(value, np.ndarray) and value.dtype == np.float32 and value.ndim == 1:
        array: np.ndarray[Any, Any] = value
    else:
        if isinstance(value, str | bytes | bytearray | memoryview | dict | set):
            raise InvalidEmbeddingError(
                f"{what} is a {type(value).__name__}, not a sequence of numbers; pass a 1-D "
                "numpy array or a list of floats"
            )
        try:
            array = np.asarray(value)
        except (ValueError, TypeError) as e:  # ragged nested sequences
            raise InvalidEmbeddingError(
                f"{what} is not a 1-D array of numbers ({e}); pass a 1-D numpy array or a "
                "list of floats"
            ) from None
        _check_kind(array, what)
        if array.ndim != 1:
            raise InvalidEmbeddingError(
                f"{what} has shape {array.shape}; pass one 1-D vector (use upsert_many for several)"
            )
        with np.errstate(over="ignore"):
            array = array.astype(np.float32)
    check_dimension(array.shape[0], what=what)
    if not np.isfinite(array).all():
        position = int(np.flatnonzero(~np.isfinite(array))[0])
        raise InvalidEmbeddingError(
            f"{what} holds {array[position]} at position {position}; embeddings must be "
            "finite numbers within float32 range (no NaN or infinity)"
        )
    return np.ascontiguousarray(array)


def as_query(value: object, metric: object) -> Float32Array:
    """A search query as `as_embedding` returns it; InvalidEmbeddingError for zeros under cosine."""
    if _ready(value):
        return value
    vector = as_embedding(value, what="query")
    if metric == "cosine" and not vector.any():
        raise InvalidEmbeddingError(
            "query is all zeros, and cosine distance is undefined for a zero vector; "
            "pass a non-zero query or use metric='l2'"
        )
    return vector


def as_matrix(value: object, *, what: str = "matrix") -> Float32Array:
    """A 2-D array-like as a C-contiguous float32 matrix of finite numbers (one row each)."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as e:
        raise InvalidEmbeddingError(
            f"{what} is not a 2-D array of numbers ({e}); pass a numpy array of shape "
            "(rows, dimension)"
        ) from None
    _check_kind(array, what)
    if array.ndim != 2:
        raise InvalidEmbeddingError(
            f"{what} has shape {array.shape}; pass a 2-D array of shape (rows, dimension)"
        )
    if array.shape[0]:
        check_dimension(array.shape[1], what=f"{what} rows")
    with np.errstate(over="ignore"):
        matrix = np.ascontiguousarray(array, dtype=np.float32)
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise InvalidEmbeddingError(
            f"{what} row {row} holds NaN or infinity (or a value beyond float32 range); "
            "embeddings must be finite numbers"
        )
    return matrix


def _check_kind(array: np.ndarray[Any, Any], what: str) -> None:
    if array.dtype.kind not in _NUMERIC_KINDS:
        raise InvalidEmbeddingError(
            f"{what} has dtype {array.dtype}, not numbers; pass integers or floats (a numpy "
            "array of float32 is stored as is)"
        )


def check_dimension(dimension: int, *, what: str = "embedding") -> int:
    """`dimension` if it is from 1 to MAX_DIMENSION, else InvalidEmbeddingError."""
    if not 1 <= dimension <= MAX_DIMENSION:
        raise InvalidEmbeddingError(
            f"{what} has {dimension} dimensions; embeddings need 1 to {MAX_DIMENSION:,} "
            "(pgvector's limit)"
        )
    return dimension


def as_dimension(value: object) -> int:
    """A dimension argument (create_index, count) as an int, or a clear error."""
    number = as_int(value, "dimension", 1, MAX_DIMENSION)
    return number


def as_int(value: object, name: str, low: int, high: int) -> int:
    """A whole-number argument in [low, high], or InvalidArgumentError naming it."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InvalidArgumentError(
            f"{name}={value!r} must be a whole number from {low} to {high:,}"
        )
    number = operator.index(value)
    if not low <= number <= high:
        raise InvalidArgumentError(
            f"{name}={number} is out of range; use a number from {low} to {high:,}"
        )
    return number


def check_task_id(value: object) -> str:
    """A qualified task id: non-empty text without NUL bytes, at most MAX_INDEXED_BYTES long."""
    if not isinstance(value, str):
        raise InvalidArgumentError(
            f"qualified_task_id {value!r} is a {type(value).__name__}; pass a non-empty str "
            "such as 'md#253'"
        )
    if not value:
        raise InvalidArgumentError(
            "qualified_task_id is empty; pass a non-empty str such as 'md#253'"
        )
    check_stored_text("qualified_task_id", value, InvalidArgumentError)
    return value


def check_backend(value: object) -> str:
    """An explicit backend label: text without NUL bytes, at most MAX_INDEXED_BYTES long."""
    if not isinstance(value, str):
        raise InvalidArgumentError(
            f"backend={value!r} must be a str without NUL bytes (or None for the prefix of "
            "the qualified task id before '#')"
        )
    check_stored_text("backend", value, InvalidArgumentError)
    return value


def default_backend(qualified_task_id: str) -> str:
    """The prefix before the first ``#`` (``md#253`` -> ``md``); ``""`` when there is none."""
    prefix, sep, _ = qualified_task_id.partition("#")
    return prefix if sep else ""


def check_metric(value: object) -> Metric:
    if value not in METRICS:
        raise InvalidArgumentError(
            f"metric={value!r} is not supported; use one of {', '.join(map(repr, METRICS))}"
        )
    return value


def check_method(value: object) -> Method:
    if value not in METHODS:
        raise InvalidArgumentError(
            f"method={value!r} is not supported; use one of {', '.join(map(repr, METHODS))}"
        )
    return value


def check_k(value: object) -> int:
    return as_int(value, "k", 1, MAX_K)


def check_table_name(value: object) -> str:
    """A plain SQL identifier: letters, digits and ``_``, not starting with a digit."""
    if not isinstance(value, str) or not _PLAIN_IDENTIFIER.fullmatch(value):
        shown = show(value) if isinstance(value, str) else repr(value)
        raise InvalidArgumentError(
            f"table={shown} is not a plain identifier; use letters, digits and '_' "
            "(not starting with a digit, at most 63 characters), e.g. 'task_embeddings'"
        )
    if value.lower() in _RESERVED_TABLES or value.lower().startswith(_RESERVED_PREFIXES):
        raise InvalidArgumentError(
            f"table={value!r} is reserved (shareddb's own tables and names starting with "
            "'sqlite_', 'pg_' or 'shareddb_' are not for embeddings); choose another name, e.g. "
            "'task_embeddings_v2'"
        )
    return value


def vector_index_name(table: str, method: str, metric: str, dimension: int) -> str:
    """``<table>_<method>_<metric>_<dimension>_idx``, shortened with a hash past 63 bytes."""
    return short_name(f"{table}_{method}_{metric}_{dimension}_idx")


def short_name(name: str) -> str:
    """`name` if it fits PostgreSQL's 63-byte identifiers, else a prefix and a hash."""
    if len(name.encode()) <= 63:
        return name
    digest = sha1(name.encode()).hexdigest()[:10]  # noqa: S324 - a name, not a secret
    return f"{name[:52]}_{digest}"


def check_indexable(dimension: int) -> None:
    """InvalidArgumentError for dimensions pgvector can't index (more than 4,000)."""
    if dimension > MAX_HALFVEC_INDEX_DIMENSION:
        raise InvalidArgumentError(
            f"dimension {dimension} can't be indexed: pgvector indexes up to "
            f"{MAX_VECTOR_INDEX_DIMENSION:,} dimensions as vector and "
            f"{MAX_HALFVEC_INDEX_DIMENSION:,} as halfvec; search it with exact=True (a "
            "sequential scan) or reduce the embeddings' dimension"
        )


def stored_dimension_mismatch(task_id: str, stored: int, given: int) -> DimensionMismatchError:
    """An upsert of `task_id` with `given` dimensions where it is stored with `stored`."""
    return DimensionMismatchError(
        f"qualified_task_id {task_id!r} is stored with {stored} dimensions, got {given}",
        fix="an embedding keeps its dimension: delete it first to store one of another size",
    )


def query_dimension_mismatch(
    table: str, dimension: int, stored: list[int]
) -> DimensionMismatchError:
    """A query of `dimension` where `table` holds only other dimensions."""
    return DimensionMismatchError(
        f"query has {dimension} dimensions but {table} stores embeddings of "
        f"{', '.join(map(str, stored))} dimensions only",
        fix="embed the query with the same model as the stored vectors",
    )


def check_label(name: str, value: object) -> str:
    """A short stored label (`model`, `content_hash`): non-empty text, no NUL, indexable size."""
    if not isinstance(value, str) or not value:
        raise InvalidArgumentError(
            f"{name}={value!r} must be a non-empty str",
            fix=f"pass text, or None to keep the stored {name}",
        )
    check_stored_text(name, value, InvalidArgumentError)
    return value
