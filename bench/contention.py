"""SQLite search on a busy machine: shareddb vs numpy with its BLAS held to one thread.

100k x 384 "real-text-like" rows (``_datasets.minilm_mixture``, grown from the in-repo
MiniLM set; its 200 real queries) go into a SQLite file. Then, while ``--busy`` other
processes (busy loops, one per core by default) keep every core busy, ``--threads``
threads search at once, the clients taking turns round by round (every order of them in
turn):

* ``shareddb``: ``VectorStorage.search(q, k)`` (cosine);
* ``numpy 1 thread``: the floor: ``argpartition`` over ``matrix @ q`` on the same
  normalised float32 matrix in memory, with numpy's BLAS held to one thread
  (threadpoolctl, process-wide, only during its own turns);
* ``numpy``: the same with BLAS's default threads: what shareddb's ranking did until it
  stopped calling BLAS's threaded product (the status quo before the fix).

Every call's latency is kept; the table gives each client's p50 and p95 over all calls of
all rounds and the p50 ratio to the floor (target: shareddb <= 1.3 x). Before the load, one
caller alone measures the idle p50 of shareddb and of numpy, interleaved; a client's
"collapse" is its p50 under load over its idle p50. The run also checks that shareddb's
answers are exact (recall@k against a float64 brute force) and that its searches left
numpy's BLAS thread limits as they were.

    python bench/contention.py
    python bench/contention.py --n 20000 --rounds 2 --calls 4
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from _datasets import (
    add_data_dir_arg,
    data_dir,
    exact_neighbours,
    ids_for,
    minilm_mixture,
    recall_at_k,
    row_of,
)
from _report import Report, add_output_args
from _servers import sqlite_folder
from _timing import Latency, time_round_robin, time_threads
from sqlite import NumpyFloor
from threadpoolctl import threadpool_info, threadpool_limits

from shareddb import DbService
from shareddb.vectors import VectorStorage

# A busy loop that ends when this script does, however it ends.
SPIN = """
import os
parent = os.getppid()
while os.getppid() == parent:
    for _ in range(1_000_000):
        pass
