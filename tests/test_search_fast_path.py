"""The lean search path: autocommit pooled connections, the embedding fast path, the dumper."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg
import pytest
from pgvector import Vector
from psycopg_pool import ConnectionPool

from shareddb import DbService, InvalidEmbeddingError, VectorStorage
from shareddb._pg import VectorBinaryDumper
from shareddb.vectors import SearchResult


@pytest.fixture
def vectors(db: DbService) -> VectorStorage:
    db.initialize()
    return VectorStorage(db)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_float32_arrays_with_nan_or_infinity_are_refused(
    vectors: VectorStorage, bad: float
) -> None:
    array = np.ones(8, np.float32)
    array[5] = bad
    with pytest.raises(InvalidEmbeddingError, match="position 5"):
        vectors.upsert("md#1", array)
    with pytest.raises(InvalidEmbeddingError, match="position 5"):
        vectors.search(array, 3, metric="l2")
    assert vectors.count() == 0


def test_large_finite_float32_values_are_stored_bit_for_bit(vectors: VectorStorage) -> None:
    # Their squares overflow float32: the quick dot-product check can't vouch for
    # them, and the full check must still accept them.
    big = np.array([3.0e38, -3.0e38, 1.0e-45, 0.0], np.float32)
    vectors.upsert("md#big", big)
    stored = vectors.get("md#big")
    assert stored is not None
    assert stored.tobytes() == big.tobytes()


def test_a_zero_float32_query_is_refused_for_cosine_only(vectors: VectorStorage) -> None:
    vectors.upsert("md#1", np.array([1.0, 2.0], np.float32))
    zero = np.zeros(2, np.float32)
    with pytest.raises(InvalidEmbeddingError, match="all zeros"):
        vectors.search(zero, 1, metric="cosine")
    assert [h.qualified_task_id for h in vectors.search(zero, 1, metric="l2")] == ["md#1"]


def test_non_contiguous_and_other_dtype_queries_find_the_same_rows(
    vectors: VectorStorage,
) -> None:
    rng = np.random.default_rng(7)
    matrix = rng.standard_normal((40, 6)).astype(np.float32)
    vectors.upsert_many(([f"md#{i}" for i in range(40)], matrix))
    query = rng.standard_normal(12).astype(np.float32)[::2]  # a strided view
    assert not query.flags.c_contiguous
    expected = np.argsort(np.linalg.norm(matrix - query, axis=1), kind="stable")[:5]
    for form in (query, query.astype(np.float64), query.tolist()):
        hits = vectors.search(form, 5, metric="l2", exact=True)
        assert [h.qualified_task_id for h in hits] == [f"md#{i}" for i in expected]
        assert all(type(h) is SearchResult and isinstance(h.distance, float) for h in hits)
        np.testing.assert_allclose(
            [h.distance for h in hits],
            np.linalg.norm(matrix[expected] - query, axis=1),
            rtol=1e-5,
        )


# -- PostgreSQL ---------------------------------------------------------------------------


@pytest.fixture
def one_connection(pg_url: str) -> Iterator[DbService]:
    """An initialized service whose pool holds one connection (every call shares it)."""
    with DbService(pg_url, min_size=1, max_size=1) as service:
        service.initialize()
        yield service


def pool_of(db: DbService) -> ConnectionPool[Any]:
    pool = db.get_sql()
    assert isinstance(pool, ConnectionPool)
    return pool


@pytest.mark.postgres
def test_pooled_connections_rest_in_autocommit_and_connection_still_rolls_back(
    one_connection: DbService,
) -> None:
    db = one_connection
    with pool_of(db).connection() as raw:
        assert raw.autocommit is True
        raw.execute("CREATE TABLE t (id integer PRIMARY KEY)")

    class Boom(Exception):
        pass

    with pytest.raises(Boom), db.connection() as conn:
        assert conn.autocommit is False
        conn.execute("INSERT INTO t VALUES (1)")
        raise Boom
    with db.connection() as conn:
        conn.execute("INSERT INTO t VALUES (2)")
        conn.commit()  # an explicit commit inside the block still works
        conn.execute("INSERT INTO t VALUES (3)")
    with pool_of(db).connection() as raw:
        assert raw.autocommit is True  # back to how pooled connections rest
        assert [r[0] for r in raw.execute("SELECT id FROM t ORDER BY id")] == [2, 3]


@pytest.mark.postgres
def test_writes_commit_after_a_raw_user_left_the_connection_out_of_autocommit(
    one_connection: DbService, pg_url: str
) -> None:
    db = one_connection
    pool = pool_of(db)
    raw = pool.getconn()
    raw.autocommit = False
    pool.putconn(raw)
    vectors = VectorStorage(db)
    vectors.upsert("md#1", np.array([1.0, 2.0], np.float32))
    with psycopg.connect(pg_url) as other:  # a separate session sees the commit
        row = other.execute(
            "SELECT count(*) FROM task_embeddings WHERE qualified_task_id = 'md#1'"
        ).fetchone()
        assert row is not None and row[0] == 1


@pytest.mark.postgres
def test_searches_and_gets_share_one_connection_without_mixing_results(
    one_connection: DbService,
) -> None:
    vectors = VectorStorage(one_connection)
    rng = np.random.default_rng(3)
    matrix = rng.standard_normal((30, 5)).astype(np.float32)
    vectors.upsert_many(([f"md#{i}" for i in range(30)], matrix))
    for i in range(0, 30, 3):
        hits = vectors.search(matrix[i], 3, metric="l2", ef_search=20)
        stored = vectors.get(f"md#{i}")
        assert hits[0].qualified_task_id == f"md#{i}"
        assert stored is not None and stored.tobytes() == matrix[i].tobytes()
        assert vectors.get("md#missing") is None


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
