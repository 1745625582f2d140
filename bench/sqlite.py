"""Exact search on SQLite: shareddb vs a bare numpy floor vs sqlite-vec, same vectors.

For each size (10k, 100k, 250k x 384 by default) the same seeded Gaussian vectors go into:

* ``shareddb``: a SQLite file through ``VectorStorage.upsert_many``, searched with
  ``VectorStorage.search`` (exact: SQLite has no ANN index);
* ``numpy``: the floor, ``argpartition`` over ``matrix @ q`` on the same float32 matrix held
  in memory (normalised once for cosine; each query normalised per call);
* ``sqlite-vec``: a ``vec0`` virtual table in an in-memory database (its fastest setting),
  loaded through ``apsw`` or ``pysqlite3`` because the stdlib ``sqlite3`` of many Python
  builds cannot load extensions (optional peer).

Every client's answers are checked against an exact float64 brute force (recall@k), and
the timed passes are interleaved. The first shareddb search after a write loads the
matrix from the file: its time is reported apart ("cold").

    python bench/sqlite.py
    python bench/sqlite.py --sizes 10000,100000 --dim 384
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _datasets import METRICS, exact_neighbours, ids_for, recall_at_k, row_of
from _peers import PEERS_HINT, optional_import
from _report import Report, add_output_args
from _servers import sqlite_folder
from _timing import time_round_robin

from shareddb import DbService
from shareddb.vectors import VectorStorage


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_output_args(parser)
    parser.add_argument(
        "--sizes", default="10000,100000,250000", help="rows per run [default: %(default)s]"
    )
    parser.add_argument("--dim", type=int, default=384, help="dimensions [default: %(default)s]")
    parser.add_argument(
        "--metric", choices=METRICS, default="cosine", help="metric [default: %(default)s]"
    )
    parser.add_argument("--queries", type=int, default=100, help="queries [default: %(default)s]")
    parser.add_argument("--k", type=int, default=10, help="neighbours [default: %(default)s]")
    parser.add_argument(
        "--repeat", type=int, default=3, help="timed passes per client [default: %(default)s]"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed [default: %(default)s]")
    parser.add_argument(
        "--dir", help="folder for the SQLite file [default: a temporary folder]", default=None
    )
    return parser


class NumpyFloor:
    """argpartition over matrix @ q: what any exact search in Python costs at least."""

    name = "numpy"

    def __init__(self, matrix: np.ndarray, metric: str, k: int) -> None:
        self.metric, self.k = metric, k
        m = np.ascontiguousarray(matrix, dtype=np.float32)
        if metric == "cosine":
            m = m / np.linalg.norm(m, axis=1, keepdims=True)
        self.matrix = m
        self.squared = (m * m).sum(axis=1) if metric == "l2" else None

    def search(self, query: np.ndarray) -> list[int]:
        q = query
        if self.metric == "cosine":
            q = q / np.linalg.norm(q)
        score = self.matrix @ q
        dist = self.squared - 2 * score if self.squared is not None else -score
        top = np.argpartition(dist, self.k - 1)[: self.k]
        return top[np.argsort(dist[top], kind="stable")].tolist()  # type: ignore[no-any-return]

    def close(self) -> None:
        pass


class ShareddbClient:
    name = "shareddb"

    def __init__(self, storage: VectorStorage, metric: str, k: int) -> None:
        self.storage, self.k = storage, k
        self.metric: Any = metric

    def search(self, query: np.ndarray) -> list[int]:
        hits = self.storage.search(query, self.k, metric=self.metric)
        return [row_of(hit.qualified_task_id) for hit in hits]

    def close(self) -> None:
        pass


VEC_METRIC = {"cosine": "cosine", "l2": "L2", "inner_product": None}


def _extension_sqlite() -> tuple[str, Callable[[], Any]] | None:
    """A SQLite binding that can load extensions: apsw, else pysqlite3."""
    with contextlib.suppress(ImportError):
        import apsw

        def connect_apsw() -> Any:
            conn = apsw.Connection(":memory:")
            conn.enable_load_extension(True)
            return conn

        return "apsw", connect_apsw
    with contextlib.suppress(ImportError):
        import pysqlite3  # type: ignore[import-not-found]

        def connect_pysqlite3() -> Any:
            conn = pysqlite3.connect(":memory:", isolation_level=None)
            conn.enable_load_extension(True)
            return conn

        return "pysqlite3", connect_pysqlite3
    return None


class SqliteVecClient:
    """sqlite-vec's vec0 table (brute force, float32) in an in-memory database."""

    name = "sqlite-vec"

    def __init__(self, connect: Callable[[], Any], dim: int, metric: str, k: int) -> None:
        import sqlite_vec  # type: ignore[import-untyped]

        self.k = k
        self.conn = connect()
        self.conn.load_extension(sqlite_vec.loadable_path())
        self.conn.execute(
            f"CREATE VIRTUAL TABLE vec USING vec0(embedding float[{int(dim)}] "
            f"distance_metric={VEC_METRIC[metric]})"
        )

    def load(self, matrix: np.ndarray) -> float:
        start = time.perf_counter()
        self.conn.execute("BEGIN")
        rows = ((i, row.tobytes()) for i, row in enumerate(matrix.astype(np.float32)))
        if hasattr(self.conn, "executemany"):
            self.conn.executemany("INSERT INTO vec (rowid, embedding) VALUES (?, ?)", rows)
        else:  # apsw
            self.conn.cursor().executemany("INSERT INTO vec (rowid, embedding) VALUES (?, ?)", rows)
        self.conn.execute("COMMIT")
        return len(matrix) / (time.perf_counter() - start)

    def search(self, query: np.ndarray) -> list[int]:
        rows = self.conn.execute(
            "SELECT rowid FROM vec WHERE embedding MATCH ? AND k = ? ORDER BY distance",
            (query.tobytes(), self.k),
        ).fetchall()
        return [int(r[0]) for r in rows]

    def close(self) -> None:
        self.conn.close()


