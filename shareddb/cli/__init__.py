"""The ``shareddb`` command: create the database, show its state, diagnose, copy rows.

Every command but ``copy`` (which takes ``--from`` / ``--to``) takes ``--url`` /
``--config`` (default: the configuration that `load_config()` finds). Exit status: 0
ok, 1 a problem found, 2 bad usage. Each command is a module of its own: its ``HELP``,
its own options (``add_arguments``) and ``run(args)``; this one builds the parser from
them and runs the chosen command.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from shareddb.cli import config, copy, doctor, index, init, pg, status, tune
from shareddb.cli.common import EXIT_PROBLEM, EXIT_USAGE, UsageError
from shareddb.errors import ShareddbError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shareddb",
        description="The shared database of an application: SQLite or PostgreSQL + pgvector.",
        epilog="exit status: 0 ok, 1 a problem found, 2 bad usage",
    )
    # Every command takes --timeout and -v; those that work on one database (all but
    # copy, which names two with --from / --to) take --url / --config as well.
    target = argparse.ArgumentParser(add_help=False)
    target.add_argument("--url", help="database URL (overrides the configuration)")
    target.add_argument(
        "--config", help="configuration file [default: $SHAREDDB_CONFIG or the user config dir]"
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to wait for the database [default: %(default)s]",
    )
    common.add_argument("-v", "--verbose", action="store_true", help="log what shareddb does")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON instead of text")
    schema = argparse.ArgumentParser(add_help=False)
    schema.add_argument(
        "--schema-dir",
        action="append",
        metavar="NAMESPACE=FOLDER",
        help="the application's own migrations beside shareddb's (repeatable)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, module: ModuleType, *parents: argparse.ArgumentParser
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=list(parents), help=module.HELP)
        sub.set_defaults(handler=module.run)
        return sub

    command("init", init, target, common, as_json, schema)
    command("status", status, target, common, as_json, schema)
    command("doctor", doctor, target, common, as_json, schema)
    config.add_arguments(command("config", config, target, common, as_json))
    pg.add_arguments(command("pg", pg, target, common))
    copy.add_arguments(command("copy", copy, common, as_json))
    tune.add_arguments(command("tune", tune, target, common, as_json))
    # Its subcommands (list, create, drop) take the common options themselves.
    index.add_arguments(command("index", index), target, common, as_json)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        code: int = args.handler(args)
    except UsageError as e:
        parser.print_usage(sys.stderr)
        print(f"shareddb {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ShareddbError as e:
        print(f"shareddb {args.command}: error: {e}", file=sys.stderr)
        return EXIT_PROBLEM
    except KeyboardInterrupt:
        print(f"shareddb {args.command}: interrupted", file=sys.stderr)
        return 130
    return code


__all__ = ["build_parser", "main"]
