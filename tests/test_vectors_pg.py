"""VectorStorage on PostgreSQL: indexes, recall on real data, plans, settings, round trips.

Recall settings (recall@10 against each dataset's exact ground truth):

* SIFT10K (L2): HNSW m=16, ef_construction=64 at ef_search=100 measured 0.969-1.000
  across builds (parallel HNSW builds vary); IVFFlat lists=10 (rows/1000) at probes=5
  measured 0.999-1.000.
* stdlib-minilm (cosine): HNSW at ef_search=64 measured 0.9995-1.000; IVFFlat lists=20
  at probes=12 measured about 0.99.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from helpers import DATA_DIR, PROJECT_ROOT, fresh_database
from psycopg import sql

from shareddb import DbService, InvalidArgumentError, VectorStorage
from shareddb._engines.postgres import index_build as _index_build
from shareddb._engines.postgres import vector_search
from shareddb._vectors import batches as _vector_batches

pytestmark = pytest.mark.postgres

SIFT = DATA_DIR / "siftsmall"
MINILM = DATA_DIR / "stdlib-minilm"


def read_ivecs(path: Path) -> np.ndarray:
    raw = np.fromfile(path, dtype=np.int32)
    return raw.reshape(-1, int(raw[0]) + 1)[:, 1:].copy()


def read_fvecs(path: Path) -> np.ndarray:
    return read_ivecs(path).view(np.float32)


@pytest.fixture
def db(pg_url: str) -> Iterator[DbService]:
    """An open, initialized DbService on a fresh PostgreSQL database (this module only)."""
    with DbService(pg_url) as service:
        service.initialize()
        yield service


@pytest.fixture(scope="module")
def module_db(pg_server_url: str) -> Iterator[DbService]:
    """One database for the module's read-mostly tests (indexes are built once)."""
    database = fresh_database(pg_server_url)
    url = next(database)
    try:
        with DbService(url) as db:
            db.initialize()
            yield db
    finally:
        next(database, None)


def load(db: DbService, table: str, base: np.ndarray) -> VectorStorage:
    vectors = VectorStorage(db, table=table)
    vectors.create_table()
    vectors.upsert_many(([f"row#{i}" for i in range(len(base))], base))
    return vectors


def recall_at_10(
    vectors: VectorStorage, queries: np.ndarray, truth: np.ndarray, **kwargs: Any
) -> float:
    hits = 0
    for query, expected in zip(queries, truth, strict=True):
        found = {
            int(r.qualified_task_id.split("#")[1]) for r in vectors.search(query, 10, **kwargs)
        }
        hits += len(found & set(expected[:10].tolist()))
    return hits / (10 * len(queries))


def uses_index(plan: str, name: str) -> bool:
    return f"Index Scan using {name} " in plan


@contextmanager
def index_scans(db: DbService) -> Iterator[Any]:
    """A transaction whose planner reads vector indexes even on small tables.

    pgvector costs an HNSW scan that would visit most of a small index like a full
    index scan, so below a few thousand rows the planner rightly prefers an exact
    sequential scan. Without a Sort node available, it must use the index.
    """
    with db.transaction() as conn:
        conn.execute("SET LOCAL enable_sort = off")
        yield conn


# -- recall on real data ---------------------------------------------------------------


@pytest.fixture(scope="module")
def sift() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        read_fvecs(SIFT / "siftsmall_base.fvecs"),
        read_fvecs(SIFT / "siftsmall_query.fvecs"),
        read_ivecs(SIFT / "siftsmall_groundtruth.ivecs"),
    )


@pytest.fixture(scope="module")
def minilm() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        np.load(MINILM / "base.npy"),
        np.load(MINILM / "queries.npy"),
        np.load(MINILM / "groundtruth.npy"),
    )


