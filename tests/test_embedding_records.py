"""Embedding records on both engines: metadata, content hashes, models, bulk reads, filters.

Every expected answer is computed independently: stored values against what was
written, filtered results against a Python evaluation of the filter (`matches`) and a
numpy brute force over the same rows.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from async_twin import both_apis  # noqa: F401 - the `db` fixture: each test on both APIs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shareddb import (
    DbService,
    EmbeddingItem,
    EmbeddingNotFoundError,
    InvalidArgumentError,
    SearchHit,
    SearchResult,
    VectorStorage,
)
from shareddb._migrations import files
from shareddb._vectors.filters import matches, parse_filter


@pytest.fixture
def vectors(db: DbService) -> VectorStorage:
    return VectorStorage(db)


def unit(rng: np.random.Generator, n: int, dim: int = 8) -> np.ndarray[Any, Any]:
    m = rng.standard_normal((n, dim)).astype(np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def cosine_order(
    matrix: np.ndarray[Any, Any], ids: list[str], query: np.ndarray[Any, Any], keep: set[str]
) -> list[tuple[str, float]]:
    """Exact cosine neighbours among `keep`, by numpy in float64, nearest first."""
    m = matrix.astype(np.float64)
    q = query.astype(np.float64)
    distances = 1 - (m @ q) / (np.linalg.norm(m, axis=1) * np.linalg.norm(q))
    ranked = sorted(
        ((ids[i], float(distances[i])) for i in range(len(ids)) if ids[i] in keep),
        key=lambda pair: (pair[1], ids.index(pair[0])),
    )
    return ranked


# -- writing -------------------------------------------------------------------------------


def test_fields_left_none_keep_their_stored_values(vectors: VectorStorage) -> None:
    vectors.upsert(
        "md#1", [1.0, 0.0], backend="open", metadata={"a": 1}, content_hash="h1", model="m1"
    )
    vectors.upsert("md#1", [0.0, 1.0])
    record = vectors.get_record("md#1")
    assert record is not None
    assert (record.backend, record.metadata, record.content_hash, record.model) == (
        "open",
        {"a": 1},
        "h1",
        "m1",
    )
    np.testing.assert_array_equal(record.embedding, np.array([0.0, 1.0], np.float32))
    vectors.upsert("md#1", [0.0, 1.0], metadata={}, content_hash="h2")
    record = vectors.get_record("md#1")
    assert record is not None
    assert (record.metadata, record.content_hash, record.model) == ({}, "h2", "m1")


def test_a_new_row_takes_the_defaults(vectors: VectorStorage) -> None:
    vectors.upsert("gh#7", [1.0, 2.0])
    record = vectors.get_record("gh#7")
    assert record is not None
    assert (record.backend, record.metadata, record.content_hash, record.model) == (
        "gh",
        {},
        None,
        None,
    )
    assert record.created_at == record.updated_at
    assert record.created_at.utcoffset() is not None


def test_upsert_many_carries_aligned_fields_and_keeps_what_is_left_none(
    vectors: VectorStorage,
) -> None:
    rng = np.random.default_rng(1)
    ids = [f"md#{i}" for i in range(6)]
    matrix = unit(rng, 6)
    metadata: list[dict[str, Any] | None] = [{"i": i, "even": i % 2 == 0} for i in range(6)]
    hashes: list[str | None] = [f"h{i}" for i in range(6)]
    assert vectors.upsert_many((ids, matrix), metadata=metadata, content_hashes=hashes, model="m")
    # Again, through the update path: None keeps, a value replaces.
    metadata[0] = None
    hashes[1] = None
    vectors.upsert_many(
        (ids, matrix[::-1].copy()),
        metadata=[None, {"new": True}, None, None, None, None],
        content_hashes=hashes,
    )
    first, second = vectors.get_record("md#0"), vectors.get_record("md#1")
    assert first is not None and second is not None
    assert (first.metadata, first.content_hash, first.model) == ({"i": 0, "even": True}, "h0", "m")
    assert (second.metadata, second.content_hash, second.model) == ({"new": True}, "h1", "m")
    np.testing.assert_array_equal(first.embedding, matrix[5])


def test_streamed_items_carry_their_own_fields(vectors: VectorStorage) -> None:
    items = [
        EmbeddingItem("md#1", [1.0, 0.0], metadata={"k": "v"}, content_hash="x", backend="lbl"),
        ("md#2", [0.0, 1.0]),
    ]
    assert vectors.upsert_many(items, model="m2") == 2
    one, two = vectors.get_record("md#1"), vectors.get_record("md#2")
    assert one is not None and two is not None
    assert (one.backend, one.metadata, one.content_hash, one.model) == (
        "lbl",
        {"k": "v"},
        "x",
        "m2",
    )
    assert (two.backend, two.metadata, two.content_hash, two.model) == ("md", {}, None, "m2")


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ("text", "not a dict"),
        ({1: "x"}, "key"),
        ({"a": float("nan")}, "'a'"),
        ({"a": {"b": b"x"}}, "'b'"),
        ({"a\x00": 1}, "NUL"),
        ({"a": "x\x00y"}, "NUL"),
        ({"a": {1, 2}}, "'a'"),
    ],
)
def test_bad_metadata_is_refused_naming_the_id_and_key_and_writes_nothing(
    vectors: VectorStorage, metadata: Any, message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=message) as info:
        vectors.upsert("md#bad", [1.0, 2.0], metadata=metadata)
    assert "md#bad" in str(info.value)
    with pytest.raises(InvalidArgumentError, match=message):
        vectors.upsert_many((["md#ok", "md#bad"], np.ones((2, 2))), metadata=[{}, metadata])
    assert vectors.count() == 0


def test_field_lists_must_align_with_the_ids(vectors: VectorStorage) -> None:
    with pytest.raises(InvalidArgumentError, match="1 entries for 2 rows"):
        vectors.upsert_many((["a#1", "a#2"], np.ones((2, 2))), metadata=[{}])
    with pytest.raises(InvalidArgumentError, match="EmbeddingItem"):
        vectors.upsert_many([("a#1", [1.0])], metadata=[{}])
    assert vectors.count() == 0


# -- reading -------------------------------------------------------------------------------


def test_bulk_reads_deletes_and_existence(vectors: VectorStorage) -> None:
    rng = np.random.default_rng(2)
    ids = [f"md#{i}" for i in range(10)]
    matrix = unit(rng, 10)
    vectors.upsert_many((ids, matrix))
    got = vectors.get_many(["md#3", "md#missing", "md#7", "md#3"])
    assert sorted(got) == ["md#3", "md#7"]
    np.testing.assert_array_equal(got["md#7"], matrix[7])
    assert vectors.exists("md#0") and not vectors.exists("md#missing")
    assert vectors.delete_many(["md#0", "md#1", "md#missing"]) == 2
    assert vectors.count() == 8
    assert vectors.delete_many([]) == 0


def test_ids_stream_in_code_point_order_with_filters(vectors: VectorStorage) -> None:
    ids = ["md#b", "md#B", "gh#a", "md#ä", "md#a", "md#10", "md#9"]
    vectors.upsert_many(
        [EmbeddingItem(i, [1.0, float(n)], metadata={"n": n}) for n, i in enumerate(ids)]
    )
    assert list(vectors.ids()) == sorted(ids)
    assert list(vectors.ids(backend="gh")) == ["gh#a"]
    assert list(vectors.ids(where={"n": {"$gte": 4}})) == sorted(ids[4:])
    assert vectors.count(where={"n": {"$lt": 2}}) == 2
    assert vectors.count(backend="md", where={"n": {"$in": [0, 2]}}) == 1


def test_ids_can_stream_more_than_one_page(vectors: VectorStorage) -> None:
    n = 25_000
    ids = [f"t#{i:06d}" for i in range(n)]
    vectors.upsert_many((ids, np.ones((n, 2), np.float32)))
    stream = vectors.ids(dimension=2)
    assert next(stream) == ids[0]
    assert [ids[0], *stream] == ids


def test_stale_finds_missing_changed_and_other_model_ids_in_order(
    vectors: VectorStorage,
) -> None:
    texts = {f"md#{i}": f"text {i}" for i in range(5)}
    digests = {k: hashlib.sha256(v.encode()).hexdigest() for k, v in texts.items()}
    vectors.upsert_many(
        (list(digests)[:4], np.ones((4, 2))),
        content_hashes=list(digests.values())[:4],
        model="m1",
    )
    vectors.upsert("md#2", [1.0, 1.0], model="m0")
    asked = dict(digests)
    asked["md#1"] = "changed"
    order = ["md#4", "md#3", "md#2", "md#1", "md#0"]
    assert vectors.stale({k: asked[k] for k in order}) == ["md#4", "md#1"]
    assert vectors.stale({k: asked[k] for k in order}, model="m1") == ["md#4", "md#2", "md#1"]
    assert vectors.stale({}) == []


def test_stale_takes_any_id_and_hash_text_as_it_is(vectors: VectorStorage) -> None:
    # stale() sends ids and hashes as JSON text on PostgreSQL: quotes, backslashes, escapes
    # and non-ASCII must come back byte for byte, matched against what upsert stored.
    odd = ['md#"q"', "md#back\\slash", "md#\\u0041", "md#ünï 🐍", "md#a'); DROP TABLE x;--"]
    hashes = ['h"1', "h\\2", "\\u0042", "hé 🐍", "h,5"]
    vectors.upsert_many((odd[:4], np.ones((4, 2))), content_hashes=hashes[:4])
    asked = dict(zip(odd, hashes, strict=True))
    assert vectors.stale(asked) == [odd[4]]
    asked[odd[1]] = "h\\\\2"
    assert vectors.stale(asked) == [odd[1], odd[4]]


# -- searching -----------------------------------------------------------------------------


def test_filtered_search_returns_k_rows_whenever_k_match(vectors: VectorStorage) -> None:
    rng = np.random.default_rng(3)
    n = 400
    ids = [f"md#{i}" for i in range(n)]
    matrix = unit(rng, n)
    labels = ["small" if i % 50 == 0 else "big" for i in range(n)]  # 8 small rows
    vectors.upsert_many((ids, matrix), metadata=[{"label": label} for label in labels])
    if vectors.db.get_backend_type() == "postgres":
        vectors.create_index(8, metric="cosine")
    query = unit(rng, 1)[0]
    keep = {i for i, label in zip(ids, labels, strict=True) if label == "small"}
    hits = vectors.search(query, 5, where={"label": "small"})
    expected = cosine_order(matrix, ids, query, keep)[:5]
    assert [h.qualified_task_id for h in hits] == [i for i, _ in expected]
    assert len(vectors.search(query, 20, where={"label": "small"})) == 8


def test_max_distance_exclude_and_model_filters(vectors: VectorStorage) -> None:
    rng = np.random.default_rng(4)
    ids = [f"md#{i}" for i in range(30)]
    matrix = unit(rng, 30)
    vectors.upsert_many((ids[:15], matrix[:15]), model="a")
    vectors.upsert_many((ids[15:], matrix[15:]), model="b")
    query = matrix[0]
    everything = cosine_order(matrix, ids, query, set(ids))
    hits = vectors.search(query, 10, max_distance=0.5)
    assert [h.qualified_task_id for h in hits] == [i for i, d in everything[:10] if d <= 0.5]
    assert all(h.distance <= 0.5 for h in hits)
    hits = vectors.search(query, 5, exclude=["md#0", "md#1"], model="b")
    keep = set(ids[15:]) - {"md#0", "md#1"}
    assert [h.qualified_task_id for h in hits] == [
        i for i, _ in cosine_order(matrix, ids, query, keep)[:5]
    ]


def test_search_by_id_is_more_like_this_without_itself(vectors: VectorStorage) -> None:
    rng = np.random.default_rng(5)
    ids = [f"md#{i}" for i in range(50)]
    matrix = unit(rng, 50)
    vectors.upsert_many((ids, matrix), metadata=[{"i": i} for i in range(50)])
    hits = vectors.search_by_id("md#7", 4, with_metadata=True)
    expected = cosine_order(matrix, ids, matrix[7], set(ids) - {"md#7"})[:4]
    assert [h.qualified_task_id for h in hits] == [i for i, _ in expected]
    assert all(isinstance(h, SearchHit) for h in hits)
    assert [h.metadata for h in hits] == [{"i": int(i.split("#")[1])} for i, _ in expected]
    with pytest.raises(EmbeddingNotFoundError, match="md#missing") as info:
        vectors.search_by_id("md#missing")
    assert isinstance(info.value, KeyError)


def test_search_by_id_follows_the_ids_own_dimension(vectors: VectorStorage) -> None:
    vectors.upsert_many([("a#1", [1.0, 0.0]), ("a#2", [0.9, 0.1]), ("b#1", [1.0, 0.0, 0.0])])
    assert vectors.search_by_id("a#1") == [SearchResult("a#2", pytest.approx(0.0061, abs=1e-3))]
    vectors.upsert("b#2", [0.0, 1.0, 0.0])
    assert [h.qualified_task_id for h in vectors.search_by_id("b#1")] == ["b#2"]


@pytest.mark.parametrize(
    "where",
    [
        {"status": {"$bogus": 1}},
        {"status": [1, 2]},
        {"$and": []},
        {"n": {"$gt": True}},
        "status = 'open'",
        {"n": float("inf")},
    ],
)
def test_malformed_filters_raise_before_any_sql(vectors: VectorStorage, where: Any) -> None:
    with pytest.raises(InvalidArgumentError):
        vectors.search([1.0, 0.0], where=where)
    with pytest.raises(InvalidArgumentError):
        vectors.count(where=where)
    with pytest.raises(InvalidArgumentError):
        vectors.ids(where=where)


def test_hostile_keys_and_values_are_data(vectors: VectorStorage) -> None:
    key = "a'); DROP TABLE task_embeddings;--"
    vectors.upsert("md#1", [1.0, 0.0], metadata={key: "%s ? $1 ::text"})
    assert vectors.count(where={key: "%s ? $1 ::text"}) == 1
    assert vectors.count(where={key: {"$ne": "%s ? $1 ::text"}}) == 0
    assert vectors.count() == 1


METADATA = [
    {"status": "open", "n": 1, "flag": True},
    {"status": "closed", "n": 2.0, "flag": False},
    {"status": None, "n": "2"},
    {"n": 10, "tags": ["x"]},
    {},
    {"status": "open", "n": -3.5, "flag": 1},
]
FILTERS: list[dict[str, Any]] = [
    {"status": "open"},
    {"status": None},
    {"status": {"$ne": "open"}},
    {"status": {"$exists": False}},
    {"n": 2},
    {"n": {"$gte": 1}},
    {"n": {"$gt": "1"}},
    {"flag": True},
    {"flag": 1},
    {"n": {"$nin": [1, 10]}},
    {"$or": [{"status": "closed"}, {"n": {"$lt": 0}}]},
    {"$not": {"status": "open"}},
    {"tags": "x"},
]


@pytest.mark.parametrize("where", FILTERS)
def test_filters_agree_with_the_python_evaluation(vectors: VectorStorage, where: Any) -> None:
    ids = [f"md#{i}" for i in range(len(METADATA))]
    matrix = unit(np.random.default_rng(6), len(ids))
    vectors.upsert_many((ids, matrix), metadata=list(METADATA))
    parsed = parse_filter(where)
    keep = {i for i, m in zip(ids, METADATA, strict=True) if matches(parsed, m)}
    assert list(vectors.ids(where=where)) == sorted(keep)
    assert vectors.count(where=where) == len(keep)
    query = matrix[0]
    hits = vectors.search(query, 10, where=where, exact=True)
    assert [h.qualified_task_id for h in hits] == [
        i for i, _ in cosine_order(matrix, ids, query, keep)
    ]


# -- upgrading -----------------------------------------------------------------------------


def test_a_database_of_the_previous_release_upgrades_in_place(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows written before 0003 keep every value bit for bit and gain empty records."""
    old = tmp_path / "previous-release"
    for engine in ("postgres", "sqlite"):
        (old / engine).mkdir(parents=True)
        for path in sorted(files.builtin_schema_dir(engine).glob("000[12]_*.sql")):
            shutil.copy(path, old / engine / path.name)
    monkeypatch.setattr(files, "builtin_schema_dir", lambda engine: old / engine)
    vector = np.array([0.1, -2.5, 3.0e38, 1.0e-45], np.float32)
    columns = "qualified_task_id, backend, dimension, embedding, created_at, updated_at"
    with DbService(db_url) as db:
        db.initialize()
        with db.transaction() as conn:
            if db.get_backend_type() == "postgres":
                conn.execute(
                    "INSERT INTO task_embeddings (qualified_task_id, backend, dimension, "
                    "embedding) VALUES ('md#1', 'label', 4, %s)",
                    (vector,),
                )
            else:
                conn.execute(
                    f"INSERT INTO task_embeddings ({columns}) VALUES ('md#1', 'label', 4, ?, "
                    "'2025-01-31T09:30:00.123456+00:00', '2025-01-31T09:30:00.123456+00:00')",
                    (vector.astype("<f4").tobytes(),),
                )
        with db.transaction() as conn:
            before = conn.execute(f"SELECT {columns} FROM task_embeddings").fetchall()
    monkeypatch.undo()
    with DbService(db_url) as db:
        report = db.initialize()
        assert [m.name for m in report.applied] == ["0003_embedding_records.sql"]
        with db.transaction() as conn:
            after = conn.execute(f"SELECT {columns} FROM task_embeddings").fetchall()
        assert [tuple(map(str, row)) for row in after] == [tuple(map(str, row)) for row in before]
        vectors = VectorStorage(db)
        record = vectors.get_record("md#1")
        assert record is not None
        assert record.embedding.tobytes() == vector.tobytes()
        assert (record.backend, record.metadata, record.content_hash, record.model) == (
            "label",
            {},
            None,
            None,
        )
        vectors.upsert("md#1", vector, metadata={"upgraded": True})
        assert vectors.count(where={"upgraded": True}) == 1


