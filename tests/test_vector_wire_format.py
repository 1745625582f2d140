"""How numpy arrays travel to PostgreSQL: shareddb's binary vector dumper.

`VectorBinaryDumper` writes what pgvector's own dumper writes, with one numpy conversion;
the pool registers it on every connection, so users' SQL and VectorStorage both use it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pgvector import Vector
from psycopg.adapt import PyFormat

from shareddb import DbService, VectorStorage
from shareddb._engines.postgres.connect import VectorBinaryDumper
from shareddb.vectors import SearchResult


@pytest.mark.postgres
@pytest.mark.parametrize(
    "value",
    [
        pytest.param(np.array([1.5, -2.25, 3e38], np.float32), id="float32"),
        pytest.param(np.arange(384, dtype=np.float64) / 7, id="float64"),
        pytest.param(np.arange(16, dtype=np.int64), id="int64"),
        pytest.param(np.array([1.0, 2.0], np.dtype(">f4")), id="big-endian float32"),
        pytest.param([0.5, 1.5], id="list"),
        pytest.param(Vector([0.25, -4.0]), id="Vector"),
    ],
)
def test_vector_dumper_writes_what_pgvector_writes(one_connection: DbService, value: Any) -> None:
    vector = value if isinstance(value, Vector) else Vector(value)
    expected = vector.to_binary()
    dumper = VectorBinaryDumper(type(value), None)
    assert bytes(dumper.dump(value) or b"") == expected
    with one_connection.connection() as conn:
        row = conn.cursor(binary=True).execute("SELECT %s::vector", (value,)).fetchone()
    assert row is not None
    np.testing.assert_array_equal(row[0].to_numpy(), vector.to_numpy())


@pytest.mark.postgres
def test_vector_dumper_refuses_a_2d_array_like_pgvector() -> None:
    dumper = VectorBinaryDumper(np.ndarray, None)
    with pytest.raises(ValueError, match="ndim"):
        dumper.dump(np.ones((2, 2), np.float32))


@pytest.mark.postgres
def test_pooled_connections_send_float32_arrays_through_shareddbs_dumper(pg_url: str) -> None:
    """The dumper users get from connection(), and a VectorStorage round trip through it."""
    # -0.0, a subnormal and a value near float32's largest: any rounding shows.
    embedding = np.array([1.5, -0.0, 1e-45, -3.4028235e38, 1 / 3], np.float32)
    with DbService(pg_url, min_size=2, max_size=2) as db:
        db.initialize()
        with db.connection() as first, db.connection() as second:
            assert first is not second
            for conn in (first, second):
                dumper = conn.adapters.get_dumper(np.ndarray, PyFormat.BINARY)
                assert issubclass(dumper, VectorBinaryDumper), (
                    f"arrays go through {dumper.__mro__[1]}"
                )
        vectors = VectorStorage(db)
        vectors.upsert("md#1", embedding)
        vectors.upsert("md#2", np.nextafter(embedding, np.float32(1)))  # one ulp away
        stored = vectors.get("md#1")
        assert stored is not None
        assert stored.dtype == np.float32
        assert stored.tobytes() == embedding.tobytes()
        assert vectors.search(embedding, 1, metric="l2", exact=True) == [SearchResult("md#1", 0.0)]
