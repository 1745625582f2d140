"""``shareddb tune``: measure a vector index's recall and latency, pick ef_search / probes."""

from __future__ import annotations

import argparse

from shareddb.cli.common import EXIT_OK, EXIT_PROBLEM, emit_json, service, target_url
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
        "--sample",
        type=int,
        default=100,
        help="stored vectors used as queries [default: %(default)s]",
    )
    parser.add_argument(
        "--method", choices=["hnsw", "ivfflat"], help="which index, when both kinds exist"
    )
    parser.add_argument(
        "--table", default="task_embeddings", help="embeddings table [default: %(default)s]"
    )


def run(args: argparse.Namespace) -> int:
    from shareddb.tuning import tune

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
        )
    if args.json:
        emit_json(result)
    else:
        print(result.table())
    return EXIT_OK if result.met else EXIT_PROBLEM
