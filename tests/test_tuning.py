"""shareddb.tuning.tune on real data, checked against recall computed independently.

The exact neighbours come from numpy brute force over the same matrix (or from the
dataset's own ground-truth file), never from ``search(exact=True)``, which is what
tune() itself uses. A stored vector used as a query never counts as its own neighbour:
tune() excludes its row from both answers, and so do the checks here.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import FrozenInstanceError, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import DATA_DIR, fresh_database, run_cli

from shareddb import DbService, InvalidArgumentError, InvalidEmbeddingError, ShareddbError
from shareddb.tuning import TuneResult, check_queries, tune
from shareddb.vectors import VectorStorage

pytestmark = pytest.mark.postgres

MINILM = DATA_DIR / "stdlib-minilm"
SIFT = DATA_DIR / "siftsmall"


@dataclass
class Loaded:
    db: DbService
    storage: VectorStorage
    base: np.ndarray
    metric: str
    url: str = ""


def _row(task_id: str) -> int:
    return int(task_id.split("#", 1)[1])


def _load(url: str, base: np.ndarray) -> tuple[DbService, VectorStorage]:
    db = DbService(url)
    db.open()
    db.initialize()
    storage = VectorStorage(db)
    storage.upsert_many(([f"doc#{i}" for i in range(len(base))], base))
    with db.connection() as conn:
        # Statistics, so the planner sees the rows (as after autovacuum's ANALYZE).
        conn.execute("ANALYZE task_embeddings")
    return db, storage


def _read_ivecs(path: Path) -> np.ndarray:
    raw = np.fromfile(path, dtype=np.int32)
    return raw.reshape(-1, int(raw[0]) + 1)[:, 1:].copy()


@pytest.fixture(scope="module")
def minilm(pg_server_url: str) -> Iterator[Loaded]:
    """1,966 x 384 MiniLM embeddings (cosine) with an HNSW index at m=16, ef_construction=64."""
    base = np.load(MINILM / "base.npy")
    for url in fresh_database(pg_server_url):
        db, storage = _load(url, base)
        storage.create_index(384, method="hnsw", metric="cosine", m=16, ef_construction=64)
        try:
            yield Loaded(db, storage, base, "cosine", url)
        finally:
            db.close()


@pytest.fixture(scope="module")
def sift(pg_server_url: str) -> Iterator[Loaded]:
    """SIFT10K, 10,000 x 128 (L2), with an IVFFlat index of 50 lists."""
    base = _read_ivecs(SIFT / "siftsmall_base.fvecs").view(np.float32)
    for url in fresh_database(pg_server_url):
        db, storage = _load(url, base)
        storage.create_index(128, method="ivfflat", metric="l2", lists=50)
        try:
            yield Loaded(db, storage, base, "l2")
        finally:
            db.close()


def _numpy_exact(base: np.ndarray, query: np.ndarray, metric: str, k: int, skip: int) -> set[int]:
    """Row numbers of the k nearest rows other than `skip`, by float64 brute force."""
    b = base.astype(np.float64)
    q = query.astype(np.float64)
    if metric == "cosine":
        dist = 1 - (b @ q) / (np.linalg.norm(b, axis=1) * np.linalg.norm(q))
    else:
        dist = np.linalg.norm(b - q, axis=1)
    if skip >= 0:
        dist[skip] = np.inf
    return {int(i) for i in np.argsort(dist, kind="stable")[:k]}


def _independent_recall(loaded: Loaded, result: TuneResult, value: int) -> float:
    """recall@k of the index at `value` on tune's own sample, against numpy's exact answer.

    Each query's own row is left out of both: numpy skips it, the search excludes it.
    """
    scores = []
    for task_id in result.sample_ids:
        row = _row(task_id)
        query = loaded.base[row]
        exact = _numpy_exact(loaded.base, query, loaded.metric, result.k, skip=row)
        options: dict[str, Any] = {result.parameter: value}
        hits = loaded.storage.search(
            query,
            result.k,
            metric=loaded.metric,  # type: ignore[arg-type]
            exclude=[task_id],
            **options,
        )
        found = {_row(h.qualified_task_id) for h in hits}
        assert row not in found and len(found) == result.k
        scores.append(len(found & exact) / result.k)
    return float(np.mean(scores))


def _dataset_recall(storage: VectorStorage, queries: np.ndarray, value: int, k: int = 10) -> float:
    """recall@k at ef_search=`value` on MiniLM's real queries, against its ground-truth file."""
    truth = np.load(MINILM / "groundtruth.npy")[: len(queries), :k]
    scores = []
    for query, expected in zip(queries, truth, strict=True):
        found = {_row(h.qualified_task_id) for h in storage.search(query, k, ef_search=value)}
        scores.append(len(found & set(expected.tolist())) / k)
    return float(np.mean(scores))