# -- generated filters against the Python evaluation ---------------------------------------

KEYS = st.sampled_from(["a", "b", "a'); DROP TABLE x;--", "$x", "ä.b[0]", '"q"'])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(-1e6, 1e6, allow_nan=False).filter(lambda x: x == x),
    st.sampled_from([0, 1, 2, 2.0, -1, 0.5, "", "a", "B", "é", "%s", "?", "$1", "::text"]),
)
VALUES = st.one_of(
    SCALARS, st.lists(SCALARS, max_size=2), st.dictionaries(KEYS, SCALARS, max_size=2)
)
METADATA_ROWS = st.lists(st.dictionaries(KEYS, VALUES, max_size=3), min_size=1, max_size=12)
OPERATIONS = st.one_of(
    SCALARS,
    st.fixed_dictionaries({"$eq": SCALARS}),
    st.fixed_dictionaries({"$ne": SCALARS}),
    st.builds(
        lambda op, value: {op: value},
        st.sampled_from(["$gt", "$gte", "$lt", "$lte"]),
        st.one_of(
            st.integers(-5, 5), st.floats(-5, 5, allow_nan=False), st.sampled_from(["", "a", "b"])
        ),
    ),
    st.fixed_dictionaries({"$in": st.lists(SCALARS, max_size=3)}),
    st.fixed_dictionaries({"$nin": st.lists(SCALARS, max_size=3)}),
    st.fixed_dictionaries({"$exists": st.booleans()}),
)
LEAVES = st.dictionaries(KEYS, OPERATIONS, min_size=1, max_size=2)
FILTERS_GENERATED = st.recursive(
    LEAVES,
    lambda inner: st.one_of(
        st.fixed_dictionaries({"$and": st.lists(inner, min_size=1, max_size=3)}),
        st.fixed_dictionaries({"$or": st.lists(inner, min_size=1, max_size=3)}),
        st.fixed_dictionaries({"$not": inner}),
    ),
    max_leaves=6,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rows=METADATA_ROWS, where=FILTERS_GENERATED)
