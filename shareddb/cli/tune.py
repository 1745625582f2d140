"""``shareddb tune``: measure a vector index's recall and latency, pick ef_search / probes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from shareddb.cli.common import (
    EXIT_OK,
    EXIT_PROBLEM,
    UsageError,
    emit_json,
    service,
    target_url,
)
from shareddb.errors import InvalidEmbeddingError
from shareddb.vectors import VectorStorage

HELP = "measure a vector index's recall and latency and pick ef_search / probes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dimension", type=int, required=True, help="the indexed embedding dimension"
    )
    parser.add_argument(
        "--metric",
        choices=["cosine", "l2", "inner_product"],
        default="cosine",
        help="the index's metric [default: %(default)s]",
    )
    parser.add_argument(
        "--target-recall",
        type=float,
        default=0.95,
        help="recall@k to reach [default: %(default)s]",
    )
    parser.add_argument("--k", type=int, default=10, help="neighbours [default: %(default)s]")
    parser.add_argument(
        "--queries",
        metavar="FILE.npy",
        help="your real queries: a 2-D numpy array (np.save), one query per row; every one "
        "is used [default: stored vectors as queries]",
    )
    parser.add_argument(
        "--sample",
        type=int,
        help="stored vectors used as queries, without --queries [default: 100]",
    )
    parser.add_argument(
        "--method", choices=["hnsw", "ivfflat"], help="which index, when both kinds exist"
    )
    parser.add_argument(
        "--table", default="task_embeddings", help="embeddings table [default: %(default)s]"
    )


def run(args: argparse.Namespace) -> int:
    from shareddb.tuning import check_queries, tune

    queries = None
    if args.queries is not None:
        if args.sample is not None:
            raise UsageError("--sample picks stored vectors; with --queries every query is used")
        try:
            queries = check_queries(load_queries(args.queries), args.dimension)
        except InvalidEmbeddingError as e:
            raise UsageError(f"--queries {args.queries}: {e}") from None
    url, _ = target_url(args)
    with service(args, url) as db:
        result = tune(
            VectorStorage(db, table=args.table),
            args.dimension,
            metric=args.metric,
            target_recall=args.target_recall,
            k=args.k,
            sample=args.sample,
            method=args.method,
            queries=queries,
        )
    if args.json:
        emit_json(result)
    else:
        print(result.table())
    return EXIT_OK if result.met else EXIT_PROBLEM


def load_queries(name: str) -> np.ndarray[Any, Any]:
    """The array in a ``.npy`` file, or UsageError saying why it can't be read."""
    path = Path(name).expanduser()
    if not path.is_file():
        problem = "is a folder" if path.is_dir() else "does not exist"
        raise UsageError(f"--queries {name} {problem}; pass a .npy file written by numpy.save")
    try:
        loaded: Any = np.load(path, allow_pickle=False)
    except ValueError as e:
        # A pickle (object arrays), or not a .npy file at all.
        raise UsageError(
            f"--queries {name} is not a numpy .npy array of numbers ({e}); write it with "
            "numpy.save(path, matrix) with a float32 matrix"
        ) from None
    except OSError as e:
        raise UsageError(f"--queries {name} can't be read: {e}") from None
    if not isinstance(loaded, np.ndarray):  # an .npz archive
        loaded.close()
        raise UsageError(f"--queries {name} is a .npz archive; save the one matrix with numpy.save")
    return loaded