def _assert_smallest_meeting_target(result: TuneResult) -> None:
    assert result.value is not None and result.met
    values = [r.value for r in result.rows]
    assert values == sorted(values) and values[-1] == result.value
    assert result.rows[-1].recall >= result.target_recall
    assert all(r.recall < result.target_recall for r in result.rows[:-1])


def test_tune_hnsw_on_minilm_picks_the_smallest_ef_search_whose_recall_numpy_confirms(
    minilm: Loaded,
) -> None:
    result = tune(minilm.storage, 384, metric="cosine", target_recall=0.95, k=10, sample=100)

    assert (result.method, result.parameter, result.metric) == ("hnsw", "ef_search", "cosine")
    assert result.index == "task_embeddings_hnsw_cosine_384_idx"
    assert result.sample == len(result.sample_ids) == 100
    assert len(set(result.sample_ids)) == 100
    assert result.queries == "stored"
    assert result.rows[0].value == 10  # ef_search = k: no extra row asked for the query itself
    _assert_smallest_meeting_target(result)
    for row in result.rows:
        assert row.recall == pytest.approx(
            _independent_recall(minilm, result, row.value), abs=0.005
        )
        assert 0 < row.p50_ms <= row.p95_ms
    assert result.search_kwargs() == {"ef_search": result.value}


def test_tune_with_a_high_target_sweeps_further_and_still_matches_numpy(minilm: Loaded) -> None:
    result = tune(minilm.storage, 384, metric="cosine", target_recall=1.0, k=10, sample=60, seed=3)

    if result.value is not None:
        _assert_smallest_meeting_target(result)
    last = result.rows[-1]
    assert last.recall == pytest.approx(_independent_recall(minilm, result, last.value), abs=0.005)


def test_tune_sample_is_fixed_by_the_seed(minilm: Loaded) -> None:
    one = tune(minilm.storage, 384, metric="cosine", sample=20, values=[40], seed=7)
    again = tune(minilm.storage, 384, metric="cosine", sample=20, values=[40], seed=7)
    other = tune(minilm.storage, 384, metric="cosine", sample=20, values=[40], seed=8)

    assert one.sample_ids == again.sample_ids
    assert one.sample_ids != other.sample_ids
    assert one.rows[0].recall == again.rows[0].recall


class SpyStorage(VectorStorage):
    """A VectorStorage that records every search tune() makes."""

    def __init__(self, db: DbService) -> None:
        super().__init__(db)
        self.calls: list[tuple[int, tuple[str, ...], list[str]]] = []

    def search(self, query: object, k: int = 10, **kwargs: Any) -> Any:  # type: ignore[override]
        hits = super().search(query, k, **kwargs)
        exclude = tuple(kwargs.get("exclude") or ())
        self.calls.append((k, exclude, [h.qualified_task_id for h in hits]))
        return hits


def test_tune_never_counts_a_stored_vector_as_its_own_neighbour(minilm: Loaded) -> None:
    spy = SpyStorage(minilm.db)
    result = tune(spy, 384, metric="cosine", values=[10, 40], target_recall=1.0, sample=30)

    own = set(result.sample_ids)
    assert len(spy.calls) == 30 * (2 + len(result.rows))  # exact, warm-up, each setting
    for k, exclude, hits in spy.calls:
        # Asked for k rows with the query's own row excluded, exact and approximate alike.
        assert k == 10 and len(exclude) == 1 and exclude[0] in own
        assert exclude[0] not in hits and len(hits) == 10


