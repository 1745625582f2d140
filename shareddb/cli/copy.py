"""``shareddb copy``: sessions, embeddings and application tables between databases."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shareddb._core.config import load_config
from shareddb.cli.common import (
    EXIT_OK,
    UsageError,
    checked_url,
    duration,
    emit_json,
    options,
    plural,
    schema_dirs,
)

if TYPE_CHECKING:
    from shareddb._admin.copy import CopyReport, CopyResult
    from shareddb._core.config import DbConfig

HELP = "copy sessions, embeddings and application tables between two databases (idempotent)"


class _Refused(argparse.Action):
    """An option other commands take that copy must refuse, not ignore (``--url``, ``--config``)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        what = (
            "takes two databases, not --url"
            if self.dest == "url"
            else "takes no --config (its namespaces come from $SHAREDDB_CONFIG or the default "
            "configuration file, and --schema-dir)"
        )
        raise argparse.ArgumentError(
            self, f"copy {what}: give --from URL (the source) and --to URL (the destination)"
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", required=True, metavar="URL", help="source")
    parser.add_argument("--to", dest="dest", required=True, metavar="URL", help="destination")
    parser.add_argument(
        "--batch-size", type=int, default=1000, help="rows per transaction [default: %(default)s]"
    )
    parser.add_argument(
        "--schema-dir",
        action="append",
        metavar="NAMESPACE=FOLDER",
        help="an application's migrations: copy the tables they created (repeatable; "
        "added to the configuration's [db.schema_dirs])",
    )
    parser.add_argument(
        "--table",
        action="append",
        dest="app_tables",
        metavar="NAME",
        help="also copy this table of the application's (repeatable)",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="TABLE",
        help="copy only this table (repeatable): sessions, task_embeddings, or an "
        "application table",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace destination rows even when their updated_at is newer than the source's "
        "[default: keep them]",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="read both databases and report what a copy would do; write nothing, "
        "initialize nothing",
    )
    # Refused, not ignored: the other commands' --url / --config name the one database.
    for option in ("--url", "--config"):
        parser.add_argument(option, action=_Refused, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from shareddb._admin import copy

    source, dest = checked_url(args.source, "--from"), checked_url(args.dest, "--to")
    if not 1 <= args.batch_size <= copy.MAX_BATCH:
        raise UsageError(f"--batch-size {args.batch_size} must be from 1 to {copy.MAX_BATCH:,}")
    config = load_config()
    dirs = namespaces(args, config)
    unknown = [t for t in args.only or () if t not in copy.TABLES]
    if unknown and not dirs and not args.app_tables:
        raise UsageError(
            f"--only: unknown table {unknown[0]!r}; copy knows {', '.join(copy.TABLES)}, and "
            "the tables of --schema-dir namespaces and --table"
        )
    report = copy.copy_rows(
        args.source,
        args.dest,
        tables=args.only,
        schema_dirs=dirs,
        app_tables=args.app_tables or (),
        batch_size=args.batch_size,
        timeout=args.timeout,
        overwrite=args.overwrite,
        dry_run=args.dry_run,
        progress=None if args.json else sys.stderr,
        # Copy reads and writes the primary: replicas are left out.
        source_options=_without_replicas(options(args.source, config)),
        dest_options=_without_replicas(options(args.dest, config)),
    )
    if args.json:
        emit_json(
            {
                "from": source.masked,
                "to": dest.masked,
                "dry_run": report.dry_run,
                "overwrite": report.overwrite,
                "destination": {
                    "exists": report.exists,
                    "initialized": report.initialized,
                    "migrations": report.migrations,
                },
                "tables": [{**asdict(r), "written": r.written} for r in report.tables],
                "skipped": report.skipped,
                "unlisted_namespaces": report.unlisted,
            }
        )
        return EXIT_OK
    _print_report(report, dest.masked)
    return EXIT_OK


def namespaces(args: argparse.Namespace, config: DbConfig) -> dict[str, Path]:
    """The application namespaces whose tables to copy: the one place they come from.

    The configuration's ``[db.schema_dirs]`` (`load_config()`, as every command reads
    it), then ``--schema-dir``; its url plays no part in this (copy names both databases).
    """
    dirs = schema_dirs(args, config)
    return {namespace: Path(folder) for namespace, folder in dirs.items()}


def _without_replicas(given: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in given.items() if key in ("pooler", "direct_url")}


def _print_report(report: CopyReport, dest: str) -> None:
    if report.dry_run:
        print(f"dry run: nothing was written to {dest}")
    if report.migrations:
        names = ", ".join(report.migrations)
        if not report.dry_run:
            print(f"destination: applied {plural(len(report.migrations), 'migration')} ({names})")
        elif not report.exists:
            print(
                f"destination: does not exist yet; a copy would create it and apply "
                f"{plural(len(report.migrations), 'migration')} ({names})"
            )
        else:
            print(
                f"destination: {plural(len(report.migrations), 'pending migration')}, which a "
                f"copy would apply first ({names}); rows compared as they would read after them"
            )
    for r in report.tables:
        print(_table_line(r, report.dry_run))
    for reason in report.skipped:
        print(f"skipped {reason}")
    for namespace in report.unlisted:
        print(
            f"not copied: the tables of namespace {namespace!r}, applied in the source: copy "
            f"was not given its migrations (add it to [db.schema_dirs] in the configuration, "
            f"or pass --schema-dir {namespace}=FOLDER)"
        )
    kept = sum(r.kept for r in report.tables)
    if kept:
        print(
            f"{plural(kept, 'row')} kept: the destination's updated_at is newer than the "
            "source's; --overwrite replaces them with the source's"
        )


def _table_line(r: CopyResult, dry_run: bool) -> str:
    written = f"would write {r.written:,}" if dry_run else f"{r.written:,} written"
    name = r.table if r.namespace in (None, "shareddb") else f"{r.table} ({r.namespace})"
    line = (
        f"{name}: {r.read:,} read, {written} ({r.inserted:,} new, {r.updated:,} updated), "
        f"{r.unchanged:,} unchanged"
    )
    if r.kept:
        line += f", {r.kept:,} kept, newer in destination"
    return line if dry_run else f"{line} in {duration(r.elapsed_ms)}"
