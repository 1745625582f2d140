"""VectorStorage on both backends: round trips, upserts, search = brute force, bad input."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import numpy as np
import pytest
from async_twin import both_apis  # noqa: F401 - the `db` fixture: each test on both APIs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from shareddb import (
    DbService,
    DimensionMismatchError,
    InvalidArgumentError,
    InvalidEmbeddingError,
    SearchResult,
    ShareddbError,
    VectorStorage,
)
from shareddb._vectors import batches as _vector_batches

METRICS = ("cosine", "l2", "inner_product")


@pytest.fixture
def vectors(db: DbService) -> VectorStorage:
    return VectorStorage(db)


def placeholder(db: DbService) -> str:
    return "%s" if db.get_backend_type() == "postgres" else "?"


def rows_of(db: DbService) -> list[tuple[Any, ...]]:
    """Every row of task_embeddings as plain values, for "nothing changed" checks."""
    with db.connection() as conn:
        rows = conn.execute(
            "SELECT qualified_task_id, backend, dimension, created_at, updated_at "
            "FROM task_embeddings ORDER BY id"
        ).fetchall()
    return [tuple(r) for r in rows]


def timestamps(db: DbService, task_id: str) -> tuple[datetime, datetime]:
    with db.connection() as conn:
        row = conn.execute(
            f"SELECT created_at, updated_at FROM task_embeddings "
            f"WHERE qualified_task_id = {placeholder(db)}",
            (task_id,),
        ).fetchone()
    created, updated = row
    if isinstance(created, str):
        created, updated = datetime.fromisoformat(created), datetime.fromisoformat(updated)
    assert created.tzinfo is not None and updated.tzinfo is not None
    return created, updated


def brute_force(
    matrix: np.ndarray, query: np.ndarray, metric: str, k: int
) -> tuple[list[int], np.ndarray]:
    """Row numbers of the k nearest rows and their distances, computed in float64."""
    m = matrix.astype(np.float64)
    q = query.astype(np.float64)
    if metric == "cosine":
        distances = 1 - (m @ q) / (np.linalg.norm(m, axis=1) * np.linalg.norm(q))
    elif metric == "l2":
        distances = np.sqrt(((m - q) ** 2).sum(axis=1))
    else:
        distances = -(m @ q)
    order = np.argsort(distances, kind="stable")[:k]
    return order.tolist(), distances[order]


def row_numbers(results: list[SearchResult], prefix: str = "") -> list[int]:
    return [int(r.qualified_task_id.removeprefix(prefix).split("#")[-1]) for r in results]


# -- round trip ------------------------------------------------------------------------


def test_get_returns_the_stored_float32_values_bit_for_bit(vectors: VectorStorage) -> None:
    special = np.array(
        [0.0, -0.0, 1e-45, -1e-45, 1.17549435e-38, 3.4028235e38, -3.4028235e38, 1 / 3, np.pi],
        dtype=np.float32,
    )
    random = np.random.default_rng(1).standard_normal(384).astype(np.float32)
    vectors.upsert("md#1", special)
    vectors.upsert("md#2", random)
    for task_id, expected in (("md#1", special), ("md#2", random)):
        got = vectors.get(task_id)
        assert got is not None
        assert got.dtype == np.float32 and got.ndim == 1
        assert got.tobytes() == expected.tobytes()  # bit-exact, -0.0 and subnormals included


def test_lists_ints_and_float64_are_stored_rounded_to_float32(vectors: VectorStorage) -> None:
    vectors.upsert("md#1", [0.1, 0.2, 0.3])
    vectors.upsert("md#2", np.array([1, 2, 3], dtype=np.int64))
    vectors.upsert("md#3", np.array([1 / 3, 2 / 3, 1.0], dtype=np.float64))
    assert vectors.get("md#1").tobytes() == np.array([0.1, 0.2, 0.3], np.float32).tobytes()
    assert vectors.get("md#2").tobytes() == np.array([1, 2, 3], np.float32).tobytes()
    assert vectors.get("md#3").tobytes() == np.float32([1 / 3, 2 / 3, 1.0]).tobytes()


def test_get_of_a_missing_id_is_none(vectors: VectorStorage) -> None:
    assert vectors.get("md#404") is None


def test_upsert_many_round_trips_both_input_forms(vectors: VectorStorage) -> None:
    rng = np.random.default_rng(2)
    matrix = rng.standard_normal((50, 16)).astype(np.float32)
    ids = [f"gh#{i}" for i in range(50)]
    assert vectors.upsert_many((ids, matrix)) == 50
    pairs = [(f"md#{i}", rng.standard_normal(8).astype(np.float32)) for i in range(30)]
    assert vectors.upsert_many(iter(pairs)) == 30
    assert vectors.count() == 80
    assert vectors.count(dimension=16) == 50 and vectors.count(dimension=8) == 30
    for i in (0, 17, 49):
        assert vectors.get(f"gh#{i}").tobytes() == matrix[i].tobytes()
    for task_id, vector in pairs[::7]:
        assert vectors.get(task_id).tobytes() == vector.tobytes()


def test_upsert_many_accepts_mixed_dimensions_and_array_likes(vectors: VectorStorage) -> None:
    items = [("md#1", [1.0, 2.0]), ("md#2", (3, 4, 5)), ("md#3", np.float64([0.5] * 4))]
    assert vectors.upsert_many(items) == 3
    assert [vectors.count(dimension=d) for d in (2, 3, 4)] == [1, 1, 1]
    assert vectors.get("md#2").tolist() == [3.0, 4.0, 5.0]


def test_upsert_many_with_repeated_ids_keeps_the_last(vectors: VectorStorage) -> None:
    items = [("md#1", [1.0, 0.0]), ("md#2", [2.0, 0.0]), ("md#1", [3.0, 0.0])]
    assert vectors.upsert_many(items) == 3
    assert vectors.count() == 2
    assert vectors.get("md#1").tolist() == [3.0, 0.0]


def test_upsert_many_of_nothing_writes_nothing(vectors: VectorStorage) -> None:
    assert vectors.upsert_many([]) == 0
    assert vectors.upsert_many(([], np.empty((0, 8), np.float32))) == 0
    assert vectors.count() == 0


def test_upsert_many_streams_an_iterator_in_bounded_batches(
    vectors: VectorStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_vector_batches, "BATCH_ROWS", 7)
    consumed: list[int] = []
    largest_ahead = 0

    def items() -> Iterator[tuple[str, np.ndarray]]:
        for i in range(40):
            consumed.append(i)
            yield f"md#{i}", np.full(4, i, dtype=np.float32)

    batches = _vector_batches.iter_batches(items())
    for batch in batches:
        largest_ahead = max(largest_ahead, len(consumed) - batch.first)
        assert len(batch) <= 7
    assert largest_ahead <= 7  # never more than one batch read ahead
    assert vectors.upsert_many(items()) == 40
    assert vectors.count() == 40
    assert vectors.get("md#39").tolist() == [39.0] * 4


# -- upsert semantics ------------------------------------------------------------------


def test_upsert_replaces_the_vector_keeps_created_at_and_moves_updated_at(
    db: DbService, vectors: VectorStorage
) -> None:
    vectors.upsert("md#1", [1.0, 2.0, 3.0])
    created, updated = timestamps(db, "md#1")
    assert created == updated
    vectors.upsert("md#1", [4.0, 5.0, 6.0])
    created_2, updated_2 = timestamps(db, "md#1")
    assert created_2 == created
    assert updated_2 > updated
    assert vectors.get("md#1").tolist() == [4.0, 5.0, 6.0]
    assert vectors.count() == 1
    vectors.upsert_many([("md#1", [7.0, 8.0, 9.0])])
    created_3, updated_3 = timestamps(db, "md#1")
    assert created_3 == created and updated_3 > updated_2
    assert vectors.get("md#1").tolist() == [7.0, 8.0, 9.0]


def test_backend_defaults_to_the_prefix_before_the_hash(
    db: DbService, vectors: VectorStorage
) -> None:
    vectors.upsert("md#253", [1.0, 0.0])
    vectors.upsert("gh#123#x", [0.0, 1.0])
    vectors.upsert("plain", [1.0, 1.0])
    vectors.upsert("jira#7", [1.0, 2.0], backend="tracker")
    vectors.upsert_many([("gl#5", [2.0, 1.0])])
    with db.connection() as conn:
        backends = dict(conn.execute("SELECT qualified_task_id, backend FROM task_embeddings"))
    assert backends == {
        "md#253": "md",
        "gh#123#x": "gh",
        "plain": "",
        "jira#7": "tracker",
        "gl#5": "gl",
    }


def test_delete_reports_whether_a_row_was_removed(vectors: VectorStorage) -> None:
    vectors.upsert("md#1", [1.0])
    assert vectors.delete("md#1") is True
    assert vectors.delete("md#1") is False
    assert vectors.get("md#1") is None and vectors.count() == 0


def test_changing_the_dimension_of_a_stored_id_raises_and_changes_nothing(
    db: DbService, vectors: VectorStorage
) -> None:
    vectors.upsert("md#1", [1.0, 2.0, 3.0])
    vectors.upsert("md#2", [1.0, 2.0, 3.0])
    before = rows_of(db)
    with pytest.raises(DimensionMismatchError, match=r"'md#1' is stored with 3 dimensions, got 2"):
        vectors.upsert("md#1", [1.0, 2.0])
    with pytest.raises(DimensionMismatchError, match=r"'md#2' is stored with 3 dimensions, got 4"):
        vectors.upsert_many([("md#9", [1.0, 1.0, 1.0]), ("md#2", [1.0, 2.0, 3.0, 4.0])])
    with pytest.raises(DimensionMismatchError, match="'md#5' appears twice"):
        vectors.upsert_many([("md#5", [1.0, 2.0]), ("md#5", [1.0, 2.0, 3.0])])
    assert rows_of(db) == before
    assert vectors.get("md#1").tolist() == [1.0, 2.0, 3.0]
    assert vectors.get("md#9") is None
    vectors.delete("md#1")
    vectors.upsert("md#1", [1.0, 2.0])  # delete first, then another size is fine
    assert vectors.get("md#1").tolist() == [1.0, 2.0]


def test_a_bad_item_late_in_upsert_many_leaves_the_table_as_it_was(
    db: DbService, vectors: VectorStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_vector_batches, "BATCH_ROWS", 5)
    vectors.upsert_many([(f"md#{i}", [float(i), 0.0]) for i in range(10)])
    before = rows_of(db)
    stored = {f"md#{i}": vectors.get(f"md#{i}").tolist() for i in range(10)}

    def items() -> Iterator[tuple[str, list[float]]]:
        for i in range(30):  # updates of existing ids, new ids, then a NaN in batch 5
            yield f"md#{i}", [float(i) + 0.5, float("nan") if i == 23 else 1.0]

    with pytest.raises(InvalidEmbeddingError, match=r"'md#23' \(item 23\)"):
        vectors.upsert_many(items())
    assert rows_of(db) == before
    assert {f"md#{i}": vectors.get(f"md#{i}").tolist() for i in range(10)} == stored
    assert vectors.count() == 10


def test_strings_that_look_like_sql_are_stored_as_data(
    db: DbService, vectors: VectorStorage
) -> None:
    nasty = "md#1'); DROP TABLE task_embeddings; --"
    backend = "x' OR '1'='1"
    vectors.upsert(nasty, [1.0, 0.0], backend=backend)
    vectors.upsert_many([('gh#"quoted"\\', [0.0, 1.0])])
    assert vectors.get(nasty).tolist() == [1.0, 0.0]
    assert vectors.get('gh#"quoted"\\').tolist() == [0.0, 1.0]
    hits = vectors.search([1.0, 0.0], 5, backend=backend)
    assert [h.qualified_task_id for h in hits] == [nasty]
    assert vectors.search([1.0, 0.0], 5, backend="x") == []
    assert vectors.count() == 2 and vectors.delete(nasty)


# -- search ----------------------------------------------------------------------------


@pytest.mark.parametrize("metric", METRICS)
def test_search_equals_numpy_brute_force(vectors: VectorStorage, metric: str) -> None:
    rng = np.random.default_rng(3)
    matrix = rng.standard_normal((300, 24)).astype(np.float32)
    other = rng.standard_normal((40, 7)).astype(np.float32)  # another dimension beside it
    vectors.upsert_many(([f"md#{i}" for i in range(300)], matrix))
    vectors.upsert_many(([f"gh#{i}" for i in range(40)], other))
    for query in rng.standard_normal((5, 24)).astype(np.float32):
        results = vectors.search(query, 10, metric=metric, exact=True)
        expected, distances = brute_force(matrix, query, metric, 10)
        assert row_numbers(results) == expected
        assert all(r.qualified_task_id.startswith("md#") for r in results)
        np.testing.assert_allclose([r.distance for r in results], distances, rtol=1e-5, atol=1e-5)
        assert all(isinstance(r.distance, float) for r in results)


@pytest.mark.parametrize("metric", METRICS)
def test_filtered_search_equals_brute_force_over_that_backend(
    vectors: VectorStorage, metric: str
) -> None:
    rng = np.random.default_rng(4)
    matrix = rng.standard_normal((200, 12)).astype(np.float32)
    labels = ["rare" if i % 10 == 0 else "gh" if i % 3 == 0 else "md" for i in range(200)]
    vectors.upsert_many(([f"{label}#{i}" for i, label in enumerate(labels)], matrix))
    query = rng.standard_normal(12).astype(np.float32)
    for backend in ("gh", "rare"):  # a large share of the rows, and a small one
        rows = [i for i in range(200) if labels[i] == backend]
        results = vectors.search(query, 15, metric=metric, backend=backend, exact=True)
        expected, distances = brute_force(matrix[rows], query, metric, 15)
        assert row_numbers(results) == [rows[i] for i in expected]
        np.testing.assert_allclose([r.distance for r in results], distances, rtol=1e-5, atol=1e-5)
    assert vectors.search(query, 5, metric=metric, backend="none") == []


def test_search_distances_follow_pgvector_definitions(vectors: VectorStorage) -> None:
    vectors.upsert("md#a", [3.0, 4.0])
    (hit,) = vectors.search([3.0, 4.0], 1, metric="cosine")
    assert hit == SearchResult("md#a", pytest.approx(0.0, abs=1e-6))
    assert vectors.search([0.0, 0.0], 1, metric="l2")[0].distance == pytest.approx(5.0)
    assert vectors.search([1.0, 1.0], 1, metric="inner_product")[0].distance == pytest.approx(-7.0)
    assert vectors.search([-3.0, -4.0], 1, metric="cosine")[0].distance == pytest.approx(2.0)


def test_search_returns_every_row_when_k_exceeds_them(vectors: VectorStorage) -> None:
    vectors.upsert_many([(f"md#{i}", [float(i), 1.0]) for i in range(5)])
    results = vectors.search([0.0, 1.0], 1000, metric="l2")
    assert row_numbers(results) == [0, 1, 2, 3, 4]


def test_search_of_an_empty_table_is_empty(vectors: VectorStorage) -> None:
    assert vectors.search([1.0, 2.0, 3.0], 3) == []


def test_search_with_a_dimension_nobody_stored_raises(vectors: VectorStorage) -> None:
    vectors.upsert("md#1", [1.0, 2.0, 3.0])
    vectors.upsert("md#2", [1.0, 2.0, 3.0, 4.0, 5.0])
    with pytest.raises(DimensionMismatchError, match="stores embeddings of 3, 5 dimensions only"):
        vectors.search([1.0, 2.0], 3)


def test_a_zero_vector_ranks_last_for_cosine(vectors: VectorStorage) -> None:
    vectors.upsert_many([("md#zero", [0.0, 0.0]), ("md#a", [1.0, 0.0]), ("md#b", [0.0, 1.0])])
    results = vectors.search([1.0, 0.1], 3, metric="cosine")
    assert [r.qualified_task_id for r in results] == ["md#a", "md#b", "md#zero"]
    assert np.isnan(results[-1].distance)


def test_search_sees_writes_made_since_the_last_search(
    db: DbService, vectors: VectorStorage
) -> None:
    vectors.upsert_many([("md#1", [1.0, 0.0]), ("md#2", [0.0, 1.0])])
    assert vectors.search([1.0, 0.0], 1)[0].qualified_task_id == "md#1"
    vectors.upsert("md#3", [1.0, 0.01])
    vectors.upsert("md#1", [-1.0, 0.0])
    assert [r.qualified_task_id for r in vectors.search([1.0, 0.0], 2)] == ["md#3", "md#2"]
    vectors.delete("md#3")
    assert vectors.search([1.0, 0.0], 1)[0].qualified_task_id == "md#2"
    with db.connection() as conn:  # hand-written SQL on the same connection
        conn.execute("DELETE FROM task_embeddings WHERE qualified_task_id = 'md#2'")
    assert vectors.search([1.0, 0.0], 1)[0].qualified_task_id == "md#1"


# -- conn= joins the caller's transaction ----------------------------------------------


def test_writes_with_conn_commit_or_roll_back_with_the_callers_transaction(
    db: DbService, vectors: VectorStorage
) -> None:
    vectors.upsert("md#keep", [1.0, 1.0])

    class Boom(Exception):
        pass

    with pytest.raises(Boom), db.transaction() as conn:
        vectors.upsert("md#1", [1.0, 0.0], conn=conn)
        vectors.upsert_many([("md#2", [0.0, 1.0]), ("md#keep", [5.0, 5.0])], conn=conn)
        vectors.delete("md#keep", conn=conn)
        assert vectors.count(conn=conn) == 2
        assert vectors.get("md#2", conn=conn).tolist() == [0.0, 1.0]
        assert [r.qualified_task_id for r in vectors.search([1.0, 0.0], 1, conn=conn)] == ["md#1"]
        raise Boom
    assert vectors.count() == 1
    assert vectors.get("md#keep").tolist() == [1.0, 1.0]
    assert [r.qualified_task_id for r in vectors.search([1.0, 0.0], 5)] == ["md#keep"]
    with db.transaction() as conn:
        vectors.upsert("md#1", [1.0, 0.0], conn=conn)
        vectors.upsert_many([("md#2", [0.0, 1.0])], conn=conn)
    assert vectors.count() == 3


def test_a_failed_upsert_many_inside_a_transaction_leaves_the_rest_of_it(
    db: DbService, vectors: VectorStorage
) -> None:
    with db.transaction() as conn:
        vectors.upsert("md#1", [1.0, 0.0], conn=conn)
        with pytest.raises(DimensionMismatchError):
            vectors.upsert_many([("md#2", [1.0, 1.0]), ("md#1", [1.0, 2.0, 3.0])], conn=conn)
        vectors.upsert("md#3", [0.0, 1.0], conn=conn)  # the transaction is still usable
    assert sorted(r.qualified_task_id for r in vectors.search([1.0, 0.0], 5)) == ["md#1", "md#3"]


# -- bad input -------------------------------------------------------------------------

BAD_EMBEDDINGS = [
    pytest.param([], id="empty"),
    pytest.param([[1.0, 2.0], [3.0, 4.0]], id="2-D"),
    pytest.param(np.zeros((1, 3), np.float32), id="2-D array"),
    pytest.param([1.0, float("nan")], id="NaN"),
    pytest.param([1.0, float("inf")], id="inf"),
    pytest.param([1e39, 1.0], id="beyond float32"),
    pytest.param(["a", "b"], id="strings"),
    pytest.param(["1.0", "2.0"], id="numeric strings"),
    pytest.param("1.0, 2.0", id="a str"),
    pytest.param(b"\x00\x00\x80\x3f", id="bytes"),
    pytest.param([1.0, None], id="None inside"),
    pytest.param(None, id="None"),
    pytest.param([True, False], id="bools"),
    pytest.param([1 + 2j, 3j], id="complex"),
    pytest.param([[1.0], [2.0, 3.0]], id="ragged"),
    pytest.param(np.float32(1.0), id="scalar"),
    pytest.param(np.zeros(16_001, np.float32), id="16,001 dimensions"),
]


@pytest.mark.parametrize("embedding", BAD_EMBEDDINGS)
def test_bad_embeddings_raise_and_change_nothing(
    db: DbService, vectors: VectorStorage, embedding: Any
) -> None:
    vectors.upsert("md#1", [1.0, 2.0])
    before = rows_of(db)
    with pytest.raises(InvalidEmbeddingError):
        vectors.upsert("md#2", embedding)
    with pytest.raises(InvalidEmbeddingError):
        vectors.upsert_many([("md#3", [1.0, 2.0]), ("md#2", embedding)])
    with pytest.raises(InvalidEmbeddingError):
        vectors.search(embedding)
    assert rows_of(db) == before


def test_16000_dimensions_are_accepted(vectors: VectorStorage) -> None:
    big = np.random.default_rng(5).standard_normal(16_000).astype(np.float32)
    vectors.upsert("md#big", big)
    assert vectors.get("md#big").tobytes() == big.tobytes()
    assert vectors.search(big, 1, exact=True)[0].qualified_task_id == "md#big"


def test_bad_matrices_raise_and_change_nothing(db: DbService, vectors: VectorStorage) -> None:
    vectors.upsert("md#1", [1.0, 2.0])
    before = rows_of(db)
    nan = np.ones((3, 2), np.float32)
    nan[2, 1] = np.nan
    cases: list[tuple[Any, type[Exception], str]] = [
        ((["a#1", "a#2"], np.ones((3, 2))), InvalidArgumentError, "2 ids for a matrix of 3 rows"),
        (((f"a#{i}" for i in range(2)), np.ones((3, 2))), InvalidArgumentError, "2 ids"),
        (((f"a#{i}" for i in range(4)), np.ones((3, 2))), InvalidArgumentError, "more ids"),
        ((["a#1", "a#2", "a#3"], nan), InvalidEmbeddingError, "row 2"),
        ((["a#1"], np.ones((1, 0))), InvalidEmbeddingError, "0 dimensions"),
        ((["a#1"], np.array([["x", "y"]])), InvalidEmbeddingError, "dtype"),
        ((["a#1", 7], np.ones((2, 2))), InvalidArgumentError, "qualified_task_id 7"),
        (("a#1", np.ones((1, 2))), InvalidArgumentError, "ids is a str"),
        ("not pairs", InvalidArgumentError, "takes an iterable"),
        ([("a#1", [1.0], "extra")], InvalidArgumentError, "item 0"),
        ([["a#1"]], InvalidArgumentError, "item 0"),
        (42, InvalidArgumentError, "not int"),
    ]
    for items, error, message in cases:
        with pytest.raises(error, match=message):
            vectors.upsert_many(items)
    assert rows_of(db) == before


@pytest.mark.parametrize(
    "task_id", [pytest.param("", id="empty"), "md#1\x00x", 42, None, b"md#1", ["md#1"]]
)
def test_ids_that_are_not_plain_non_empty_strings_are_refused(
    db: DbService, vectors: VectorStorage, task_id: Any
) -> None:
    vectors.upsert("md#1", [1.0, 2.0])
    before = rows_of(db)
    calls: list[Callable[[], object]] = [
        lambda: vectors.upsert(task_id, [1.0, 2.0]),
        lambda: vectors.upsert_many([("md#2", [1.0, 2.0]), (task_id, [1.0, 2.0])]),
        lambda: vectors.upsert_many(([task_id], np.ones((1, 2), np.float32))),
        lambda: vectors.get(task_id),
        lambda: vectors.delete(task_id),
    ]
    for call in calls:
        with pytest.raises(InvalidArgumentError, match="qualified_task_id"):
            call()
    assert rows_of(db) == before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, "k=0 is out of range"),
        ({"k": 1001}, "k=1001 is out of range"),
        ({"k": 2.5}, "k=2.5 must be a whole number"),
        ({"k": True}, "k=True must be a whole number"),
        ({"metric": "dot"}, "metric='dot' is not supported"),
        ({"metric": "L2"}, "metric='L2' is not supported"),
        ({"ef_search": 0}, "ef_search=0"),
        ({"probes": -1}, "probes=-1"),
        ({"backend": 5}, "backend=5"),
    ],
)
def test_bad_search_arguments_raise_config_errors(
    vectors: VectorStorage, kwargs: dict[str, Any], message: str
) -> None:
    vectors.upsert("md#1", [1.0, 2.0])
    with pytest.raises(InvalidArgumentError, match=message):
        vectors.search([1.0, 2.0], **kwargs)


def test_k_at_the_limits_is_accepted(vectors: VectorStorage) -> None:
    vectors.upsert("md#1", [1.0, 2.0])
    assert len(vectors.search([1.0, 2.0], 1)) == 1
    assert len(vectors.search([1.0, 2.0], 1000)) == 1
    assert len(vectors.search([1.0, 2.0], np.int64(3))) == 1


def test_a_zero_query_is_refused_for_cosine_only(vectors: VectorStorage) -> None:
    vectors.upsert("md#1", [1.0, 2.0])
    with pytest.raises(InvalidEmbeddingError, match="all zeros"):
        vectors.search([0.0, 0.0], metric="cosine")
    assert vectors.search([0.0, 0.0], metric="l2")[0].qualified_task_id == "md#1"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "annoy"}, "method='annoy' is not supported"),
        ({"metric": "hamming"}, "metric='hamming' is not supported"),
        ({"m": 1}, "m=1 is out of range"),
        ({"ef_construction": 10, "m": 16}, "ef_construction=10 must be at least 2 \\* m"),
        ({"lists": 0, "method": "ivfflat"}, "lists=0 is out of range"),
        ({"dimension": 0}, "dimension=0 is out of range"),
        ({"dimension": 4001}, "dimension 4001 can't be indexed"),
        ({"dimension": "384"}, "dimension='384' must be a whole number"),
    ],
)
def test_bad_index_arguments_raise_config_errors(
    vectors: VectorStorage, kwargs: dict[str, Any], message: str
) -> None:
    arguments: dict[str, Any] = {"dimension": 8, **kwargs}
    dimension = arguments.pop("dimension")
    with pytest.raises(InvalidArgumentError, match=message):
        vectors.create_index(dimension, **arguments)
    assert vectors.indexes() == []


@pytest.mark.parametrize(
    "table", ["", "1abc", "a-b", "a b", "a;b", 'a"b', "public.t", "x" * 64, None, 7]
)
def test_table_names_must_be_plain_identifiers(db: DbService, table: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="is not a plain identifier"):
        VectorStorage(db, table=table)


@pytest.mark.parametrize("table", ["sessions", "pg_x", "sqlite_x", "shareddb_approximate"])
def test_reserved_table_names_are_refused(db: DbService, table: str) -> None:
    with pytest.raises(InvalidArgumentError, match="is reserved"):
        VectorStorage(db, table=table)


@pytest.mark.parametrize("name", ["approximate", "found", "query", "r", "u", "e", "s", "t", "g"])
def test_tables_named_like_a_search_statements_parts_search_filtered(
    db: DbService, name: str
) -> None:
    """The statement's own parts (CTEs, aliases) never shadow the table."""
    custom = VectorStorage(db, table=name)
    custom.create_table()
    custom.upsert_many(
        ([f"md#{i}" for i in range(20)], np.eye(20, 4, dtype=np.float32) + 0.1),
        metadata=[{"odd": i % 2 == 1} for i in range(20)],
    )
    found = custom.search([1.0, 0.0, 0.0, 0.0], 3, where={"odd": False})
    assert len(found) == 3
    assert found[0].qualified_task_id == "md#0"
    assert len(custom.search_by_id("md#0", 30, where={"odd": False})) == 9