@pytest.mark.parametrize("target", [0.95, 0.99])
def test_tune_on_real_queries_uses_all_of_them_and_reaches_the_target_on_them(
    minilm: Loaded, target: float
) -> None:
    queries = np.load(MINILM / "queries.npy")
    assert len(queries) == 200

    result = tune(minilm.storage, 384, metric="cosine", queries=queries, target_recall=target)

    assert result.sample == 200 and result.sample_ids == () and result.queries == "given"
    assert "all 200 given queries" in result.table()
    _assert_smallest_meeting_target(result)
    for row in result.rows:
        assert row.recall == pytest.approx(
            _dataset_recall(minilm.storage, queries, row.value), abs=1e-9
        )
    assert result.value is not None
    # The point of passing them: the setting tune picks reaches the target on them.
    assert _dataset_recall(minilm.storage, queries, result.value) >= target


def test_tune_on_stored_vectors_says_real_queries_score_lower(minilm: Loaded) -> None:
    stored = tune(minilm.storage, 384, metric="cosine", target_recall=0.95)
    text = stored.table()
    assert "100 stored vectors as queries, each one's own row excluded" in text
    assert "--queries FILE.npy" in text
    # What the text warns about: on the real queries the same setting scores lower.
    queries = np.load(MINILM / "queries.npy")
    assert stored.chosen is not None
    assert _dataset_recall(minilm.storage, queries, stored.chosen.value) < stored.chosen.recall


def test_tune_takes_sample_or_queries_not_both(minilm: Loaded) -> None:
    queries = np.load(MINILM / "queries.npy")
    with pytest.raises(InvalidArgumentError, match="sample=50 picks stored vectors"):
        tune(minilm.storage, 384, metric="cosine", queries=queries, sample=50)


def test_tune_ivfflat_on_sift_picks_probes_that_numpy_confirms(sift: Loaded) -> None:
    result = tune(sift.storage, 128, metric="l2", target_recall=0.9, k=10, sample=50)

    assert (result.method, result.parameter) == ("ivfflat", "probes")
    _assert_smallest_meeting_target(result)
    assert result.value is not None and 1 <= result.value <= 50
    for row in result.rows:
        assert row.recall == pytest.approx(_independent_recall(sift, result, row.value), abs=0.005)


def test_tune_reports_no_value_when_no_setting_reaches_the_target(sift: Loaded) -> None:
    result = tune(sift.storage, 128, metric="l2", target_recall=0.999, values=[1], sample=50)

    assert result.value is None and not result.met
    assert result.search_kwargs() == {}
    assert result.chosen is None
    assert [r.value for r in result.rows] == [1]
    independent = _independent_recall(sift, result, 1)
    assert result.rows[0].recall == pytest.approx(independent, abs=0.005)
    assert independent < 0.999
    assert "no probes up to 1 reaches recall@10 >= 0.999" in result.table()


def test_tune_result_table_names_the_setting_to_use(minilm: Loaded) -> None:
    result = tune(minilm.storage, 384, metric="cosine", values=[10, 40, 400], sample=20)

    text = str(result)
    assert result.index in text
    assert f"use ef_search={result.value}" in text
    assert "exact" in text
    with pytest.raises(FrozenInstanceError):
        result.value = 1  # type: ignore[misc]


def test_tune_leaves_the_data_and_indexes_unchanged(minilm: Loaded) -> None:
    before = (minilm.storage.count(), minilm.storage.indexes())
    tune(minilm.storage, 384, metric="cosine", values=[20], sample=10)
    assert (minilm.storage.count(), minilm.storage.indexes()) == before


