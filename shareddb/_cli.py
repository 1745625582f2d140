"""The ``shareddb`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._config import load_config
from ._service import DbService
from .errors import ShareddbError


def _service(args: argparse.Namespace) -> DbService:
    if args.url:
        return DbService(args.url)
    return DbService.from_config(load_config(args.config))


def _cmd_init(args: argparse.Namespace) -> int:
    with _service(args) as db:
        report = db.initialize()
        for m in report.applied:
            print(f"applied {m.namespace}/{m.name} ({m.execution_ms:.1f} ms)")
        if report.up_to_date:
            print("up to date")
        print(f"database: {db.url}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shareddb", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="database URL (overrides the configuration)")
    common.add_argument("--config", help="configuration file [default: load_config()'s]")
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init", parents=[common], help="apply pending migrations")
    init.set_defaults(handler=_cmd_init)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except ShareddbError as e:
        print(f"shareddb: error: {e}", file=sys.stderr)
        return 1
    return code