def test_errors_belong_to_the_shareddb_family(vectors: VectorStorage) -> None:
    for call in (
        lambda: vectors.upsert("", [1.0]),
        lambda: vectors.upsert("md#1", []),
        lambda: vectors.search([1.0], k=0),
    ):
        with pytest.raises(ShareddbError) as info:
            call()
        assert isinstance(info.value, ValueError)
        assert str(info.value)[0].islower()


# -- float32 arrays (numpy's fast path) ------------------------------------------------


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


# -- custom tables ---------------------------------------------------------------------


def test_create_table_gives_a_custom_table_the_same_behaviour(db: DbService) -> None:
    custom = VectorStorage(db, table="doc_vectors")
    custom.create_table()
    custom.create_table()  # idempotent
    default = VectorStorage(db)
    custom.upsert("md#1", [1.0, 0.0])
    default.upsert("md#1", [0.0, 1.0])
    assert custom.get("md#1").tolist() == [1.0, 0.0]
    assert default.get("md#1").tolist() == [0.0, 1.0]
    with pytest.raises(DimensionMismatchError):
        custom.upsert("md#1", [1.0])
    custom.upsert("md#2", [0.9, 0.1])
    assert [r.qualified_task_id for r in custom.search([1.0, 0.0], 2)] == ["md#1", "md#2"]
    custom.upsert("md#3", [1.0, 0.01])
    assert custom.search([1.0, 0.0], 2)[1].qualified_task_id == "md#3"
    assert custom.count() == 3 and default.count() == 1


