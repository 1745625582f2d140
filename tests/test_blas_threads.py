"""SQLite search never wakes numpy's BLAS threads and leaves the app's BLAS settings alone.

OpenBLAS splits a large ``matrix @ vector`` across its worker threads and makes the caller
wait for them; on a busy machine that stalls every search (bench/contention.py). The
ranking computes its products without BLAS's threads (``shareddb._vectors.products``):
these tests watch the BLAS worker threads' CPU time and context switches through /proc
while searches run, from one thread and from 8, and check that every product gives the
same numbers as the single-threaded kernel and numpy's float64 answer.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import DATA_DIR, run_in_child
from threadpoolctl import threadpool_info, threadpool_limits

from shareddb import DbService
from shareddb._vectors import products
from shareddb._vectors.products import BLAS_DOT_MAX, HELPER_PREFIX, PART_MIN, row_dots
from shareddb.vectors import VectorStorage

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/task").is_dir(), reason="reads the threads' counters from /proc"
)

# Runs in a fresh interpreter: the threads there right after `import numpy` are BLAS's
# workers (OpenBLAS starts them when it loads), and nothing else in the process runs BLAS.
CHILD = r"""
import json, os, sys, threading, time
import numpy as np

main = threading.get_native_id()
blas_workers = sorted(int(t) for t in os.listdir("/proc/self/task") if int(t) != main)

from threadpoolctl import threadpool_info, threadpool_limits
from shareddb import DbService
from shareddb.vectors import VectorStorage


def counters():
    seen = {}
    for tid in blas_workers:
        stat = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
        status = open(f"/proc/self/task/{tid}/status").read()
        switches = [l.split()[1] for l in status.splitlines() if "ctxt_switches" in l]
        seen[tid] = [stat[11], stat[12], *switches]  # utime, stime, context switches
    return seen


def settled():
    # A worker spins for a while after its last task before it sleeps: wait for that.
    last = counters()
    for _ in range(80):
        time.sleep(0.25)
        now = counters()
        if now == last:
            return now
        last = now
    return None