"""
FLOOR = "numpy 1 thread"
STATUS_QUO = "numpy"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_output_args(parser)
    add_data_dir_arg(parser, "stdlib-minilm/")
    parser.add_argument("--n", type=int, default=100_000, help="rows [default: %(default)s]")
    parser.add_argument("--k", type=int, default=10, help="neighbours [default: %(default)s]")
    parser.add_argument(
        "--threads", type=int, default=8, help="threads searching at once [default: %(default)s]"
    )
    parser.add_argument(
        "--busy",
        type=int,
        default=os.cpu_count() or 2,
        help="busy-loop processes keeping the cores busy [default: %(default)s, the cores]",
    )
    parser.add_argument(
        "--calls", type=int, default=4, help="searches per thread per turn [default: %(default)s]"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="turns of every client under load [default: %(default)s]",
    )
    parser.add_argument(
        "--idle-queries",
        type=int,
        default=50,
        help="queries of the idle measurement [default: %(default)s]",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed [default: %(default)s]")
    parser.add_argument(
        "--dir", help="folder for the SQLite file [default: a temporary folder]", default=None
    )
    return parser


@contextlib.contextmanager
def busy_processes(count: int) -> Iterator[None]:
    """`count` other processes spinning on the CPU for as long as the block runs."""
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(count)]
    try:
        time.sleep(0.5)  # let the scheduler see them running
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
        for spinner in spinners:
            spinner.wait()


def blas_limits() -> list[tuple[str, int]]:
    return [(info["filepath"], info["num_threads"]) for info in threadpool_info()]


def under_load(
    clients: dict[str, Callable[[np.ndarray], Any]],
    queries: Sequence[np.ndarray],
    args: argparse.Namespace,
) -> tuple[dict[str, list[float]], list[dict[str, float]]]:
    """Every call's seconds per client, and each round's p50 per client."""
    names = list(clients)
    orders = list(itertools.permutations(names))
    seconds: dict[str, list[float]] = {name: [] for name in names}
    rounds: list[dict[str, float]] = []
    for turn in range(args.rounds):
        this_round: dict[str, float] = {}
        for name in orders[turn % len(orders)]:
            limit = threadpool_limits(1, user_api="blas") if name == FLOOR else None
            try:
                got = time_threads(clients[name], queries, args.threads, args.calls)
            finally:
                if limit is not None:
                    limit.restore_original_limits()
            seconds[name] += got
            this_round[name] = statistics.median(got) * 1000
        rounds.append(this_round)
        print(
            f"round {turn + 1}: "
            + ", ".join(f"{name} p50 {ms:.1f} ms" for name, ms in this_round.items()),
            flush=True,
        )
    return seconds, rounds


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = Report("contention", {k: (str(v) if k == "out" else v) for k, v in vars(args).items()})
    report.facts["blas"] = threadpool_info()
    matrix, all_queries = minilm_mixture(data_dir(args.data_dir), args.n, seed=args.seed)
    queries = list(all_queries)
    truth = exact_neighbours(matrix, all_queries, "cosine", args.k, chunk=32)
    with sqlite_folder(args.dir, "contention") as folder:
        path = folder / "contention.db"
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        with DbService(f"sqlite:///{path}") as db:
            db.initialize()
            storage = VectorStorage(db)
            storage.upsert_many((ids_for(args.n), matrix))

            def shareddb(query: np.ndarray) -> list[int]:
                hits = storage.search(query, args.k, metric="cosine")
                return [row_of(hit.qualified_task_id) for hit in hits]

            floor = NumpyFloor(matrix, "cosine", args.k)
            clients = {"shareddb": shareddb, FLOOR: floor.search, STATUS_QUO: floor.search}
            limits_before = blas_limits()
            recall = recall_at_k([shareddb(q) for q in queries], truth, args.k)
            idle = time_round_robin(
                {"shareddb": shareddb, STATUS_QUO: floor.search},
                {name: queries[: args.idle_queries] for name in ("shareddb", STATUS_QUO)},
                1,
            )
            print(
                f"idle, one caller: shareddb p50 {idle['shareddb'].p50_ms:.1f} ms, numpy p50 "
                f"{idle[STATUS_QUO].p50_ms:.1f} ms; shareddb recall@{args.k} {recall:.3f}",
                flush=True,
            )
            with busy_processes(args.busy):
                seconds, rounds = under_load(clients, queries, args)
            report.facts["blas_limits_unchanged_by_shareddb"] = blas_limits() == limits_before
    loaded = {name: Latency.of(s) for name, s in seconds.items()}
    floor_p50 = loaded[FLOOR].p50_ms
    rows: list[list[Any]] = []
    for name, got in loaded.items():
        idle_p50 = idle[name].p50_ms if name in idle else None
        ratios = [r[name] / r[FLOOR] for r in rounds]
        rows.append(
            [
                name,
                got.p50_ms,
                got.p95_ms,
                got.p50_ms / floor_p50,
                statistics.median(ratios),
                idle_p50,
                got.p50_ms / idle_p50 if idle_p50 else None,
            ]
        )
        report.records.append(
            {
                "client": name,
                "n": args.n,
                "dim": int(matrix.shape[1]),
                "threads": args.threads,
                "busy_processes": args.busy,
                "calls": got.calls,
                "p50_ms": got.p50_ms,
                "p95_ms": got.p95_ms,
                "p99_ms": got.p99_ms,
                "p50_vs_floor": got.p50_ms / floor_p50,
                "round_p50_vs_floor_median": statistics.median(ratios),
                "round_p50_ms": [r[name] for r in rounds],
                "idle_p50_ms": idle_p50,
                "recall": recall if name == "shareddb" else None,
            }
        )
    report.table(
        f"SQLite search, {args.n:,} x {matrix.shape[1]}, cosine, k={args.k}: {args.threads} "
        f"threads while {args.busy} busy processes keep the cores busy "
        f"({args.rounds} rounds x {args.threads} threads x {args.calls} calls)",
        [
            "client",
            "p50 ms",
            "p95 ms",
            "p50 / numpy 1 thread",
            "median of rounds' ratios",
            "idle p50 ms",
            "loaded / idle p50",
        ],
        rows,
    )
    report.table(
        "Idle, one caller (interleaved)",
        ["client", "p50 ms", "p95 ms", "vs numpy"],
        [
            [name, got.p50_ms, got.p95_ms, got.p50_ms / idle[STATUS_QUO].p50_ms]
            for name, got in idle.items()
        ],
    )
    print(
        f"\nshareddb recall@{args.k} {recall:.3f}; BLAS thread limits unchanged by shareddb: "
        f"{report.facts['blas_limits_unchanged_by_shareddb']}; target p50 <= 1.3 x "
        f"{FLOOR}: {loaded['shareddb'].p50_ms / floor_p50:.2f} x",
        flush=True,
    )
    report.write(args.out, "contention")
    return 0


if __name__ == "__main__":
    sys.exit(main())