def sqlite_ddl(text: str) -> str:
    """DDL text with layout, quotes and IF NOT EXISTS taken out, for comparisons."""
    text = " ".join(text.replace("IF NOT EXISTS ", "").replace('"', "").split())
    return text.replace("( ", "(").replace(" )", ")").replace(" ,", ",")


def table_shape(db: DbService, table: str) -> list[tuple[Any, ...]]:
    """Columns, constraints, indexes and triggers of `table`, its name written as T."""
    with db.connection() as conn:
        if db.get_backend_type() == "sqlite":
            rows = conn.execute(
                "SELECT type, sql FROM sqlite_master WHERE tbl_name = ? AND sql IS NOT NULL",
                (table,),
            ).fetchall()
            return sorted((kind, sqlite_ddl(text.replace(table, "T"))) for kind, text in rows)
        columns = conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod), attnotnull, attidentity, "
            "pg_get_expr(d.adbin, d.adrelid) FROM pg_attribute a "
            "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
            "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (table,),
        ).fetchall()
        rest = conn.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = %s::regclass "
            "UNION ALL SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = %s::regclass",
            (table, table),
        ).fetchall()
    named = [tuple(str(v).replace(table, "T") for v in row) for row in columns + rest]
    return sorted(named)


def test_create_table_builds_what_the_migration_builds(db: DbService) -> None:
    """create_table() repeats the 0001 migration's DDL: the two must not drift apart."""
    VectorStorage(db, table="doc_vectors").create_table()
    assert table_shape(db, "doc_vectors") == table_shape(db, "task_embeddings")
    assert len(table_shape(db, "doc_vectors")) >= 4


