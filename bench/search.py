"""Search latency and recall@k: shareddb vs hand-written psycopg vs langchain-postgres.

Loads a dataset with ``VectorStorage.upsert_many``, builds each index (HNSW, IVFFlat) in
turn, and sweeps ``ef_search`` / ``probes``. At every setting three clients answer the
same queries against the same rows and the same index parameters, interleaved so that
machine noise hits them alike:

* ``shareddb``: ``VectorStorage.search``;
* ``direct``: the same SQL written by hand with psycopg + pgvector on one autocommit
  connection, the search setting applied once per sweep step with a session ``SET`` (the
  floor: nothing cheaper can answer the query);
* ``langchain-postgres``: ``PGVector.similarity_search_with_score_by_vector`` on its own
  tables holding the same vectors under the same index (optional peer).

Then ``shareddb.tuning.tune`` picks the setting for the target recall from stored vectors
alone, and the report shows what that setting gives on the real queries.

    python bench/search.py --dataset siftsmall
    python bench/search.py --dataset stdlib-minilm
    python bench/search.py --dataset synthetic --n 20000 --dim 384
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import psycopg
from _datasets import Dataset, add_dataset_args, load_dataset, recall_at_k, row_of
from _peers import PEERS_HINT, close_langchain, langchain_store, optional_import
from _report import Report, add_output_args, plot_recall_qps
from _servers import add_server_args, scratch_database, server_facts
from _timing import Latency, time_each, time_round_robin
from pgvector.psycopg import register_vector
from psycopg import sql

from shareddb import DbService, ShareddbError
from shareddb.tuning import tune
from shareddb.vectors import VectorStorage

OPERATOR = {"cosine": "<=>", "l2": "<->", "inner_product": "<#>"}
OPCLASS = {"cosine": "vector_cosine_ops", "l2": "vector_l2_ops", "inner_product": "vector_ip_ops"}
SETTING = {"hnsw": "hnsw.ef_search", "ivfflat": "ivfflat.probes"}
KNOB = {"hnsw": "ef_search", "ivfflat": "probes"}
TABLE = "task_embeddings"


class ShareddbClient:
    """`VectorStorage.search`, the search setting passed per call."""

    name = "shareddb"

    def __init__(self, storage: VectorStorage, metric: str, k: int) -> None:
        self.storage, self.k = storage, k
        self.metric: Any = metric
        self.options: dict[str, Any] = {}

    def configure(self, method: str, value: int) -> None:
        self.options = {KNOB[method]: value}

    def search(self, query: np.ndarray) -> list[int]:
        hits = self.storage.search(query, self.k, metric=self.metric, **self.options)
        return [row_of(hit.qualified_task_id) for hit in hits]

    def close(self) -> None:
        pass


class DirectClient:
    """The floor: shareddb's query written by hand, one connection, one round trip a query."""

    name = "direct"

    def __init__(self, url: str, dim: int, metric: str, k: int) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        register_vector(self.conn)
        # The expression and predicate of shareddb's partial expression index, so the
        # planner picks the same index; dimension and k are literals as in shareddb.
        self.query = sql.SQL(
            "SELECT qualified_task_id, embedding::vector({dim}) {op} %s AS distance "
            "FROM {table} WHERE dimension = {dim} ORDER BY distance LIMIT {k}"
        ).format(
            dim=sql.Literal(dim),
            op=sql.SQL(OPERATOR[metric]),
            table=sql.Identifier(TABLE),
            k=sql.Literal(k),
        )

    def configure(self, method: str, value: int) -> None:
        self.conn.execute(
            sql.SQL("SET {} = {}").format(
                sql.SQL(SETTING[method]),
                sql.Literal(value),
            )
        )

    def search(self, query: np.ndarray) -> list[int]:
        rows = self.conn.execute(self.query, (query,)).fetchall()
        return [row_of(row[0]) for row in rows]

    def explain(self, query: np.ndarray) -> str:
        plan = self.conn.execute(sql.SQL("EXPLAIN ") + self.query, (query,)).fetchall()
        return "\n".join(str(row[0]) for row in plan)

    def close(self) -> None:
        self.conn.close()


