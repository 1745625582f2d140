"""``shareddb copy``: sessions and embeddings from one database to another (idempotent)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from shareddb.cli.common import EXIT_OK, UsageError, checked_url, duration, emit_json

HELP = "copy sessions and embeddings between two databases (idempotent)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", required=True, metavar="URL", help="source")
    parser.add_argument("--to", dest="dest", required=True, metavar="URL", help="destination")
    parser.add_argument(
        "--batch-size", type=int, default=1000, help="rows per transaction [default: %(default)s]"
    )
    tables = ["sessions", "task_embeddings"]  # copy.TABLES, imported only when it runs
    parser.add_argument("--only", choices=tables, help="copy one table only")


def run(args: argparse.Namespace) -> int:
    from shareddb._admin import copy

    source, dest = checked_url(args.source, "--from"), checked_url(args.dest, "--to")
    if not 1 <= args.batch_size <= copy.MAX_BATCH:
        raise UsageError(f"--batch-size {args.batch_size} must be from 1 to {copy.MAX_BATCH:,}")
    results = copy.copy_rows(
        args.source,
        args.dest,
        tables=[args.only] if args.only else list(copy.TABLES),
        batch_size=args.batch_size,
        timeout=args.timeout,
        progress=None if args.json else sys.stderr,
    )
    if args.json:
        emit_json(
            {
                "from": source.masked,
                "to": dest.masked,
                "tables": [{**asdict(r), "written": r.written} for r in results],
            }
        )
        return EXIT_OK
    for r in results:
        print(
            f"{r.table}: {r.read:,} read, {r.written:,} written "
            f"({r.inserted:,} new, {r.updated:,} updated), {r.unchanged:,} unchanged "
            f"in {duration(r.elapsed_ms)}"
        )
    return EXIT_OK
