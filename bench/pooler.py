"""Search latency behind PgBouncer in transaction mode, beside a direct connection.

Loads a dataset with ``VectorStorage.upsert_many``, builds an HNSW index, starts a
PgBouncer (transaction mode) in front of the same server and times, interleaved, the
same queries at one ``ef_search`` from four clients:

* ``shareddb via pgbouncer``: ``VectorStorage.search`` with ``pooler="transaction"``
  through PgBouncer (no prepared statements, one more network hop);
* ``shareddb direct``: the same calls on a direct connection (prepared statements on);
* ``shareddb direct, unprepared``: a direct connection with ``pooler="transaction"``,
  which tells the cost of no prepared statements from the cost of the hop;
* ``direct SQL``: shareddb's query written by hand with psycopg on one autocommit
  connection, ``ef_search`` set once per session (the floor).

    python bench/pooler.py --dataset synthetic --n 10000 --dim 384
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import psycopg
from _datasets import add_dataset_args, load_dataset, recall_at_k, row_of
from _report import Report, add_output_args
from _servers import add_server_args, pgbouncer_in_front, scratch_database, server_facts
from _timing import time_round_robin
from pgvector.psycopg import register_vector
from psycopg import sql

from shareddb import DbService
from shareddb.vectors import VectorStorage

OPERATOR = {"cosine": "<=>", "l2": "<->", "inner_product": "<#>"}
TABLE = "task_embeddings"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_dataset_args(parser, n=10_000, dim=384)
    add_server_args(parser)
    add_output_args(parser)
    parser.add_argument("--k", type=int, default=10, help="neighbours [default: %(default)s]")
    parser.add_argument(
        "--ef-search", type=int, default=40, help="HNSW ef_search [default: %(default)s]"
    )
    parser.add_argument(
        "--repeat", type=int, default=5, help="timed passes per client [default: %(default)s]"
    )
    return parser


def direct_sql(url: str, dim: int, metric: str, k: int, ef_search: int) -> Callable[[Any], Any]:
    """shareddb's search written by hand: one autocommit connection, the setting once."""
    conn = psycopg.connect(url, autocommit=True)
    register_vector(conn)
    conn.execute(sql.SQL("SET hnsw.ef_search = {}").format(sql.Literal(ef_search)))
    query = sql.SQL(
        "SELECT qualified_task_id, embedding::vector({dim}) {op} %s AS distance "
        "FROM {table} WHERE dimension = {dim} ORDER BY distance LIMIT {k}"
    ).format(
        dim=sql.Literal(dim),
        op=sql.SQL(OPERATOR[metric]),
        table=sql.Identifier(TABLE),
        k=sql.Literal(k),
    )

    def search(q: np.ndarray) -> list[int]:
        return [row_of(row[0]) for row in conn.execute(query, (q,)).fetchall()]

    return search


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ds = load_dataset(args)
    k, metric = args.k, ds.metric
    truth = ds.ground_truth[:, :k]
    report = Report(
        "pooler",
        {key: (str(v) if key == "out" else v) for key, v in vars(args).items()}
        | {"dataset_name": ds.name, "n": ds.n, "dim": ds.dim, "metric": metric},
    )
    print(f"dataset {ds.name}: {ds.n:,} x {ds.dim} ({metric}), k={k}", flush=True)
    with scratch_database(args.dsn) as url, pgbouncer_in_front(url) as pooled_url:
        report.facts |= server_facts(url)
        with DbService(url) as loader:
            loader.initialize()
            storage = VectorStorage(loader)
            storage.upsert_many((ds.ids(), ds.base))
            storage.create_index(ds.dim, method="hnsw", metric=metric)  # type: ignore[arg-type]
        services = {
            "shareddb via pgbouncer": DbService(pooled_url, pooler="transaction", max_size=2),
            "shareddb direct": DbService(url, max_size=2),
            "shareddb direct, unprepared": DbService(url, pooler="transaction", max_size=2),
        }
        calls: dict[str, Callable[[Any], Any]] = {}
        for name, db in services.items():
            db.open()
            vectors = VectorStorage(db)

            def search(q: np.ndarray, vectors: VectorStorage = vectors) -> list[int]:
                hits = vectors.search(q, k, metric=metric, ef_search=args.ef_search)  # type: ignore[arg-type]
                return [row_of(h.qualified_task_id) for h in hits]

            calls[name] = search
        calls["direct SQL"] = direct_sql(url, ds.dim, metric, k, args.ef_search)
        queries = list(ds.queries)
        recall: dict[str, float] = {}
        for name, call in calls.items():  # warm-up pass, and the answers
            recall[name] = recall_at_k([call(q) for q in queries], truth, k)
        passes = [
            time_round_robin(calls, {name: queries for name in calls}, 1)
            for _ in range(args.repeat)
        ]
        for db in services.values():
            db.close()
    floor = statistics.median(p["direct SQL"].p50_ms for p in passes)
    pooled = statistics.median(p["shareddb via pgbouncer"].p50_ms for p in passes)
    rows = []
    for name in calls:
        p50 = statistics.median(p[name].p50_ms for p in passes)
        p95 = statistics.median(p[name].p95_ms for p in passes)
        rows.append([name, recall[name], p50, p95, p50 / floor, pooled / p50])
        report.records.append(
            {"client": name, "recall": recall[name], "p50_ms": p50, "p95_ms": p95}
        )
    report.table(
        f"HNSW search, ef_search={args.ef_search}, k={k}: medians of {args.repeat} interleaved "
        f"passes of {len(queries)} queries",
        ["client", f"recall@{k}", "p50 ms", "p95 ms", "p50 / direct SQL", "via pgbouncer / this"],
        rows,
    )
    report.write(args.out, f"pooler-{ds.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
