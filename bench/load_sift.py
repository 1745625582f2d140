"""Load the 10,000 SIFT10K vectors with upsert_many beside a bare binary COPY, in one run.

Both load the same rows into the same empty ``task_embeddings`` table (truncated
before each load), alternating, and the medians are compared:

* ``upsert_many``: ``VectorStorage.upsert_many((ids, matrix))``, all or nothing, with
  upsert semantics;
* ``bare COPY``: ``COPY task_embeddings (...) FROM STDIN (FORMAT BINARY)`` written with
  psycopg's ``write_row`` and pgvector's binary dumper, as pgvector-python shows it (the
  floor: no validation, no upsert semantics);
* ``upsert_many (update)``: the same rows again over a full table (every row exists).

    python bench/load_sift.py
    python bench/load_sift.py --dsn postgresql://postgres@localhost/postgres --repeat 7
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import psycopg
from _datasets import add_data_dir_arg, data_dir, load_siftsmall
from _servers import add_server_args, scratch_database
from pgvector.psycopg import register_vector

from shareddb import DbService, VectorStorage

COPY = (
    "COPY task_embeddings (qualified_task_id, backend, dimension, embedding) "
    "FROM STDIN (FORMAT BINARY)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_server_args(parser)
    add_data_dir_arg(parser, "siftsmall/")
    parser.add_argument(
        "--repeat", type=int, default=5, help="loads per method, median [default: %(default)s]"
    )
    return parser


def bare_copy(conn: psycopg.Connection, ids: list[str], matrix: np.ndarray) -> Callable[[], None]:
    """A load written directly with psycopg on an open connection: binary COPY, write_row."""

    def load() -> None:
        with conn.transaction(), conn.cursor() as cursor, cursor.copy(COPY) as copy:
            copy.set_types(["text", "text", "int4", "vector"])
            for task_id, row in zip(ids, matrix, strict=True):
                copy.write_row((task_id, "sift", row.shape[0], row))

    return load


def timed(prepare: Callable[[], None], work: Callable[[], object]) -> float:
    prepare()
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    data = load_siftsmall(data_dir(args.data_dir))
    ids = [f"sift#{i}" for i in range(data.n)]
    matrix = data.base
    with scratch_database(args.dsn) as url, DbService(url) as db:
        db.initialize()
        direct = psycopg.connect(url, autocommit=True)
        register_vector(direct)
        vectors = VectorStorage(db)

        def truncate() -> None:
            with db.connection() as conn:
                conn.execute("TRUNCATE task_embeddings")

        def keep() -> None:
            pass

        copy = bare_copy(direct, ids, matrix)
        times: dict[str, list[float]] = {"upsert_many": [], "bare COPY": [], "update": []}
        timed(truncate, lambda: vectors.upsert_many((ids, matrix)))  # warm-up
        for _ in range(args.repeat):
            times["bare COPY"].append(timed(truncate, copy))
            times["upsert_many"].append(timed(truncate, lambda: vectors.upsert_many((ids, matrix))))
            times["update"].append(timed(keep, lambda: vectors.upsert_many((ids, matrix))))
        assert vectors.count() == data.n
        assert np.array_equal(vectors.get(ids[-1]), matrix[-1])
        direct.close()

    medians = {name: statistics.median(values) for name, values in times.items()}
    floor = medians["bare COPY"]
    print(f"SIFT10K: {data.n:,} x {data.dim} float32, median of {args.repeat} loads each\n")
    print("| load | median s | rows/s | vs bare COPY |")
    print("|---|---:|---:|---:|")
    for name, label in (
        ("bare COPY", "bare binary COPY (psycopg write_row)"),
        ("upsert_many", "upsert_many((ids, matrix)), empty table"),
        ("update", "upsert_many((ids, matrix)), every id exists"),
    ):
        seconds = medians[name]
        print(f"| {label} | {seconds:.3f} | {data.n / seconds:,.0f} | {floor / seconds:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