def test_tune_without_an_index_for_the_metric_says_to_create_one(minilm: Loaded) -> None:
    with pytest.raises(ShareddbError, match=r"no vector index .* create_index\(384"):
        tune(minilm.storage, 384, metric="l2")
    with pytest.raises(ShareddbError, match="no ivfflat index"):
        tune(minilm.storage, 384, metric="cosine", method="ivfflat")
    with pytest.raises(ShareddbError, match="dimension 768"):
        tune(minilm.storage, 768, metric="cosine")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"metric": "hamming"}, "metric='hamming'"),
        ({"metric": "cosine", "target_recall": 0}, "target_recall=0"),
        ({"metric": "cosine", "target_recall": 1.5}, "target_recall=1.5"),
        ({"metric": "cosine", "target_recall": "high"}, "target_recall='high'"),
        ({"metric": "cosine", "k": 0}, "k=0"),
        ({"metric": "cosine", "sample": 0}, "sample=0"),
        ({"metric": "cosine", "method": "flat"}, "method='flat'"),
        ({"metric": "cosine", "values": []}, "values is empty"),
        ({"metric": "cosine", "values": [0]}, "values=0"),
    ],
)
def test_tune_rejects_bad_arguments_with_a_config_error(
    minilm: Loaded, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        tune(minilm.storage, 384, **kwargs)


def test_tune_rejects_queries_of_the_wrong_shape(minilm: Loaded) -> None:
    with pytest.raises(InvalidEmbeddingError, match=r"dimension 128 .* dimension 384"):
        tune(minilm.storage, 384, metric="cosine", queries=np.ones((3, 128)))
    with pytest.raises(InvalidEmbeddingError, match="finite"):
        tune(minilm.storage, 384, metric="cosine", queries=np.full((3, 384), np.nan))


@pytest.mark.parametrize(
    ("queries", "message"),
    [
        (np.ones(384), r"shape \(384,\); tune needs a 2-D array"),
        (np.ones((0, 384)), r"shape \(0, 384\)"),
        (np.ones((2, 3, 384)), r"shape \(2, 3, 384\)"),
        (np.full((2, 384), "0.5"), "dtype <U3, not numbers"),
        (np.ones((2, 384), dtype=bool), "dtype bool, not numbers"),
        (np.ones((2, 384), dtype=complex), "dtype complex128, not numbers"),
        (np.full((2, 384), 1e39), "too large for float32"),
        ([[1.0] * 384, [1.0] * 383], "2-D array of numbers"),
    ],
)
def test_check_queries_names_what_is_wrong(queries: Any, message: str) -> None:
    with pytest.raises(InvalidEmbeddingError, match=message):
        check_queries(queries, 384)


def test_check_queries_takes_any_real_matrix_as_float32() -> None:
    checked = check_queries(np.arange(6, dtype=np.int64).reshape(2, 3), 3)
    assert checked.dtype == np.float32 and checked.shape == (2, 3)


def test_tune_on_sqlite_explains_that_search_is_exact(sqlite_url: str) -> None:
    with DbService(sqlite_url) as db:
        db.initialize()
        storage = VectorStorage(db)
        storage.upsert_many((["a#1", "a#2"], np.eye(2, 8, dtype=np.float32)))
        with pytest.raises(ShareddbError, match="SQLite, where every search is exact"):
            tune(storage, 8, metric="cosine")


@pytest.fixture
def small(pg_url: str) -> Iterator[VectorStorage]:
    base = np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32)
    db, storage = _load(pg_url, base)
    try:
        yield storage
    finally:
        db.close()


def test_tune_needs_more_rows_than_k(pg_url: str) -> None:
    with DbService(pg_url) as db:
        db.initialize()
        storage = VectorStorage(db)
        storage.upsert_many((["a#1", "a#2", "a#3"], np.eye(3, 8, dtype=np.float32)))
        storage.create_index(8, metric="l2")
        with pytest.raises(ShareddbError, match=r"holds 3 embeddings .* k \+ 1 = 11"):
            tune(storage, 8, metric="l2", k=10)


