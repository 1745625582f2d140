"""Embedding records on PostgreSQL: loading them with metadata, and finding the stale ones.

Load: the same 50k x 384 rows, each with a JSON metadata object and a content hash, go
into an emptied table, repeated and interleaved, through:

* ``shareddb upsert_many``: ``VectorStorage.upsert_many((ids, matrix), metadata=[...],
  content_hashes=[...])`` into ``task_embeddings``;
* ``binary COPY``: a bare ``COPY … (qualified_task_id, backend, dimension, embedding,
  metadata, content_hash) FROM STDIN (FORMAT BINARY)`` by hand with psycopg's
  ``write_row`` into a table made ``LIKE task_embeddings INCLUDING ALL`` (the same columns,
  constraints and indexes, the GIN index on metadata included): the floor;

and, for what the records cost, both again with the vectors alone.

Stale: 100k ids of which half are stored with the same content hash, a quarter with
another one and a quarter not at all; ``VectorStorage.stale({id: hash})`` against the
same statement sent by hand with psycopg, its answer checked (the ids to embed again, in
the given order), and the round trips it takes (from libpq's protocol trace).

    python bench/records.py
    python bench/records.py --n 10000 --stale-ids 20000 --repeat 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import psycopg
from _datasets import ids_for
from _report import Report, add_output_args
from _servers import add_server_args, scratch_database, server_facts
from pgvector.psycopg import register_vector
from psycopg import sql

from shareddb import DbService
from shareddb.vectors import VectorStorage

TABLE = "task_embeddings"
COPY_TABLE = "bench_records_copy"
BACKEND = "bench"  # the id prefix of bench#i, which upsert_many stores as the backend
# The statement stale() sends (vector_sql.STALE), written out by hand: ids and hashes as JSON.
STALE_SQL = (
    "SELECT g.id FROM ROWS FROM (json_array_elements_text(%s::json), "
    "json_array_elements_text(%s::json)) WITH ORDINALITY AS g(id, hash, n) "
    'LEFT JOIN "task_embeddings" AS t ON t.qualified_task_id = g.id '
    "WHERE t.qualified_task_id IS NULL OR t.content_hash IS DISTINCT FROM g.hash "
    "OR (%s::text IS NOT NULL AND t.model IS DISTINCT FROM %s::text) ORDER BY g.n"
)
# The same query with two text[] arrays: psycopg dumps a list of str element by element.
STALE_ARRAYS_SQL = (
    "SELECT g.id FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS g(id, hash, n) "
    'LEFT JOIN "task_embeddings" AS t ON t.qualified_task_id = g.id '
    "WHERE t.qualified_task_id IS NULL OR t.content_hash IS DISTINCT FROM g.hash "
    "OR (%s::text IS NOT NULL AND t.model IS DISTINCT FROM %s::text) ORDER BY g.n"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_server_args(parser)
    add_output_args(parser)
    parser.add_argument(
        "--n", type=int, default=50_000, help="rows per load [default: %(default)s]"
    )
    parser.add_argument("--dim", type=int, default=384, help="dimensions [default: %(default)s]")
    parser.add_argument(
        "--repeat", type=int, default=3, help="loads per method (median) [default: %(default)s]"
    )
    parser.add_argument(
        "--stale-ids",
        type=int,
        default=100_000,
        help="ids given to stale(): 1/2 unchanged, 1/4 changed, 1/4 missing [default: %(default)s]",
    )
    parser.add_argument(
        "--stale-repeat",
        type=int,
        default=5,
        help="timed stale() calls per client (median) [default: %(default)s]",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed [default: %(default)s]")
    return parser


def content_hash(i: int) -> str:
    return hashlib.sha256(f"text of row {i}".encode()).hexdigest()


def make_rows(
    n: int, dim: int, seed: int
) -> tuple[list[str], np.ndarray, list[Mapping[str, Any] | None], list[str | None]]:
    """Ids, unit vectors, a small realistic metadata object and a sha256 hex digest per row."""
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((n, dim), dtype=np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    langs = ("en", "de", "fr", "ja")
    metadata: list[Mapping[str, Any] | None] = [
        {
            "bucket": f"b{i % 100}",
            "n": i,
            "lang": langs[i % len(langs)],
            "path": f"docs/section-{i % 97}/page-{i}.md",
        }
        for i in range(n)
    ]
    hashes: list[str | None] = [content_hash(i) for i in range(n)]
    return ids_for(n), matrix, metadata, hashes


class Loaders:
    """Each way of loading the rows into an emptied table; each returns its seconds."""

    def __init__(self, url: str, storage: VectorStorage) -> None:
        self.storage = storage
        self.conn = psycopg.connect(url, autocommit=True)
        register_vector(self.conn)
        self.conn.execute(
            sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(
                sql.Identifier(COPY_TABLE), sql.Identifier(TABLE)
            )
        )

    def close(self) -> None:
        self.conn.close()

    def empty(self) -> None:
        for table in (TABLE, COPY_TABLE):
            self.conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(table)))
        self.conn.execute("CHECKPOINT")  # each load starts from the same clean state

    def shareddb(
        self, ids: list[str], matrix: np.ndarray, metadata: list[Any] | None, hashes: list[Any]
    ) -> float:
        start = time.perf_counter()
        if metadata is None:
            self.storage.upsert_many((ids, matrix))
        else:
            self.storage.upsert_many((ids, matrix), metadata=metadata, content_hashes=hashes)
        return time.perf_counter() - start

    def copy(
        self, ids: list[str], matrix: np.ndarray, metadata: list[Any] | None, hashes: list[Any]
    ) -> float:
        """The floor: bare binary COPY of the same columns, one transaction."""
        dim = matrix.shape[1]
        columns = ["qualified_task_id", "backend", "dimension", "embedding"]
        types = ["text", "text", "int4", "vector"]
        if metadata is not None:
            columns += ["metadata", "content_hash"]
            types += ["jsonb", "text"]
        statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
            sql.Identifier(COPY_TABLE), sql.SQL(", ").join(map(sql.Identifier, columns))
        )
        start = time.perf_counter()
        with self.conn.transaction(), self.conn.cursor() as cur, cur.copy(statement) as copy:
            copy.set_types(types)
            if metadata is None:
                for qid, row in zip(ids, matrix, strict=True):
                    copy.write_row((qid, BACKEND, dim, row))
            else:
                for qid, row, md, digest in zip(ids, matrix, metadata, hashes, strict=True):
                    copy.write_row((qid, BACKEND, dim, row, md, digest))
        return time.perf_counter() - start

    def count(self, table: str) -> int:
        row = self.conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
        ).fetchone()
        return int(row[0]) if row else -1


def load_rates(
    loaders: Loaders,
    ids: list[str],
    matrix: np.ndarray,
    metadata: list[Mapping[str, Any] | None],
    hashes: list[str | None],
    repeat: int,
) -> dict[str, float]:
    """Median rows/s of each method; within a repetition the order turns around each time."""
    methods: dict[str, Callable[[], float]] = {
        "binary COPY, with records (floor)": lambda: loaders.copy(ids, matrix, metadata, hashes),
        "shareddb upsert_many, with records": lambda: loaders.shareddb(
            ids, matrix, metadata, hashes
        ),
        "binary COPY, vectors only": lambda: loaders.copy(ids, matrix, None, []),
        "shareddb upsert_many, vectors only": lambda: loaders.shareddb(ids, matrix, None, []),
    }
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    names = list(methods)
    for turn in range(repeat):
        for name in names if turn % 2 == 0 else reversed(names):
            loaders.empty()
            seconds[name].append(methods[name]())
            table = COPY_TABLE if name.startswith("binary") else TABLE
            stored = loaders.count(table)
            if stored != len(ids):
                raise SystemExit(f"{name} stored {stored:,} of {len(ids):,} rows; stopping")
    return {name: len(ids) / statistics.median(s) for name, s in seconds.items()}


def count_round_trips(conn: psycopg.Connection[Any], work: Callable[[], Any]) -> tuple[int, int]:
    """ReadyForQuery messages (round trips) and statements sent while `work()` ran."""
    with tempfile.TemporaryFile("w+") as trace:
        conn.pgconn.trace(trace.fileno())
        conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
        try:
            work()
        finally:
            conn.pgconn.untrace()
        trace.seek(0)
        lines = trace.readlines()
    trips = sum(1 for line in lines if "\tReadyForQuery\t" in line)
    statements = sum(
        1
        for line in lines
        if line.startswith("F\t") and ("\tQuery\t" in line or "\tParse\t" in line)
    )
    return trips, statements


def bench_stale(
    url: str, storage: VectorStorage, total: int, dim: int, repeat: int, seed: int
) -> dict[str, Any]:
    """stale() over `total` ids: 1/2 unchanged, 1/4 changed, 1/4 missing."""
    unchanged, changed = total // 2, total // 4
    stored = unchanged + changed
    rng = np.random.default_rng(seed + 2)
    matrix = rng.standard_normal((stored, dim), dtype=np.float32)
    ids = ids_for(total)
    hashes = [content_hash(i) for i in range(total)]
    old = [content_hash(-i - 1) for i in range(changed)]
    stored_hashes: list[str | None] = [*hashes[:unchanged], *old]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(TABLE)))
    storage.upsert_many((ids[:stored], matrix), content_hashes=stored_hashes, model="m")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(TABLE)))
    given = dict(zip(ids, hashes, strict=True))
    expected = ids[unchanged:]
    got = storage.stale(given)
    if got != expected:
        raise SystemExit(
            f"stale() returned {len(got):,} ids, expected {len(expected):,} (ids "
            f"{unchanged:,} to {total - 1:,} in order); stopping"
        )
    direct = psycopg.connect(url, autocommit=True)

    def by_hand() -> list[str]:
        params = (json.dumps(ids), json.dumps(hashes), None, None)
        return [str(row[0]) for row in direct.execute(STALE_SQL, params)]

    def as_arrays() -> list[str]:
        params = (ids, hashes, None, None)
        return [str(row[0]) for row in direct.execute(STALE_ARRAYS_SQL, params)]

    calls: dict[str, Callable[[], Any]] = {
        "shareddb stale()": lambda: storage.stale(given),
        "same statement by hand": by_hand,
        "by hand, ids as two text[] arrays": as_arrays,
    }
    for name, call in calls.items():
        if call() != expected:
            raise SystemExit(f"{name} disagrees with the expected stale ids; stopping")
    times: dict[str, list[float]] = {name: [] for name in calls}
    for turn in range(repeat):
        for name in list(calls) if turn % 2 == 0 else reversed(list(calls)):
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)
    plan = "\n".join(
        str(row[0])
        for row in direct.execute(
            "EXPLAIN (ANALYZE) " + STALE_SQL, (json.dumps(ids), json.dumps(hashes), None, None)
        )
    )
    direct.close()
    with DbService(url, min_size=1, max_size=1) as db:  # one connection: the one we trace
        traced = VectorStorage(db)
        traced.stale({ids[0]: hashes[0]})  # the pool's first checkout, outside the trace
        with db.connection() as held:
            pass
        trips, statements = count_round_trips(held, lambda: traced.stale(given))  # type: ignore[arg-type]
    return {
        "ids": total,
        "unchanged": unchanged,
        "changed": changed,
        "missing": total - stored,
        "stale_found": len(got),
        "median_ms": {name: statistics.median(t) * 1000 for name, t in times.items()},
        "round_trips": trips,
        "statements": statements,
        "plan": plan,
        "server_ms": _execution_ms(plan),
    }


def _execution_ms(plan: str) -> float | None:
    found = re.search(r"Execution Time: ([\d.]+) ms", plan)
    return float(found.group(1)) if found else None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = Report("records", {k: (str(v) if k == "out" else v) for k, v in vars(args).items()})
    ids, matrix, metadata, hashes = make_rows(args.n, args.dim, args.seed)
    with scratch_database(args.dsn) as url:
        report.facts |= server_facts(url)
        with DbService(url, min_size=1, max_size=2) as db:
            db.initialize()
            storage = VectorStorage(db)
            loaders = Loaders(url, storage)
            rates = load_rates(loaders, ids, matrix, metadata, hashes, args.repeat)
            loaders.close()
            floor = rates["binary COPY, with records (floor)"]
            rows = []
            for name, rate in rates.items():
                rows.append([name, rate, rate / floor])
                report.records.append({"kind": "load", "method": name, "rows_per_s": rate})
            report.table(
                f"Load {args.n:,} x {args.dim} with metadata and content hashes "
                f"(median of {args.repeat}; target: upsert_many >= 0.7 x COPY)",
                ["method", "rows/s", "vs COPY with records"],
                rows,
            )
            found = bench_stale(
                url, storage, args.stale_ids, args.dim, args.stale_repeat, args.seed
            )
            report.records.append({"kind": "stale"} | found)
            report.table(
                f"stale() over {found['ids']:,} ids ({found['unchanged']:,} unchanged, "
                f"{found['changed']:,} changed, {found['missing']:,} missing; median of "
                f"{args.stale_repeat})",
                ["client", "ms", "stale ids found", "round trips", "statements"],
                [
                    [
                        name,
                        ms,
                        found["stale_found"],
                        found["round_trips"] if name.startswith("shareddb") else 1,
                        found["statements"] if name.startswith("shareddb") else 1,
                    ]
                    for name, ms in found["median_ms"].items()
                ]
                + [["(server: EXPLAIN ANALYZE execution)", found["server_ms"], "", "", ""]],
            )
    report.write(args.out, "records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