@pytest.mark.parametrize(
    ("method", "options", "search_options"),
    [
        ("hnsw", {"m": 16, "ef_construction": 64}, {"ef_search": 100}),
        ("ivfflat", {}, {"probes": 5}),
    ],
)
def test_recall_on_sift10k_is_at_least_095(
    module_db: DbService,
    sift: tuple[np.ndarray, np.ndarray, np.ndarray],
    method: str,
    options: dict[str, int],
    search_options: dict[str, int],
) -> None:
    base, queries, truth = sift
    vectors = load(module_db, f"sift_{method}", base)
    name = vectors.create_index(128, method=method, metric="l2", **options)  # type: ignore[arg-type]
    if method == "ivfflat":
        assert vectors.indexes()[0].parameters == {"lists": 10}  # rows / 1000
    assert uses_index(vectors.explain(queries[0], metric="l2", **search_options), name)
    assert recall_at_10(vectors, queries, truth, metric="l2", exact=True) == 1.0
    if method == "hnsw":  # k above the default ef_search (40): ef_search is raised to k
        assert uses_index(vectors.explain(queries[0], 100, metric="l2"), name)
        assert len(vectors.search(queries[0], 100, metric="l2")) == 100
    recall = recall_at_10(vectors, queries, truth, metric="l2", **search_options)
    assert recall >= 0.95, f"{method} recall@10 {recall} with {search_options}"


@pytest.mark.parametrize(
    ("method", "options", "search_options"),
    [
        ("hnsw", {"m": 16, "ef_construction": 64}, {"ef_search": 64}),
        ("ivfflat", {"lists": 20}, {"probes": 12}),
    ],
)
def test_recall_on_stdlib_minilm_is_at_least_095(
    module_db: DbService,
    minilm: tuple[np.ndarray, np.ndarray, np.ndarray],
    method: str,
    options: dict[str, int],
    search_options: dict[str, int],
) -> None:
    base, queries, truth = minilm
    vectors = load(module_db, f"minilm_{method}", base)
    name = vectors.create_index(384, method=method, metric="cosine", **options)  # type: ignore[arg-type]
    assert recall_at_10(vectors, queries, truth, exact=True) == 1.0
    with index_scans(module_db) as conn:  # 1,966 rows: make the planner use the index
        assert uses_index(vectors.explain(queries[0], conn=conn, **search_options), name)
        recall = recall_at_10(vectors, queries, truth, conn=conn, **search_options)
    assert recall >= 0.95, f"{method} recall@10 {recall} with {search_options}"


# -- plans -----------------------------------------------------------------------------


def test_two_dimensions_in_one_table_each_use_their_own_index(module_db: DbService) -> None:
    rng = np.random.default_rng(10)
    vectors = VectorStorage(module_db, table="two_dims")
    vectors.create_table()
    small, large = rng.standard_normal((3000, 16)), rng.standard_normal((3000, 48))
    vectors.upsert_many(([f"a#{i}" for i in range(3000)], small))
    vectors.upsert_many(([f"b#{i}" for i in range(3000)], large))
    name_16 = vectors.create_index(16, metric="l2")
    name_48 = vectors.create_index(48, metric="l2")
    plan_16 = vectors.explain(small[0], metric="l2")
    plan_48 = vectors.explain(large[0], metric="l2")
    assert uses_index(plan_16, name_16) and name_48 not in plan_16
    assert uses_index(plan_48, name_48) and name_16 not in plan_48
    assert "embedding)::vector(16) <->" in plan_16
    hits = vectors.search(large[7], 5, metric="l2")
    assert hits[0].qualified_task_id == "b#7"
    assert all(h.qualified_task_id.startswith("b#") for h in hits)
    exact_plan = vectors.explain(large[0], metric="l2", exact=True)
    assert name_48 not in exact_plan and name_16 not in exact_plan