def run_size(
    args: argparse.Namespace,
    report: Report,
    matrix: np.ndarray,
    queries: np.ndarray,
    folder: Path,
    peer: tuple[str, Callable[[], Any]] | None,
) -> list[list[Any]]:
    n, k = len(matrix), args.k
    truth = exact_neighbours(matrix, queries, args.metric, k, chunk=32)
    path = folder / f"bench-{n}.db"
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    rows: list[list[Any]] = []
    with DbService(f"sqlite:///{path}") as db:
        db.initialize()
        storage = VectorStorage(db)
        ids = ids_for(n)
        start = time.perf_counter()
        storage.upsert_many((ids, matrix))
        load_rate = n / (time.perf_counter() - start)
        start = time.perf_counter()
        storage.search(queries[0], k, metric=args.metric)
        cold = time.perf_counter() - start
        clients: list[Any] = [ShareddbClient(storage, args.metric, k)]
        clients.append(NumpyFloor(matrix, args.metric, k))
        peer_load = None
        if peer is not None and VEC_METRIC[args.metric] is not None:
            vec = SqliteVecClient(peer[1], args.dim, args.metric, k)
            peer_load = vec.load(matrix)
            clients.append(vec)
        recall: dict[str, float] = {}
        for client in clients:  # warm-up pass, checked against the exact answer
            found = [client.search(q) for q in queries]
            recall[client.name] = recall_at_k(found, truth, k)
        lat = time_round_robin(
            {client.name: client.search for client in clients},
            {client.name: list(queries) for client in clients},
            args.repeat,
        )
        floor = lat["numpy"].p50_ms
        ours = lat["shareddb"].p50_ms
        for client in clients:
            got = lat[client.name]
            rows.append(
                [
                    n,
                    client.name,
                    recall[client.name],
                    got.p50_ms,
                    got.p95_ms,
                    got.qps,
                    got.p50_ms / floor,
                    got.p50_ms / ours,
                ]
            )
            report.records.append(
                {
                    "n": n,
                    "dim": args.dim,
                    "client": client.name,
                    "recall": recall[client.name],
                    "p50_ms": got.p50_ms,
                    "p95_ms": got.p95_ms,
                    "p99_ms": got.p99_ms,
                    "qps": got.qps,
                    "p50_vs_numpy": got.p50_ms / floor,
                }
            )
        report.records.append(
            {
                "n": n,
                "dim": args.dim,
                "shareddb_load_rows_per_s": load_rate,
                "shareddb_cold_first_search_ms": cold * 1000,
                "sqlite_vec_load_rows_per_s": peer_load,
                "file_bytes": path.stat().st_size,
            }
        )
        print(
            f"{n:,} x {args.dim}: shareddb upsert_many {load_rate:,.0f} rows/s, first search "
            f"after load {cold * 1000:.0f} ms"
            + (f", sqlite-vec insert {peer_load:,.0f} rows/s" if peer_load else ""),
            flush=True,
        )
        for client in clients:
            client.close()
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    report = Report("sqlite", {k: (str(v) if k == "out" else v) for k, v in vars(args).items()})
    peer = None
    if args.no_peers:
        report.skip("sqlite-vec", "--no-peers")
    elif optional_import("sqlite_vec", "the sqlite-vec client") is None:
        report.skip("sqlite-vec", f"not installed ({PEERS_HINT})")
    else:
        peer = _extension_sqlite()
        if peer is None:
            report.skip(
                "sqlite-vec",
                "no SQLite binding here can load extensions; pip install apsw (or "
                f"pysqlite3-binary); {PEERS_HINT}",
            )
        else:
            report.facts["sqlite_vec_binding"] = peer[0]
    if peer is not None and VEC_METRIC[args.metric] is None:
        report.skip("sqlite-vec", f"vec0 has no {args.metric} distance")
    rng = np.random.default_rng(args.seed)
    biggest = max(sizes)
    matrix = rng.standard_normal((biggest, args.dim), dtype=np.float32)
    queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    rows: list[list[Any]] = []
    with sqlite_folder(args.dir, "sqlite") as folder:
        for n in sorted(sizes):
            rows += run_size(args, report, matrix[:n], queries, folder, peer)
    report.table(
        f"Exact search on SQLite, {args.dim} dims, {args.metric}, k={args.k} "
        f"({args.queries} queries x {args.repeat} passes)",
        [
            "rows",
            "client",
            f"recall@{args.k}",
            "p50 ms",
            "p95 ms",
            "QPS",
            "vs numpy",
            "vs shareddb",
        ],
        rows,
    )
    summary = [
        [
            r["n"],
            r["p50_vs_numpy"],
            next(
                (
                    x["p50_ms"] / r["p50_ms"]
                    for x in report.records
                    if x.get("client") == "sqlite-vec" and x["n"] == r["n"]
                ),
                None,
            ),
        ]
        for r in report.records
        if r.get("client") == "shareddb"
    ]
    report.table(
        "shareddb p50 relative to the floor and the peer",
        ["rows", "shareddb / numpy", "sqlite-vec / shareddb"],
        summary,
    )
    report.write(args.out, "sqlite")
    return 0


if __name__ == "__main__":
    sys.exit(main())