def test_tune_asks_which_index_when_hnsw_and_ivfflat_both_exist(small: VectorStorage) -> None:
    small.create_index(16, method="hnsw", metric="l2")
    small.create_index(16, method="ivfflat", metric="l2", lists=4)

    with pytest.raises(ShareddbError, match=r"several indexes .* pass method="):
        tune(small, 16, metric="l2")


def test_tune_refuses_an_index_that_searches_do_not_use(small: VectorStorage) -> None:
    # An index whose predicate searches never match: the planner can't use it.
    with small._db.connection() as conn:
        conn.execute(
            "CREATE INDEX unusable_idx ON task_embeddings USING hnsw "
            "((embedding::vector(16)) vector_l2_ops) WHERE dimension = 16 AND backend = 'none'"
        )
    assert [i.name for i in small.indexes()] == ["unusable_idx"]

    with pytest.raises(ShareddbError, match=r"use index unusable_idx.*run ANALYZE task_embeddings"):
        tune(small, 16, metric="l2")


def _run_tune(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("tune", "--url", url, "--dimension", "384", *args, timeout=300)


def test_tune_command_prints_the_setting_numpy_confirms(minilm: Loaded) -> None:
    result = _run_tune(minilm.url, "--metric", "cosine", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["parameter"] == "ef_search"
    value = report["value"]
    chosen = next(row for row in report["rows"] if row["value"] == value)
    assert chosen["recall"] >= 0.95
    assert _independent_recall(minilm, TuneResult(**{**report, "rows": ()}), value) >= 0.9


def test_tune_command_with_queries_uses_every_one_of_them(minilm: Loaded) -> None:
    queries_file = MINILM / "queries.npy"
    queries = np.load(queries_file)
    result = _run_tune(
        minilm.url, "--queries", str(queries_file), "--target-recall", "0.99", "--json"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["queries"], report["sample"], report["sample_ids"]) == ("given", 200, [])
    chosen = next(row for row in report["rows"] if row["value"] == report["value"])
    assert chosen["recall"] >= 0.99
    assert _dataset_recall(minilm.storage, queries, report["value"]) == pytest.approx(
        chosen["recall"], abs=1e-9
    )

    text = _run_tune(minilm.url, "--queries", str(queries_file), "--target-recall", "0.99")
    assert text.returncode == 0, text.stderr
    assert "measured on all 200 given queries" in text.stdout
    assert f"use ef_search={report['value']}" in text.stdout


def test_tune_command_refuses_a_bad_queries_file(minilm: Loaded, tmp_path: Path) -> None:
    def saved(name: str, array: Any) -> str:
        path = tmp_path / name
        np.save(path, array, allow_pickle=True)
        return str(path)

    cases = [
        (str(tmp_path / "missing.npy"), "missing.npy does not exist"),
        (str(tmp_path), "is a folder"),
        (saved("objects.npy", np.array([{"a": 1}], dtype=object)), "not a numpy .npy array"),
        (saved("text.npy", np.full((2, 384), "x")), "dtype <U1, not numbers"),
        (saved("flat.npy", np.ones(384, dtype=np.float32)), "shape (384,)"),
        (saved("small.npy", np.ones((5, 128), dtype=np.float32)), "dimension 128"),
    ]
    (tmp_path / "garbage.npy").write_bytes(b"not numpy at all")
    cases.append((str(tmp_path / "garbage.npy"), "not a numpy .npy array"))
    for path, message in cases:
        result = _run_tune(minilm.url, "--queries", path)
        assert result.returncode == 2, (path, result.stdout, result.stderr)
        assert message in result.stderr, (path, result.stderr)
        assert "Traceback" not in result.stderr
    both = _run_tune(minilm.url, "--queries", str(MINILM / "queries.npy"), "--sample", "5")
    assert both.returncode == 2
    assert "with --queries every query is used" in both.stderr


def test_tune_command_exits_1_when_no_index_serves_the_metric(minilm: Loaded) -> None:
    result = _run_tune(minilm.url, "--metric", "l2")
    assert result.returncode == 1
    assert "create_index" in result.stderr