def test_index_methods_on_sqlite_do_nothing_and_say_so(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with DbService(sqlite_url) as db:
        db.initialize()
        vectors = VectorStorage(db)
        with caplog.at_level("INFO", logger="shareddb.vectors"):
            name = vectors.create_index(384, metric="l2")
            vectors.drop_index(name)
        assert name == "task_embeddings_hnsw_l2_384_idx"
        assert vectors.indexes() == []
        assert "search is exact" in caplog.text
        vectors.upsert("md#1", [1.0, 2.0])
        assert "exact l2 search with numpy over 1 cached rows" in vectors.explain(
            [1.0, 2.0], metric="l2"
        )


# -- SQLite's cached matrices ------------------------------------------------------------


def test_sqlite_search_sees_another_connections_commits(sqlite_url: str) -> None:
    with DbService(sqlite_url) as first, DbService(sqlite_url) as second:
        first.initialize()
        mine, theirs = VectorStorage(first), VectorStorage(second)
        mine.upsert_many([("md#1", [1.0, 0.0]), ("md#2", [0.0, 1.0])])
        assert mine.search([1.0, 0.0], 1)[0].qualified_task_id == "md#1"
        theirs.upsert("md#3", [1.0, 0.001])
        theirs.delete("md#1")
        assert [r.qualified_task_id for r in mine.search([1.0, 0.0], 2)] == ["md#3", "md#2"]
        raw = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))
        with raw:
            raw.execute(
                "UPDATE task_embeddings SET embedding = ? WHERE qualified_task_id = ?",
                (np.float32([1.0, 0.0]).tobytes(), "md#2"),
            )
        raw.close()
        assert mine.search([1.0, 0.0], 1)[0].qualified_task_id == "md#2"


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("scale", [1e17, 1e20, 1e36])
def test_sqlite_search_ranks_values_too_large_for_float32_products(
    sqlite_url: str, metric: str, scale: float
) -> None:
    """Squares and dot products of such values overflow float32: the ranking must not."""
    rng = np.random.default_rng(7)
    matrix = (rng.standard_normal((300, 24)) * scale).astype(np.float32)
    query = (rng.standard_normal(24) * scale).astype(np.float32)
    with DbService(sqlite_url) as db:
        db.initialize()
        vectors = VectorStorage(db)
        vectors.upsert_many(([f"md#{i}" for i in range(300)], matrix))
        for backend in (None, "md"):
            results = vectors.search(query, 10, metric=metric, backend=backend)
            expected, distances = brute_force(matrix, query, metric, 10)
            assert row_numbers(results) == expected
            assert [r.distance for r in results] == pytest.approx(distances.tolist(), rel=1e-9)


