"""The bench scripts run end to end on tiny synthetic data and write what they promise.

Each script runs as users run it (``python bench/NAME.py …`` in a subprocess) against
the test server. Nothing here asserts a time; the checks are on answers: every client
sees the same rows, so exact searches must reach recall 1.0 and shareddb must return
exactly what the hand-written query returns at the same setting.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from helpers import run_bench

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _report(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    machine = data["machine"]
    assert machine["cpu_count"] >= 1
    assert machine["packages"]["numpy"] and machine["packages"]["psycopg"]
    return data


def _assert_png(path: Path) -> None:
    if _installed("matplotlib"):
        assert path.read_bytes()[:8] == PNG_MAGIC
    else:
        assert not path.exists()


@pytest.mark.postgres
def test_search_bench_runs_every_client_on_the_same_index(
    pg_server_url: str, tmp_path: Path
) -> None:
    result = run_bench(
        "search.py",
        "--dsn",
        pg_server_url,
        "--dataset",
        "synthetic",
        "--n",
        "3000",
        "--dim",
        "16",
        "--queries",
        "12",
        "--metric",
        "l2",
        "--ef-search",
        "10,40",
        "--probes",
        "1,3,8",
        "--lists",
        "3",
        "--repeat",
        "1",
        "--tune-sample",
        "20",
        "--out",
        str(tmp_path),
    )

    assert "| ef_search | client | recall@10 |" in result.stdout
    assert "tune chose ef_search=" in result.stdout
    data = _report(tmp_path / "search-synthetic-3000x16.json")
    assert data["machine"]["server_version"] and data["machine"]["pgvector_version"]
    assert set(data["machine"]["plans"]) == {"hnsw", "ivfflat"}
    rows = [r for r in data["records"] if "client" in r]
    clients = {r["client"] for r in rows}
    if _installed("langchain_postgres"):
        assert clients == {"shareddb", "direct", "langchain-postgres"}
    else:
        assert clients == {"shareddb", "direct"}
        assert "langchain-postgres" in data["skipped"]
    assert "hnsw floor check" not in data["skipped"]
    for method, value in [("hnsw", 10), ("hnsw", 40), ("ivfflat", 1), ("ivfflat", 3)]:
        at = {r["client"]: r for r in rows if r["method"] == method and r["value"] == value}
        # Same SQL on the same index at the same setting: the same answers.
        assert at["shareddb"]["recall"] == at["direct"]["recall"], (method, value)
        assert 0 < at["shareddb"]["p50_ms"] <= at["shareddb"]["p99_ms"]
    # 3 IVFFlat lists: the sweep stops at 3 probes, which scan every list: exact.
    ivf = [r for r in rows if r["method"] == "ivfflat" and r["client"] == "direct"]
    assert [r["value"] for r in ivf] == [1, 3]
    assert ivf[-1]["recall"] == 1.0
    tunes = [r["tune"] for r in data["records"] if "tune" in r]
    assert [t["parameter"] for t in tunes] == ["ef_search", "probes"]
    _assert_png(tmp_path / "search-synthetic-3000x16.png")


def test_sqlite_bench_finds_the_exact_neighbours_with_every_client(tmp_path: Path) -> None:
    result = run_bench(
        "sqlite.py",
        "--sizes",
        "300,700",
        "--dim",
        "24",
        "--queries",
        "8",
        "--repeat",
        "1",
        "--out",
        str(tmp_path),
    )

    assert "| rows | client | recall@10 |" in result.stdout
    data = _report(tmp_path / "sqlite.json")
    rows = [r for r in data["records"] if "client" in r]
    expected = {"shareddb", "numpy"}
    if _installed("sqlite_vec") and (_installed("apsw") or _installed("pysqlite3")):
        expected.add("sqlite-vec")
    else:
        assert "sqlite-vec" in data["skipped"]
    for n in (300, 700):
        at = {r["client"]: r for r in rows if r["n"] == n}
        assert set(at) == expected
        assert all(r["recall"] == 1.0 for r in at.values())


def test_contention_bench_times_every_client_under_load_and_finds_the_exact_neighbours(
    tmp_path: Path,
) -> None:
    result = run_bench(
        "contention.py",
        *("--n", "2000", "--threads", "2", "--busy", "1", "--calls", "2", "--rounds", "2"),
        *("--idle-queries", "4", "--out", str(tmp_path)),
    )

    assert "| client | p50 ms |" in result.stdout
    data = _report(tmp_path / "contention.json")
    at = {r["client"]: r for r in data["records"]}
    assert set(at) == {"shareddb", "numpy 1 thread", "numpy"}
    assert all(r["calls"] == 2 * 2 * 2 for r in at.values())  # rounds x threads x calls
    assert at["shareddb"]["recall"] == 1.0
    assert data["machine"]["blas_limits_unchanged_by_shareddb"] is True


@pytest.mark.postgres
def test_load_bench_measures_every_loader_and_initialize(
    pg_server_url: str, tmp_path: Path
) -> None:
    result = run_bench(
        "load.py",
        "--dsn",
        pg_server_url,
        "--n",
        "300",
        "--dims",
        "16,48",
        "--repeat",
        "1",
        "--build-rows",
        "400",
        "--out",
        str(tmp_path),
    )

    assert "| dim | method | rows/s |" in result.stdout
    data = _report(tmp_path / "load.json")
    loads = {(r["dim"], r["method"]) for r in data["records"] if r["kind"] == "load"}
    methods = {
        "binary COPY (floor)",
        "shareddb upsert_many",
        "COPY to staging + INSERT … ON CONFLICT",
        "executemany INSERT … ON CONFLICT",
        "shareddb upsert_many (all ids exist)",
    }
    if _installed("langchain_postgres"):
        methods.add("langchain-postgres add_embeddings")
    assert loads == {(dim, m) for dim in (16, 48) for m in methods}
    builds = {(r["dim"], r["method"]) for r in data["records"] if r["kind"] == "build"}
    assert builds == {(16, "hnsw"), (16, "ivfflat"), (48, "hnsw"), (48, "ivfflat")}
    (experiment,) = [r for r in data["records"] if r["kind"] == "build_experiment"]
    assert experiment["rows"] == 400 and "USING hnsw" in experiment["index_definition"]
    (init,) = [r for r in data["records"] if r["kind"] == "initialize"]
    assert init["round_trips"] == 1 and init["ddl_statements"] == []


@pytest.mark.postgres
def test_throughput_bench_runs_every_client_at_each_concurrency(
    pg_server_url: str, tmp_path: Path
) -> None:
    result = run_bench(
        "throughput.py",
        "--dsn",
        pg_server_url,
        "--n",
        "600",
        "--concurrency",
        "1,3",
        "--rounds",
        "1",
        "--warmup",
        "0.2",
        "--seconds",
        "0.3",
        "--queries",
        "20",
        "--out",
        str(tmp_path),
    )

    assert "| callers | pool / pgbench -c | client | QPS |" in result.stdout
    data = _report(tmp_path / "throughput.json")
    # The hand-written client sends shareddb's own statement and gets its answers.
    assert data["machine"]["same_sql"] is True
    assert data["machine"]["same_answers"] is True
    expected = {"shareddb threads", "psycopg threads", "psycopg async", "shareddb async"}
    optional = {
        "langchain-postgres async": _installed("langchain_postgres"),
        "pgbench": "pgbench" in data["machine"],
    }
    for client, runs in optional.items():
        if runs:
            expected.add(client)
        else:
            assert client in data["skipped"]
    runs = data["records"]
    assert {(r["client"], r["callers"]) for r in runs} == {
        (client, n) for client in expected for n in (1, 3)
    }
    for run in runs:
        assert run["calls"] > 0 and run["qps"] > 0, run
        assert 0 < run["p50_ms"] <= run["p99_ms"], run
        assert run["pool"] == min(run["callers"], 32)
    ratios = next(t for t in data["tables"] if t["title"].startswith("shareddb ÷ hand-written"))
    assert [row[0] for row in ratios["rows"]] == [1, 3]
    assert all(row[1] > 0 for row in ratios["rows"])  # threads: shareddb ÷ psycopg QPS
    _assert_png(tmp_path / "throughput.png")


def test_bench_scripts_explain_their_options() -> None:
    for script in (
        "search.py",
        "load.py",
        "sqlite.py",
        "contention.py",
        "throughput.py",
        "heartbeat.py",
    ):
        result = run_bench(script, "--help")
        assert "[default:" in result.stdout