class LangchainClient:
    """langchain-postgres PGVector over its own tables, with the same vectors and index."""

    name = "langchain-postgres"

    def __init__(self, url: str, dim: int, metric: str, k: int) -> None:
        self.url, self.dim, self.metric, self.k = url, dim, metric, k
        self.store = langchain_store(url, metric)
        self.lists: list[list[float]] = []

    def load(self, ids: list[str], matrix: np.ndarray, batch: int = 1000) -> float:
        """Add the rows with add_embeddings; rows/s."""
        start = time.perf_counter()
        for lo in range(0, len(ids), batch):
            chunk = matrix[lo : lo + batch]
            self.store.add_embeddings(
                texts=[""] * len(chunk), embeddings=chunk.tolist(), ids=ids[lo : lo + batch]
            )
        rate = len(ids) / (time.perf_counter() - start)
        # Untyped column as langchain creates it; type it so an index can cover it.
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(
                sql.SQL(
                    "ALTER TABLE langchain_pg_embedding ALTER COLUMN embedding TYPE vector({})"
                ).format(sql.Literal(self.dim))
            )
        return rate

    def create_index(self, method: str, options: dict[str, int]) -> float:
        with_ = sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(key), sql.Literal(value))
            for key, value in options.items()
        )
        statement = sql.SQL(
            "CREATE INDEX bench_langchain_idx ON langchain_pg_embedding "
            "USING {} (embedding {}) WITH ({})"
        ).format(
            sql.SQL(method),
            sql.SQL(OPCLASS[self.metric]),
            with_,
        )
        with psycopg.connect(self.url, autocommit=True) as conn:
            start = time.perf_counter()
            conn.execute(statement)
            seconds = time.perf_counter() - start
            conn.execute("ANALYZE langchain_pg_embedding")
        return seconds

    def drop_index(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("DROP INDEX IF EXISTS bench_langchain_idx")

    def configure(self, method: str, value: int) -> None:
        close_langchain(self.store)
        self.store = langchain_store(self.url, self.metric, settings={SETTING[method]: str(value)})

    def search(self, query: list[float]) -> list[int]:
        hits = self.store.similarity_search_with_score_by_vector(query, self.k)
        return [row_of(str(doc.id)) for doc, _score in hits]

    def close(self) -> None:
        close_langchain(self.store)


def parse_ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_dataset_args(parser, n=10_000, dim=384)
    add_server_args(parser)
    add_output_args(parser)
    parser.add_argument("--k", type=int, default=10, help="neighbours [default: %(default)s]")
    parser.add_argument(
        "--methods", default="hnsw,ivfflat", help="indexes to bench [default: %(default)s]"
    )
    parser.add_argument("--m", type=int, default=16, help="HNSW m [default: %(default)s]")
    parser.add_argument(
        "--ef-construction",
        type=int,
        default=64,
        help="HNSW ef_construction [default: %(default)s]",
    )
    parser.add_argument(
        "--lists",
        type=int,
        default=None,
        help="IVFFlat lists [default: sqrt(rows), as ann-benchmarks does; 0 = shareddb's choice]",
    )
    parser.add_argument(
        "--ef-search",
        default="10,20,40,80,120,200,400",
        help="ef_search values to sweep [default: %(default)s]",
    )
    parser.add_argument(
        "--probes", default="1,2,4,8,16,32", help="probes values to sweep [default: %(default)s]"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="timed passes per client [default: %(default)s]"
    )
    parser.add_argument(
        "--target-recall", type=float, default=0.95, help="for tune() [default: %(default)s]"
    )
    parser.add_argument(
        "--tune-sample", type=int, default=100, help="tune() sample [default: %(default)s]"
    )
    return parser


def sweep(
    clients: Sequence[Any],
    queries: dict[str, Sequence[Any]],
    truth: np.ndarray,
    k: int,
    method: str,
    value: int,
    repeat: int,
) -> dict[str, dict[str, Any]]:
    """Recall and latency of every client at one setting, the clients taking turns."""
    recall: dict[str, float] = {}
    for client in clients:
        client.configure(method, value)
        qs = queries[client.name]
        _, found = time_each(client.search, qs)  # warm-up pass, and the answers
        recall[client.name] = recall_at_k(found, truth, k)
    latency = time_round_robin(
        {client.name: client.search for client in clients},
        {client.name: queries[client.name] for client in clients},
        repeat,
    )
    return {name: {"recall": recall[name], "latency": latency[name]} for name in latency}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ds = load_dataset(args)
    k = args.k
    truth = ds.ground_truth[:, :k]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    report = Report(
        "search",
        {key: (str(v) if key == "out" else v) for key, v in vars(args).items()}
        | {"dataset_name": ds.name, "n": ds.n, "dim": ds.dim, "metric": ds.metric},
    )
    print(
        f"dataset {ds.name}: {ds.n:,} x {ds.dim} ({ds.metric}), {len(ds.queries)} queries, k={k}",
        flush=True,
    )
    series: dict[str, dict[str, list[tuple[float, float, str]]]] = {}
    with scratch_database(args.dsn) as url:
        report.facts |= server_facts(url)
        with DbService(url, min_size=1, max_size=2) as db:
            db.initialize()
            storage = VectorStorage(db)
            ids = ds.ids()
            start = time.perf_counter()
            storage.upsert_many((ids, ds.base))
            load_rate = ds.n / (time.perf_counter() - start)
            stored = storage.count(dimension=ds.dim)
            if stored != ds.n:
                raise SystemExit(f"upsert_many stored {stored:,} of {ds.n:,} rows; stopping")
            with db.connection() as conn:  # statistics, as autovacuum would gather them
                conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(TABLE)))
            clients: list[Any] = [
                ShareddbClient(storage, ds.metric, k),
                DirectClient(url, ds.dim, ds.metric, k),
            ]
            loads = [["shareddb upsert_many", load_rate]]
            peer = None
            if args.no_peers:
                report.skip("langchain-postgres", "--no-peers")
            elif optional_import("langchain_postgres", "the langchain-postgres client") is None:
                report.skip("langchain-postgres", f"not installed ({PEERS_HINT})")
            else:
                peer = LangchainClient(url, ds.dim, ds.metric, k)
                loads.append(["langchain-postgres add_embeddings", peer.load(ids, ds.base)])
                clients.append(peer)
            report.table("Load (rows/s)", ["client", "rows/s"], loads)
            queries: dict[str, Sequence[Any]] = {
                "shareddb": list(ds.queries),
                "direct": list(ds.queries),
                "langchain-postgres": ds.queries.tolist(),
            }
            for method in methods:
                run_method(args, report, storage, clients, peer, queries, truth, ds, method, series)
            for client in clients:
                client.close()
    summarize(report, methods)
    stem = f"search-{ds.name}"
    report.write(args.out, stem)
    plot_recall_qps(
        args.out / f"{stem}.png",
        series,
        f"{ds.name} ({ds.n:,} x {ds.dim}, {ds.metric}), k={k}: recall vs QPS",
    )
    return 0