def test_filtered_search_returns_k_rows_where_a_plain_hnsw_scan_returns_fewer(
    module_db: DbService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vector_search, "EXACT_BELOW", 0)  # the index scan for every filter
    rng = np.random.default_rng(11)
    vectors = VectorStorage(module_db, table="filtered")
    vectors.create_table()
    matrix = rng.standard_normal((4000, 32)).astype(np.float32)
    ids = [f"{'gh' if i % 4 == 0 else 'md'}#{i}" for i in range(4000)]  # a quarter are gh
    vectors.upsert_many((ids, matrix))
    name = vectors.create_index(32, metric="l2")
    query = rng.standard_normal(32).astype(np.float32)
    k = 30
    gh_rows = np.arange(0, 4000, 4)
    exact = set(gh_rows[np.argsort(np.linalg.norm(matrix[gh_rows] - query, axis=1))[:k]].tolist())
    plain = sql.SQL(
        "SELECT qualified_task_id FROM filtered WHERE dimension = 32 AND backend = 'gh' "
        "ORDER BY (embedding::vector(32)) <-> %s LIMIT 30"
    )
    with module_db.transaction() as conn:
        # Without a Sort the planner must read the HNSW index in order.
        conn.execute("SET LOCAL enable_sort = off")
        conn.execute("SET LOCAL hnsw.ef_search = 40")
        assert uses_index(
            "\n".join(r[0] for r in conn.execute(sql.SQL("EXPLAIN ") + plain, (query,))), name
        )
        plain_rows = conn.execute(plain, (query,)).fetchall()
        plan = vectors.explain(query, k, metric="l2", backend="gh", ef_search=40, conn=conn)
        hits = vectors.search(query, k, metric="l2", backend="gh", ef_search=40, conn=conn)
    assert len(plain_rows) < k  # ef_search=40 candidates, a quarter of them gh
    assert uses_index(plan, name) and "relaxed_order" in plan
    assert len(hits) == k
    assert all(h.qualified_task_id.startswith("gh#") for h in hits)
    distances = [h.distance for h in hits]
    assert distances == sorted(distances)  # re-sorted after the relaxed-order scan
    found = {int(h.qualified_task_id.split("#")[1]) for h in hits}
    assert len(found & exact) >= 0.9 * k
    # Our own pooled connection (one statement applying its settings) does the same.
    own_plan = vectors.explain(query, k, metric="l2", backend="gh", ef_search=40)
    own_hits = vectors.search(query, k, metric="l2", backend="gh", ef_search=40)
    assert uses_index(own_plan, name)
    assert {h.qualified_task_id for h in own_hits} == {h.qualified_task_id for h in hits}
    assert [h.distance for h in own_hits] == sorted(h.distance for h in own_hits)


def test_a_3072_dimension_halfvec_index_is_used_by_search(module_db: DbService) -> None:
    rng = np.random.default_rng(12)
    vectors = VectorStorage(module_db, table="wide")
    vectors.create_table()
    matrix = rng.standard_normal((600, 3072)).astype(np.float32)
    vectors.upsert_many(([f"w#{i}" for i in range(600)], matrix))
    name = vectors.create_index(3072)
    (info,) = vectors.indexes()
    assert (info.name, info.dimension, info.halfvec, info.metric) == (name, 3072, True, "cosine")
    with index_scans(module_db) as conn:  # 600 rows: make the planner use the index
        plan = vectors.explain(matrix[0], ef_search=100, conn=conn)
        found = []
        for row in (3, 300, 599):
            query = matrix[row] + 0.01 * rng.standard_normal(3072).astype(np.float32)
            found.append((row, query, vectors.search(query, 10, ef_search=100, conn=conn)))
    assert uses_index(plan, name)
    assert "halfvec(3072)" in plan
    for row, query, hits in found:
        exact = vectors.search(query, 10, exact=True)
        assert hits[0].qualified_task_id == f"w#{row}" == exact[0].qualified_task_id
        assert len({h.qualified_task_id for h in hits} & {e.qualified_task_id for e in exact}) >= 8
        assert hits[0].distance == pytest.approx(exact[0].distance, abs=1e-3)  # half precision


# -- create_index, drop_index, indexes -------------------------------------------------


