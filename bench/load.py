"""Load throughput and index build time on PostgreSQL, shareddb beside the ways people load.

For each dimension (384 and 1,536 by default) the same rows go into an empty embeddings
table, repeated and interleaved, through:

* ``shareddb upsert_many``: ``VectorStorage.upsert_many((ids, matrix))``;
* ``binary COPY``: a bare ``COPY … FROM STDIN (FORMAT BINARY)`` of the same rows into the
  same table, written by hand with psycopg (the floor: no upsert semantics at all);
* ``COPY to staging``: the naive upsert, binary COPY into a temporary table and one
  ``INSERT … SELECT … ON CONFLICT DO UPDATE``;
* ``executemany``: ``INSERT … ON CONFLICT DO UPDATE`` through psycopg's ``executemany``;
* ``langchain-postgres``: ``PGVector.add_embeddings`` in batches of 1,000 (optional peer);

then ``upsert_many`` again over rows that all exist (the update path), and the build time
of each index method on the loaded rows. ``--build-rows`` runs the HNSW build experiment:
``create_index`` on a server left at its default ``maintenance_work_mem`` against the same
``CREATE INDEX`` by hand after ``SET maintenance_work_mem = '1GB'``. Last, it counts the
round trips ``initialize()`` makes on an up-to-date database (from libpq's protocol trace).

    python bench/load.py
    python bench/load.py --dims 384 --n 5000 --build-rows 0
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import psycopg
from _datasets import ids_for
from _peers import PEERS_HINT, close_langchain, langchain_store, optional_import
from _report import Report, add_output_args
from _servers import add_server_args, scratch_database, server_facts
from pgvector.psycopg import register_vector
from psycopg import sql

from shareddb import DbService
from shareddb.vectors import VectorStorage

TABLE = "task_embeddings"
OPCLASS = {"cosine": "vector_cosine_ops", "l2": "vector_l2_ops", "inner_product": "vector_ip_ops"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_server_args(parser)
    add_output_args(parser)
    parser.add_argument(
        "--n", type=int, default=10_000, help="rows per load [default: %(default)s]"
    )
    parser.add_argument(
        "--dims", default="384,1536", help="dimensions to load [default: %(default)s]"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="loads per method (median) [default: %(default)s]"
    )
    parser.add_argument(
        "--methods", default="hnsw,ivfflat", help="index builds to time [default: %(default)s]"
    )
    parser.add_argument(
        "--build-rows",
        type=int,
        default=100_000,
        help="rows x 384 for the maintenance_work_mem build experiment; 0 skips it "
        "[default: %(default)s]",
    )
    parser.add_argument(
        "--build-mem",
        default="1GB",
        help="maintenance_work_mem of the hand-sized build [default: %(default)s]",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed [default: %(default)s]")
    return parser


class Loaders:
    """Each way of loading (ids, matrix) into an emptied table; each returns its seconds."""

    def __init__(self, url: str, storage: VectorStorage, peer: Any | None) -> None:
        self.url = url
        self.storage = storage
        self.peer = peer
        self.conn = psycopg.connect(url, autocommit=True)
        register_vector(self.conn)

    def close(self) -> None:
        self.conn.close()

    def empty(self) -> None:
        self.conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(TABLE)))
        if self.peer is not None:
            self.conn.execute("TRUNCATE langchain_pg_embedding")
        self.conn.execute("CHECKPOINT")  # each load starts from the same clean state

    def shareddb(self, ids: list[str], matrix: np.ndarray) -> float:
        start = time.perf_counter()
        self.storage.upsert_many((ids, matrix))
        return time.perf_counter() - start

    def copy(self, ids: list[str], matrix: np.ndarray) -> float:
        """The floor: bare binary COPY of the rows, one transaction."""
        dim = matrix.shape[1]
        start = time.perf_counter()
        with (
            self.conn.transaction(),
            self.conn.cursor() as cur,
            cur.copy(
                sql.SQL(
                    "COPY {} (qualified_task_id, backend, dimension, embedding) "
                    "FROM STDIN WITH (FORMAT BINARY)"
                ).format(sql.Identifier(TABLE))
            ) as copy,
        ):
            copy.set_types(["text", "text", "int4", "vector"])
            for qid, row in zip(ids, matrix, strict=True):
                copy.write_row((qid, "bench", dim, row))
        return time.perf_counter() - start

    def staging(self, ids: list[str], matrix: np.ndarray) -> float:
        """The naive upsert: binary COPY into a temporary table, then INSERT … ON CONFLICT."""
        dim = matrix.shape[1]
        start = time.perf_counter()
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute(
                "CREATE TEMPORARY TABLE bench_staging (qualified_task_id text, backend text, "
                "dimension integer, embedding vector) ON COMMIT DROP"
            )
            with cur.copy(
                "COPY bench_staging (qualified_task_id, backend, dimension, embedding) "
                "FROM STDIN WITH (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["text", "text", "int4", "vector"])
                for qid, row in zip(ids, matrix, strict=True):
                    copy.write_row((qid, "bench", dim, row))
            cur.execute(
                sql.SQL(
                    "INSERT INTO {} (qualified_task_id, backend, dimension, embedding) "
                    "SELECT qualified_task_id, backend, dimension, embedding FROM bench_staging "
                    "ON CONFLICT (qualified_task_id) DO UPDATE SET "
                    "embedding = EXCLUDED.embedding, backend = EXCLUDED.backend, "
                    "updated_at = now()"
                ).format(sql.Identifier(TABLE))
            )
        return time.perf_counter() - start

    def executemany(self, ids: list[str], matrix: np.ndarray) -> float:
        dim = matrix.shape[1]
        statement = sql.SQL(
            "INSERT INTO {} (qualified_task_id, backend, dimension, embedding) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (qualified_task_id) DO UPDATE SET "
            "embedding = EXCLUDED.embedding, dimension = EXCLUDED.dimension, "
            "backend = EXCLUDED.backend, updated_at = now()"
        ).format(sql.Identifier(TABLE))
        start = time.perf_counter()
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.executemany(
                statement, [(qid, "bench", dim, row) for qid, row in zip(ids, matrix, strict=True)]
            )
        return time.perf_counter() - start

    def langchain(self, ids: list[str], matrix: np.ndarray, batch: int = 1000) -> float:
        assert self.peer is not None
        start = time.perf_counter()
        for lo in range(0, len(ids), batch):
            chunk = matrix[lo : lo + batch]
            self.peer.add_embeddings(
                texts=[""] * len(chunk), embeddings=chunk.tolist(), ids=ids[lo : lo + batch]
            )
        return time.perf_counter() - start


def load_rates(
    loaders: Loaders, ids: list[str], matrix: np.ndarray, repeat: int
) -> dict[str, float]:
    """Median rows/s of each method, the methods interleaved within each repetition."""
    methods: dict[str, Callable[[list[str], np.ndarray], float]] = {
        "binary COPY (floor)": loaders.copy,
        "shareddb upsert_many": loaders.shareddb,
        "COPY to staging + INSERT … ON CONFLICT": loaders.staging,
        "executemany INSERT … ON CONFLICT": loaders.executemany,
    }
    if loaders.peer is not None:
        methods["langchain-postgres add_embeddings"] = loaders.langchain
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeat):
        for name, load in methods.items():
            loaders.empty()
            seconds[name].append(load(ids, matrix))
    # The update path: every id exists already.
    loaders.empty()
    loaders.shareddb(ids, matrix)
    seconds["shareddb upsert_many (all ids exist)"] = [
        loaders.shareddb(ids, matrix) for _ in range(repeat)
    ]
    return {name: len(ids) / statistics.median(s) for name, s in seconds.items()}


def time_builds(
    storage: VectorStorage, dim: int, methods: Sequence[str]
) -> list[tuple[str, str, float]]:
    rows = []
    for method in methods:
        start = time.perf_counter()
        name = storage.create_index(dim, method=cast(Any, method), metric="cosine")
        took = time.perf_counter() - start
        info = next(i for i in storage.indexes() if i.name == name)
        rows.append((method, _describe(info), took))
        storage.drop_index(name)
    return rows


def _describe(info: Any) -> str:
    params = getattr(info, "parameters", None) or {}
    return ", ".join(f"{k}={v}" for k, v in dict(params).items())


def build_experiment(
    url: str, storage: VectorStorage, rows: int, mem: str, seed: int
) -> dict[str, Any]:
    """HNSW build of rows x 384: create_index at the server's defaults vs a hand-sized build."""
    dim = 384
    rng = np.random.default_rng(seed + 1)
    matrix = rng.standard_normal((rows, dim), dtype=np.float32)
    ids = ids_for(rows)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(TABLE)))
        default_mem = str(conn.execute("SHOW maintenance_work_mem").fetchone()[0])  # type: ignore[index]
    storage.upsert_many((ids, matrix))
    del matrix
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
    start = time.perf_counter()
    name = storage.create_index(dim, method="hnsw", metric="cosine")
    library = time.perf_counter() - start
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_get_indexdef(%s::regclass)", (name,)).fetchone()
        assert row is not None
        definition = str(row[0])
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
        conn.execute("CHECKPOINT")
        conn.execute(sql.SQL("SET maintenance_work_mem = {}").format(sql.Literal(mem)))
        start = time.perf_counter()
        conn.execute(definition)
        by_hand = time.perf_counter() - start
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
    return {
        "rows": rows,
        "dim": dim,
        "server_maintenance_work_mem": default_mem,
        "create_index_seconds": library,
        "hand_sized_seconds": by_hand,
        "hand_sized_maintenance_work_mem": mem,
        "ratio": library / by_hand,
        "index_definition": definition,
    }