def run_method(
    args: argparse.Namespace,
    report: Report,
    storage: VectorStorage,
    clients: list[Any],
    peer: LangchainClient | None,
    queries: dict[str, Sequence[Any]],
    truth: np.ndarray,
    ds: Dataset,
    method: str,
    series: dict[str, dict[str, list[tuple[float, float, str]]]],
) -> None:
    k = len(truth[0])
    if method == "hnsw":
        options: dict[str, Any] = {"m": args.m, "ef_construction": args.ef_construction}
    elif args.lists is None:
        options = {"lists": max(1, round(ds.n**0.5))}
    else:
        options = {"lists": args.lists or None}
    start = time.perf_counter()
    name = storage.create_index(
        ds.dim, method=cast(Any, method), metric=cast(Any, ds.metric), **options
    )
    build = time.perf_counter() - start
    info = next(i for i in storage.indexes() if i.name == name)
    peer_options = {key: int(v) for key, v in _index_parameters(info).items()}
    builds = [["shareddb create_index", build, _describe(peer_options)]]
    if peer is not None:
        builds.append(
            ["langchain-postgres CREATE INDEX", peer.create_index(method, peer_options), ""]
        )
    report.table(f"{method}: build (s)", ["client", "seconds", "parameters"], builds)
    direct = next(cl for cl in clients if cl.name == "direct")
    plan = direct.explain(ds.queries[0])
    report.facts.setdefault("plans", {})[method] = plan
    if name not in plan:
        report.skip(f"{method} floor check", f"the direct query does not use {name}:\n{plan}")
    values = parse_ints(args.ef_search if method == "hnsw" else args.probes)
    if method == "ivfflat":
        values = [v for v in values if v <= peer_options.get("lists", max(values))]
    rows: list[list[Any]] = []
    for value in values:
        results = sweep(clients, queries, truth, k, method, value, args.repeat)
        floor = results["direct"]["latency"].p50_ms
        for client, got in results.items():
            lat: Latency = got["latency"]
            rows.append(
                [
                    value,
                    client,
                    got["recall"],
                    lat.p50_ms,
                    lat.p95_ms,
                    lat.p99_ms,
                    lat.qps,
                    lat.p50_ms / floor,
                    lat.cpu_us,
                ]
            )
            report.records.append(
                {
                    "method": method,
                    "parameter": KNOB[method],
                    "value": value,
                    "client": client,
                    "recall": got["recall"],
                    "p50_ms": lat.p50_ms,
                    "p95_ms": lat.p95_ms,
                    "p99_ms": lat.p99_ms,
                    "qps": lat.qps,
                    "p50_vs_direct": lat.p50_ms / floor,
                    "client_cpu_us": lat.cpu_us,
                }
            )
            panel = f"{method} ({_describe(peer_options)}), labels: {KNOB[method]}"
            series.setdefault(panel, {}).setdefault(client, []).append(
                (got["recall"], lat.qps, str(value))
            )
    report.table(
        f"{method} ({_describe(peer_options)}): sweep of {KNOB[method]}",
        [
            KNOB[method],
            "client",
            f"recall@{k}",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "QPS",
            "p50 / direct",
            "client CPU µs",
        ],
        rows,
    )
    if args.target_recall > 0:
        run_tune(args, report, storage, clients[0], queries, truth, ds, method)
    storage.drop_index(name)
    if peer is not None:
        peer.drop_index()