def test_sqlite_cache_forgets_rows_of_a_rolled_back_transaction(sqlite_url: str) -> None:
    with DbService(sqlite_url) as db:
        db.initialize()
        vectors = VectorStorage(db)
        vectors.upsert_many([("md#1", [1.0, 0.0]), ("md#2", [0.0, 1.0])])
        assert vectors.search([1.0, 0.0], 1)[0].qualified_task_id == "md#1"
        with pytest.raises(RuntimeError), db.transaction() as conn:
            vectors.upsert("md#tmp", [1.0, 0.0001], conn=conn)
            vectors.upsert("md#1", [-1.0, 0.0], conn=conn)
            assert vectors.search([1.0, 0.0], 1, conn=conn)[0].qualified_task_id == "md#tmp"
            raise RuntimeError
        assert [r.qualified_task_id for r in vectors.search([1.0, 0.0], 5)] == ["md#1", "md#2"]
        assert vectors.search([1.0, 0.0], 1)[0].distance == pytest.approx(0.0)


def test_sqlite_cache_survives_writes_to_other_tables(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shareddb._engines.sqlite import ranking as _ranking

    with DbService(sqlite_url) as db:
        db.initialize()
        vectors = VectorStorage(db)
        vectors.upsert_many([("md#1", [1.0, 0.0]), ("md#2", [0.0, 1.0])])
        vectors.search([1.0, 0.0], 1)
        loads: list[int] = []
        original = _ranking.Matrix.__init__

        def counting(self: Any, *args: Any) -> None:
            loads.append(1)
            original(self, *args)

        monkeypatch.setattr(_ranking.Matrix, "__init__", counting)
        with db.connection() as conn:
            conn.execute("CREATE TABLE other (x INTEGER)")
            conn.execute("INSERT INTO other VALUES (1)")
        for _ in range(3):
            vectors.search([1.0, 0.0], 1)
        assert loads == []  # no reload: the embeddings did not change
        vectors.upsert("md#3", [1.0, 1.0])
        vectors.search([1.0, 0.0], 1)
        assert loads == [1]


@pytest.mark.parametrize("metric", METRICS)
def test_sqlite_filters_beyond_the_cache_stay_exact_and_their_copies_within_budget(
    sqlite_url: str, metric: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More filters than a matrix keeps: each search still exact, the copies bounded."""
    from shareddb._engines.sqlite import ranking as _ranking

    matrices: list[Any] = []
    original = _ranking.Matrix.__init__

    def remembered(self: Any, *args: Any) -> None:
        matrices.append(self)
        original(self, *args)

    monkeypatch.setattr(_ranking.Matrix, "__init__", remembered)
    rng = np.random.default_rng(11)
    rows = rng.standard_normal((400, 8)).astype(np.float32)
    query = rng.standard_normal(8).astype(np.float32)
    with DbService(sqlite_url) as db:
        db.initialize()
        vectors = VectorStorage(db)
        ids = [f"md#{i}" for i in range(400)]
        vectors.upsert_many((ids, rows), metadata=[{"g": i % 80} for i in range(400)])
        for rounds in range(2):  # 80 filters > the 64 a matrix keeps: the oldest are dropped
            for g in range(80):
                results = vectors.search(query, 3, metric=metric, where={"g": {"$lte": g}})
                kept = np.flatnonzero(np.arange(400) % 80 <= g)
                expected, _ = brute_force(rows[kept], query, metric, 3)
                assert row_numbers(results) == [int(kept[e]) for e in expected], (rounds, g)
        (matrix,) = matrices
        vectors.search(query, 3, metric=metric, where={"g": {"$lte": 16}})  # cached, budget free
        held = sum(a.nbytes for s in matrix.selections.values() for a in s.gathered.values())
        assert held > 0  # small selections are kept gathered
        assert matrix.gather_budget + held == matrix.raw.nbytes  # nothing lost on eviction
        assert len(matrix.selections) == 64


# -- properties ------------------------------------------------------------------------

finite_float32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(vector=hnp.arrays(np.float32, st.integers(1, 64), elements=finite_float32))
def test_property_any_finite_float32_vector_round_trips(
    vectors: VectorStorage, vector: np.ndarray
) -> None:
    vectors.delete("md#p")  # the fixture's table lives across examples
    vectors.upsert("md#p", vector)
    got = vectors.get("md#p")
    assert got is not None and got.tobytes() == vector.tobytes()


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.data(),
    rows=st.integers(1, 40),
    dimension=st.integers(1, 12),
    k=st.integers(1, 15),
    metric=st.sampled_from(METRICS),
)
def test_property_search_equals_brute_force_on_small_random_sets(
    db: DbService,
    data: st.DataObject,
    rows: int,
    dimension: int,
    k: int,
    metric: str,
) -> None:
    table = VectorStorage(db)
    with db.connection() as conn:
        conn.execute("DELETE FROM task_embeddings")
    # Integers keep every distance exact in float32 and float64, so ties are real ties.
    elements = st.integers(-8, 8).map(float)
    matrix = data.draw(hnp.arrays(np.float32, (rows, dimension), elements=elements))
    query = data.draw(hnp.arrays(np.float32, dimension, elements=elements))
    if metric == "cosine":
        matrix[~matrix.any(axis=1), 0] = 1.0  # cosine is undefined for zero vectors
        query[0] = query[0] if query.any() else 1.0
    table.upsert_many(([f"md#{i}" for i in range(rows)], matrix))
    results = table.search(query, k, metric=metric, exact=True)
    _, distances = brute_force(matrix, query, metric, k)
    assert len(results) == min(k, rows)
    got = np.array([r.distance for r in results])
    np.testing.assert_allclose(got, distances, rtol=1e-5, atol=1e-5)
    # Ties may come in any order, but each result's distance must be its row's.
    for result in results:
        row = int(result.qualified_task_id.split("#")[1])
        _, own = brute_force(matrix[row : row + 1], query, metric, 1)
        assert result.distance == pytest.approx(float(own[0]), rel=1e-5, abs=1e-5)


def test_upsert_many_keeps_each_item_when_a_generator_reuses_its_buffer(db: DbService) -> None:
    vectors = VectorStorage(db)
    buffer = np.zeros(3, dtype=np.float32)

    def items() -> Iterator[tuple[str, np.ndarray]]:
        for i in range(3):
            buffer[:] = i + 1
            yield f"buf#{i}", buffer

    assert vectors.upsert_many(items()) == 3
    for i in range(3):
        assert np.array_equal(vectors.get(f"buf#{i}"), np.full(3, i + 1, dtype=np.float32))