limits = lambda: [(i["filepath"], i["num_threads"]) for i in threadpool_info()]
limits_before = limits()
rng = np.random.default_rng(7)
short = rng.standard_normal((20_000, 384)).astype(np.float32)  # 7.7M values: BLAS threads it
long = rng.standard_normal((300, 12_000)).astype(np.float32)  # one row: a threaded BLAS dot
with DbService(f"sqlite:///{sys.argv[1]}") as db:
    db.initialize()
    storage = VectorStorage(db)
    storage.upsert_many(([f"s#{i}" for i in range(len(short))], short))
    storage.upsert_many(([f"l#{i}" for i in range(len(long))], long))
    before = settled()
    for matrix in (short, long):
        for metric in ("cosine", "l2", "inner_product"):
            storage.search(matrix[3] + 0.5, 10, metric=metric)

    def caller(t):
        for i in range(4):
            storage.search(short[t * 4 + i], 10)
            storage.search(long[t * 4 + i], 5, metric="l2")

    threads = [threading.Thread(target=caller, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = settled()
print(json.dumps({
    "workers": len(blas_workers), "before": before, "after": after,
    "limits_before": limits_before, "limits_after": limits(),
}))
"""


def test_searches_from_8_threads_never_wake_blas_threads_nor_change_its_limits(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "blas.db")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    if seen["workers"] == 0:
        pytest.skip("numpy's BLAS runs no worker threads on this machine (one CPU?)")
    assert seen["before"] is not None and seen["after"] is not None, "BLAS threads never idle"
    assert seen["after"] == seen["before"], (
        "a search woke numpy's BLAS threads (their CPU time or context switches moved)"
    )
    assert seen["limits_after"] == seen["limits_before"]


def _limits() -> list[tuple[str, int]]:
    return [(i["filepath"], i["num_threads"]) for i in threadpool_info()]


def test_searches_from_8_threads_leave_the_apps_own_blas_limits(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((6000, 64)).astype(np.float32)
    app_choice = threadpool_limits(1, user_api="blas")  # the app's own setting
    try:
        before = _limits()
        with DbService(f"sqlite:///{tmp_path / 'limits.db'}") as db:
            db.initialize()
            storage = VectorStorage(db)
            storage.upsert_many(([f"r#{i}" for i in range(len(rows))], rows))
            threads = [
                threading.Thread(
                    target=lambda t=t: [storage.search(rows[t + i], 5) for i in range(5)]
                )
                for t in range(8)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        assert _limits() == before
    finally:
        app_choice.restore_original_limits()


@pytest.mark.parametrize(
    ("rows", "dim", "dtype"),
    [
        (3 * PART_MIN // 384 + 7, 384, np.float32),  # cut into parts
        (PART_MIN // 12_000 + 50, 12_000, np.float32),  # rows past BLAS_DOT_MAX, in parts
        (26, 384, np.float64),  # the float64 re-ranking
        (0, 384, np.float32),
    ],
)
def test_row_dots_equal_the_one_thread_kernel_and_numpy_float64(
    rows: int, dim: int, dtype: type[np.floating]
) -> None:
    rng = np.random.default_rng(rows)
    matrix = rng.standard_normal((rows, dim)).astype(dtype)
    vector = rng.standard_normal(dim).astype(dtype)
    got = row_dots(matrix, vector)
    one_thread = np.empty_like(got)
    products._row_dots_here(matrix, vector, one_thread)
    assert got.dtype == dtype
    assert np.array_equal(got, one_thread)  # each row's dot doesn't depend on the parts
    exact = matrix.astype(np.float64) @ vector.astype(np.float64)
    assert np.allclose(got, exact, rtol=1e-4, atol=1e-3 * np.sqrt(dim))
    assert dim <= BLAS_DOT_MAX or products.dot(vector, vector) == pytest.approx(
        float(vector.astype(np.float64) @ vector.astype(np.float64)), rel=1e-5
    )


def _brute_force(rows: np.ndarray, query: np.ndarray, metric: str, k: int) -> list[int]:
    r, q = rows.astype(np.float64), query.astype(np.float64)
    if metric == "cosine":
        distance = 1 - (r @ q) / (np.linalg.norm(r, axis=1) * np.linalg.norm(q))
    elif metric == "l2":
        distance = np.linalg.norm(r - q, axis=1)
    else:
        distance = -(r @ q)
    return np.lexsort((np.arange(len(r)), distance))[:k].tolist()  # type: ignore[no-any-return]


@pytest.mark.parametrize("data", ["random", "minilm"])
def test_search_from_8_threads_equals_numpy_float64_brute_force(tmp_path: Path, data: str) -> None:
    rng = np.random.default_rng(11)
    if data == "random":  # large enough to be cut into parts for the helpers
        rows = rng.standard_normal((3 * PART_MIN // 384, 384)).astype(np.float32)
        queries = rng.standard_normal((16, 384)).astype(np.float32)
    else:
        rows = np.load(DATA_DIR / "stdlib-minilm" / "base.npy").astype(np.float32)
        queries = np.load(DATA_DIR / "stdlib-minilm" / "queries.npy")[:16].astype(np.float32)
    ids = [f"r#{i}" for i in range(len(rows))]
    found: dict[tuple[int, str], list[int]] = {}
    with DbService(f"sqlite:///{tmp_path / 'exact.db'}") as db:
        db.initialize()
        storage = VectorStorage(db)
        storage.upsert_many((ids, rows))

        def caller(t: int) -> None:
            for i in range(t, len(queries), 8):
                for metric in ("cosine", "l2", "inner_product"):
                    hits = storage.search(queries[i], 10, metric=metric)  # type: ignore[arg-type]
                    found[i, metric] = [int(h.qualified_task_id[2:]) for h in hits]

        threads = [threading.Thread(target=caller, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(found) == 3 * len(queries)
    for (i, metric), got in found.items():
        assert got == _brute_force(rows, queries[i], metric, 10), (i, metric)


def test_a_forked_child_ranks_with_helpers_of_its_own() -> None:
    rng = np.random.default_rng(5)
    matrix = rng.standard_normal((3 * PART_MIN // 384, 384)).astype(np.float32)
    vector = rng.standard_normal(384).astype(np.float32)
    expected = row_dots(matrix, vector)  # the parent's helpers exist, and are idle now

    def child() -> str:
        got = row_dots(matrix, vector)
        helpers = [t for t in threading.enumerate() if t.name.startswith(HELPER_PREFIX)]
        return f"{np.array_equal(got, expected)} {len(helpers)}"

    equal, helpers = run_in_child(child).split()
    assert equal == "True"
    if products._helpers.cpus > 1:
        assert int(helpers) >= 1, "the child offered its parts to the parent's dead threads"