def run_tune(
    args: argparse.Namespace,
    report: Report,
    storage: VectorStorage,
    shareddb_client: ShareddbClient,
    queries: dict[str, Sequence[Any]],
    truth: np.ndarray,
    ds: Dataset,
    method: str,
) -> None:
    k = len(truth[0])
    start = time.perf_counter()
    try:
        result = tune(
            storage,
            ds.dim,
            metric=ds.metric,
            target_recall=args.target_recall,
            k=k,
            sample=min(args.tune_sample, ds.n - 1),
        )
    except ShareddbError as e:
        report.skip(f"{method} tune", str(e))
        return
    took = time.perf_counter() - start
    rows = [[r.value, r.recall, r.p50_ms, r.p95_ms] for r in result.rows]
    report.table(
        f"{method}: tune(target_recall={args.target_recall}) on {result.sample} stored vectors "
        f"({took:.1f} s)",
        [result.parameter, f"recall@{k} (sample)", "p50 ms", "p95 ms"],
        rows,
    )
    real = None
    if result.value is not None:
        shareddb_client.configure(method, result.value)
        qs = queries["shareddb"]
        _, found = time_each(shareddb_client.search, qs)
        real = recall_at_k(found, truth, k)
        print(
            f"tune chose {result.parameter}={result.value}: recall@{k} on the dataset's own "
            f"queries {real:.3f} (target {args.target_recall})",
            flush=True,
        )
    else:
        print(f"tune found no {result.parameter} reaching {args.target_recall}", flush=True)
    report.records.append(
        {
            "method": method,
            "tune": {
                "parameter": result.parameter,
                "value": result.value,
                "sample_rows": [
                    {"value": r.value, "recall": r.recall, "p50_ms": r.p50_ms} for r in result.rows
                ],
                "recall_on_queries": real,
                "seconds": took,
            },
        }
    )


def _index_parameters(info: Any) -> dict[str, Any]:
    params = getattr(info, "parameters", None) or {}
    return {key: v for key, v in dict(params).items() if key in ("m", "ef_construction", "lists")}


def _describe(options: dict[str, int]) -> str:
    return ", ".join(f"{key}={v}" for key, v in options.items())


def summarize(report: Report, methods: list[str]) -> None:
    """Per index, over the sweep: each client's p50 and client CPU relative to direct's."""
    rows: list[list[Any]] = []
    for method in methods:
        recs = [r for r in report.records if r.get("method") == method and "client" in r]
        direct_cpu = {r["value"]: r["client_cpu_us"] for r in recs if r["client"] == "direct"}
        for client in ("shareddb", "langchain-postgres"):
            mine = [r for r in recs if r["client"] == client]
            if not mine:
                continue
            ratios = [r["p50_vs_direct"] for r in mine]
            extra_cpu = [r["client_cpu_us"] - direct_cpu[r["value"]] for r in mine]
            at_40 = next((r["p50_vs_direct"] for r in mine if r["value"] == 40), None)
            rows.append(
                [
                    method,
                    client,
                    statistics.median(ratios),
                    min(ratios),
                    max(ratios),
                    at_40 if method == "hnsw" else None,
                    statistics.median(extra_cpu),
                ]
            )
    if rows:
        report.table(
            "p50 relative to the direct-psycopg floor, over the sweep",
            [
                "index",
                "client",
                "median",
                "min",
                "max",
                "at ef_search=40",
                "extra client CPU µs / query",
            ],
            rows,
        )


if __name__ == "__main__":
    sys.exit(main())