def test_index_lifecycle(db: DbService) -> None:
    vectors = VectorStorage(db)
    rng = np.random.default_rng(13)
    vectors.upsert_many(([f"md#{i}" for i in range(2500)], rng.standard_normal((2500, 8))))
    name = vectors.create_index(8, m=8, ef_construction=32)
    assert name == "task_embeddings_hnsw_cosine_8_idx"
    assert vectors.create_index(8, m=8, ef_construction=32) == name  # exists: nothing to do
    with pytest.raises(
        InvalidArgumentError, match=r"exists with m=8, ef_construction=32, not m=16"
    ):
        vectors.create_index(8)
    ivf = vectors.create_index(8, method="ivfflat", metric="inner_product")
    ip = vectors.create_index(8, metric="inner_product", concurrently=True)
    infos = {i.name: i for i in vectors.indexes()}
    assert set(infos) == {name, ivf, ip}
    assert infos[name].parameters == {"m": 8, "ef_construction": 32}
    assert (infos[ivf].method, infos[ivf].metric, infos[ivf].parameters) == (
        "ivfflat",
        "inner_product",
        {"lists": 2},  # 2,500 rows / 1000
    )
    assert all(i.size > 0 and i.valid and i.dimension == 8 for i in infos.values())
    vectors.drop_index(ivf)
    vectors.drop_index(ip, concurrently=True)
    assert [i.name for i in vectors.indexes()] == [name]
    with pytest.raises(
        InvalidArgumentError, match="is not a vector index of table task_embeddings"
    ):
        vectors.drop_index("task_embeddings_dimension_backend_idx")
    with (
        pytest.raises(InvalidArgumentError, match="can't run inside a transaction"),
        db.transaction() as c,
    ):
        vectors.create_index(8, metric="l2", concurrently=True, conn=c)
    assert vectors.create_index(5, method="ivfflat") == "task_embeddings_ivfflat_cosine_5_idx"
    assert {i.name: i for i in vectors.indexes()}[
        "task_embeddings_ivfflat_cosine_5_idx"
    ].parameters == {"lists": 1}  # no rows: at least one list


def test_an_index_built_in_a_rolled_back_transaction_is_gone(db: DbService) -> None:
    vectors = VectorStorage(db)
    vectors.upsert("md#1", [1.0, 2.0, 3.0])
    with pytest.raises(RuntimeError), db.transaction() as conn:
        vectors.create_index(3, conn=conn)
        assert len(vectors.indexes(conn=conn)) == 1
        raise RuntimeError
    assert vectors.indexes() == []


def test_create_index_raises_maintenance_work_mem_for_the_build_only(
    db: DbService, caplog: pytest.LogCaptureFixture
) -> None:
    vectors = VectorStorage(db)
    rng = np.random.default_rng(14)
    vectors.upsert_many(([f"md#{i}" for i in range(3000)], rng.standard_normal((3000, 128))))
    notices: list[str] = []
    with caplog.at_level(logging.INFO, logger="shareddb.vectors"), db.transaction() as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        conn.execute("SET LOCAL maintenance_work_mem = '1MB'")
        vectors.create_index(128, metric="l2", conn=conn)
        after = conn.execute("SELECT current_setting('maintenance_work_mem')").fetchone()[0]
    assert after == "1MB"
    assert "raising maintenance_work_mem from 1MB to" in caplog.text
    assert not [n for n in notices if "no longer fits" in n], notices


def test_long_index_builds_log_their_progress(
    db: DbService, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_index_build, "PROGRESS_AFTER", 0.0)
    monkeypatch.setattr(_index_build, "PROGRESS_EVERY", 0.05)
    vectors = VectorStorage(db)
    rng = np.random.default_rng(15)
    vectors.upsert_many(([f"md#{i}" for i in range(6000)], rng.standard_normal((6000, 64))))
    with caplog.at_level(logging.INFO, logger="shareddb.vectors"):
        vectors.create_index(64, ef_construction=128)
    progress = [r.getMessage() for r in caplog.records if "building index" in r.getMessage()]
    assert progress, caplog.text
    assert "task_embeddings_hnsw_cosine_64_idx" in progress[0]
    assert any("built index task_embeddings_hnsw_cosine_64_idx" in r for r in caplog.messages)


# -- settings and round trips ----------------------------------------------------------