def initialize_round_trips(url: str) -> dict[str, Any]:
    """Count the protocol messages `initialize()` sends on an up-to-date database."""
    with DbService(url, min_size=1, max_size=1) as db:
        pool = db.get_sql()
        with tempfile.TemporaryDirectory() as folder:
            trace_path = Path(folder) / "trace"
            with open(trace_path, "w") as trace:
                with pool.connection() as conn:  # type: ignore[union-attr]
                    conn.pgconn.trace(trace.fileno())
                start = time.perf_counter()
                db.initialize()
                took = time.perf_counter() - start
                with pool.connection() as conn:  # type: ignore[union-attr]
                    conn.pgconn.untrace()
            text = trace_path.read_text(errors="replace")
    statements: list[str] = []
    round_trips = 0
    for line in text.splitlines():
        fields = line.split("\t", 4)
        if len(fields) < 4:
            continue
        direction, message = fields[1], fields[3]
        body = fields[4].strip() if len(fields) > 4 else ""
        if direction == "B" and message == "ReadyForQuery":
            round_trips += 1
        elif direction == "F" and message == "Query":
            statements.append(body[1:-1])
        elif direction == "F" and message == "Parse":
            found = re.match(r'"[^"]*" "(.*)"( \d+)*$', body)
            statements.append(found.group(1) if found else body)
    ddl = [s for s in statements if re.match(r"\s*(CREATE|ALTER|DROP)\b", s, re.IGNORECASE)]
    return {
        "round_trips": round_trips,
        "statements": statements,
        "ddl_statements": ddl,
        "seconds": took,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    dims = [int(d) for d in args.dims.split(",") if d.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    report = Report("load", {k: (str(v) if k == "out" else v) for k, v in vars(args).items()})
    with scratch_database(args.dsn) as url:
        report.facts |= server_facts(url)
        with DbService(url, min_size=1, max_size=2) as db:
            db.initialize()
            storage = VectorStorage(db)
            peer = None
            if args.no_peers:
                report.skip("langchain-postgres", "--no-peers")
            elif optional_import("langchain_postgres", "the langchain-postgres loader"):
                peer = langchain_store(url, "cosine")
            else:
                report.skip("langchain-postgres", f"not installed ({PEERS_HINT})")
            loaders = Loaders(url, storage, peer)
            rng = np.random.default_rng(args.seed)
            load_rows: list[list[Any]] = []
            build_rows: list[list[Any]] = []
            for dim in dims:
                matrix = rng.standard_normal((args.n, dim), dtype=np.float32)
                ids = ids_for(args.n)
                rates = load_rates(loaders, ids, matrix, args.repeat)
                floor = rates["binary COPY (floor)"]
                ours = rates["shareddb upsert_many"]
                for name, rate in rates.items():
                    load_rows.append([dim, name, rate, rate / floor, ours / rate])
                    report.records.append(
                        {"kind": "load", "dim": dim, "method": name, "rows_per_s": rate}
                    )
                for method, params, took in time_builds(storage, dim, methods):
                    build_rows.append([dim, method, params, args.n, took])
                    report.records.append(
                        {"kind": "build", "dim": dim, "method": method, "seconds": took}
                    )
            loaders.close()
            if peer is not None:
                close_langchain(peer)
            report.table(
                f"Load {args.n:,} rows (median of {args.repeat})",
                ["dim", "method", "rows/s", "vs binary COPY", "upsert_many is x"],
                load_rows,
            )
            report.table(
                "Index build (create_index, cosine)",
                ["dim", "method", "parameters", "rows", "seconds"],
                build_rows,
            )
            if args.build_rows > 0:
                exp = build_experiment(url, storage, args.build_rows, args.build_mem, args.seed)
                report.records.append({"kind": "build_experiment"} | exp)
                report.table(
                    f"HNSW build, {exp['rows']:,} x {exp['dim']} (cosine, m=16, "
                    "ef_construction=64)",
                    ["build", "maintenance_work_mem", "seconds", "vs hand-sized"],
                    [
                        [
                            "create_index on server defaults",
                            exp["server_maintenance_work_mem"] + " (server)",
                            exp["create_index_seconds"],
                            exp["ratio"],
                        ],
                        [
                            "CREATE INDEX by hand",
                            exp["hand_sized_maintenance_work_mem"],
                            exp["hand_sized_seconds"],
                            1.0,
                        ],
                    ],
                )
        trips = initialize_round_trips(url)
        report.records.append({"kind": "initialize"} | trips)
        report.table(
            "initialize() on an up-to-date database",
            ["round trips", "statements", "DDL statements", "ms"],
            [
                [
                    trips["round_trips"],
                    "; ".join(s[:60] + ("…" if len(s) > 60 else "") for s in trips["statements"])
                    or "-",
                    len(trips["ddl_statements"]),
                    trips["seconds"] * 1000,
                ]
            ],
        )
    report.write(args.out, "load")
    return 0


if __name__ == "__main__":
    sys.exit(main())