def test_generated_filters_agree_with_the_python_evaluation(
    vectors: VectorStorage, rows: list[dict[str, Any]], where: dict[str, Any]
) -> None:
    vectors.delete_many(list(vectors.ids()))
    ids = [f"p#{i:02d}" for i in range(len(rows))]
    matrix = unit(np.random.default_rng(len(rows)), len(rows))
    vectors.upsert_many((ids, matrix), metadata=list(rows))
    parsed = parse_filter(where)
    keep = {i for i, m in zip(ids, rows, strict=True) if matches(parsed, m)}
    assert list(vectors.ids(where=where)) == sorted(keep)
    assert vectors.count(where=where) == len(keep)
    hits = vectors.search(matrix[0], len(rows), where=where, exact=True)
    expected = cosine_order(matrix, ids, matrix[0], keep)
    assert [h.qualified_task_id for h in hits] == [i for i, _ in expected]


def test_two_id_streams_can_interleave_inside_one_transaction(
    db: DbService, vectors: VectorStorage
) -> None:
    vectors.upsert_many(([f"md#{i}" for i in range(5)], np.ones((5, 2))))
    with db.transaction() as conn:
        first, second = vectors.ids(conn=conn), vectors.ids(backend="md", conn=conn)
        pairs = list(zip(first, second, strict=True))
    assert pairs == [(f"md#{i}", f"md#{i}") for i in range(5)]