def test_search_settings_never_leak_to_the_next_user_of_the_connection(pg_url: str) -> None:
    with DbService(pg_url, max_size=1) as db:
        db.initialize()
        vectors = VectorStorage(db)
        vectors.upsert_many([(f"md#{i}", [float(i), 1.0]) for i in range(50)])
        vectors.create_index(2, metric="l2")
        vectors.search([1.0, 1.0], 5, metric="l2", ef_search=123, probes=7, backend="md")
        vectors.search([1.0, 1.0], 200, metric="l2")  # raises ef_search to k
        with db.connection() as conn:  # the pool's only connection
            conn.execute("SELECT '[1,2]'::vector")  # pgvector loaded in this session
            row = conn.execute(
                "SELECT current_setting('hnsw.ef_search'), current_setting('ivfflat.probes'), "
                "current_setting('hnsw.iterative_scan')"
            ).fetchone()
            assert tuple(row) == ("40", "1", "off")
            conn.execute("SET LOCAL hnsw.ef_search = 55")
            vectors.search([1.0, 1.0], 5, metric="l2", ef_search=99, backend="md", conn=conn)
            assert conn.execute("SHOW hnsw.ef_search").fetchone()[0] == "55"
            # A failing search inside the caller's transaction leaves it usable.
            missing = VectorStorage(db, table="no_such_table")
            with pytest.raises(InvalidArgumentError, match="no_such_table") as raised:
                missing.search([1.0, 1.0], 5, ef_search=10, conn=conn)
            assert isinstance(raised.value.__cause__, psycopg.errors.UndefinedTable)
            assert conn.execute("SHOW hnsw.ef_search").fetchone()[0] == "55"


def count_round_trips(conn: psycopg.Connection[Any], work: Any) -> int:
    """ReadyForQuery messages the server sent while `work()` ran (libpq protocol trace)."""
    with tempfile.TemporaryFile("w+") as trace:
        conn.pgconn.trace(trace.fileno())
        conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
        try:
            work()
        finally:
            conn.pgconn.untrace()
        trace.seek(0)
        return sum(1 for line in trace if "\tReadyForQuery\t" in line)


def test_search_and_single_writes_take_one_round_trip(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every filter takes the index scan here (none is counted as "few rows"), so that the
    # scan's exact fallback runs inside the statement when it comes back short.
    monkeypatch.setattr(vector_search, "EXACT_BELOW", 0)
    with DbService(pg_url, max_size=1) as db:
        db.initialize()
        vectors = VectorStorage(db)
        vectors.upsert_many(
            ([f"md#{i}" for i in range(50)], np.array([[float(i), 1.0] for i in range(50)])),
            metadata=[{"n": i} for i in range(50)],
        )
        vectors.create_index(2, metric="l2")
        vectors.search([1.0, 1.0], 5, backend="md")  # looks up pgvector's version once
        vectors.search_by_id("md#1", metric="l2")  # learns the table's dimensions once
        with db.connection() as held:  # the same connection the next calls get
            pass
        calls = {
            "search": lambda: vectors.search([1.0, 1.0], 5, metric="l2"),
            "search with settings": lambda: vectors.search(
                [1.0, 1.0], 5, metric="l2", ef_search=64, probes=3, backend="md"
            ),
            "upsert": lambda: vectors.upsert("md#new", [2.0, 3.0]),
            "get": lambda: vectors.get("md#3"),
            "delete": lambda: vectors.delete("md#new"),
            "search_by_id": lambda: vectors.search_by_id("md#3", 5, metric="l2", ef_search=40),
            "filtered search with metadata": lambda: vectors.search(
                [1.0, 1.0], 5, metric="l2", where={"n": {"$gte": 0}}, with_metadata=True
            ),
            # The index scan comes back short: its exact fallback runs in the same statement.
            "filtered search, fewer than k rows match": lambda: vectors.search(
                [1.0, 1.0], 5, metric="l2", where={"n": {"$lt": 3}}
            ),
            "get_record": lambda: vectors.get_record("md#3"),
            "stale, 100k ids": lambda: vectors.stale({f"md#{i}": "h" for i in range(100_000)}),
        }
        for what, call in calls.items():
            call()  # a filter's row count is read once, on its first search
            assert count_round_trips(held, call) == 1, what


def test_filters_matching_few_rows_are_searched_exactly_after_one_count(pg_url: str) -> None:
    rows = vector_search.EXACT_BELOW + 500
    rng = np.random.default_rng(5)
    matrix = rng.standard_normal((rows, 8)).astype(np.float32)
    query = rng.standard_normal(8).astype(np.float32)
    with DbService(pg_url, max_size=1) as db:
        db.initialize()
        vectors = VectorStorage(db)
        labels = ["rare" if i % 100 == 0 else "common" for i in range(rows)]
        vectors.upsert_many(
            ([f"md#{i}" for i in range(rows)], matrix), metadata=[{"g": g} for g in labels]
        )
        vectors.create_index(8, metric="l2")
        with db.connection() as held:
            pass
        rare = {"g": "rare"}
        assert count_round_trips(held, lambda: vectors.search(query, 5, where=rare)) == 2
        assert count_round_trips(held, lambda: vectors.search(query, 5, where=rare)) == 1
        found = vectors.search(query, 5, metric="l2", where=rare)
        kept = np.flatnonzero(np.array(labels) == "rare")
        distances = np.linalg.norm(matrix[kept].astype(np.float64) - query, axis=1)
        expected = kept[np.argsort(distances, kind="stable")[:5]]
        assert [r.qualified_task_id for r in found] == [f"md#{e}" for e in expected]
        plan = vectors.explain(query, 5, metric="l2", where=rare)
        assert "hnsw" not in plan and "iterative_scan" not in plan  # an exact scan
        broad = vectors.explain(query, 5, metric="l2", where={"g": "common"})
        assert "iterative_scan = relaxed_order" in broad  # more rows: the index scan


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


def test_ef_search_is_raised_to_k(db: DbService) -> None:
    vectors = VectorStorage(db)
    rng = np.random.default_rng(16)
    vectors.upsert_many(([f"md#{i}" for i in range(1000)], rng.standard_normal((1000, 16))))
    name = vectors.create_index(16, metric="l2")
    query = rng.standard_normal(16)
    raw = (
        "SELECT id FROM task_embeddings WHERE dimension = 16 "
        "ORDER BY (embedding::vector(16)) <-> %s LIMIT 10"
    )
    with db.transaction() as conn:
        conn.execute("SET LOCAL enable_sort = off")  # keep the planner on the HNSW index
        conn.execute("SET LOCAL hnsw.ef_search = 1")
        assert len(conn.execute(raw, (query.astype(np.float32),)).fetchall()) == 1
        hits = vectors.search(query, 10, metric="l2", ef_search=1, conn=conn)
        plan = vectors.explain(query, 10, metric="l2", ef_search=1, conn=conn)
    assert len(hits) == 10
    assert uses_index(plan, name) and "hnsw.ef_search = 10" in plan


# -- concurrent writers ----------------------------------------------------------------


def test_concurrent_bulk_loads_of_overlapping_ids_all_land(db: DbService) -> None:
    rng = np.random.default_rng(17)
    matrix = rng.standard_normal((6000, 16)).astype(np.float32)
    ids = [f"md#{i}" for i in range(6000)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def load(start: int, stop: int) -> None:
        try:
            barrier.wait()
            VectorStorage(db).upsert_many((ids[start:stop], matrix[start:stop]))
        except BaseException as e:
            errors.append(e)

    threads = [
        threading.Thread(target=load, args=(0, 4000)),
        threading.Thread(target=load, args=(2000, 6000)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    vectors = VectorStorage(db)
    assert vectors.count() == 6000
    for i in (0, 1999, 2000, 3999, 4000, 5999):
        assert vectors.get(ids[i]).tobytes() == matrix[i].tobytes()


def test_later_batches_that_repeat_earlier_ids_switch_to_the_upsert_path(
    db: DbService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_vector_batches, "BATCH_ROWS", 5)
    vectors = VectorStorage(db)
    items = [(f"md#{i}", [float(i), 0.0]) for i in range(8)]
    items += [(f"md#{i}", [float(i), 1.0]) for i in range(3, 12)]
    assert vectors.upsert_many(items) == 17
    assert vectors.count() == 12
    assert vectors.get("md#2").tolist() == [2.0, 0.0]
    assert vectors.get("md#5").tolist() == [5.0, 1.0]
    assert vectors.get("md#11").tolist() == [11.0, 1.0]


# -- the benchmark script --------------------------------------------------------------


def test_load_sift_bench_prints_both_loads_and_their_ratio(pg_server_url: str) -> None:
    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "bench" / "load_sift.py"), "--repeat", "1"],
        env={**os.environ, "SHAREDDB_BENCH_URL": pg_server_url, "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "| bare binary COPY (psycopg write_row) |" in result.stdout
    assert "upsert_many((ids, matrix)), empty table" in result.stdout
    assert "rows/s" in result.stdout and "vs bare COPY" in result.stdout
