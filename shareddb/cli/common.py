"""What every ``shareddb`` command shares: exit codes, the target url, output helpers."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from shareddb._admin.doctor import format_bytes
from shareddb._core.config import DbConfig, load_config
from shareddb._core.service import DbService
from shareddb._core.url import DbTarget, parse_url
from shareddb._vectors.results import IndexInfo
from shareddb.errors import ConfigError

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad command-line usage: exit status 2."""


def checked_url(url: str, option: str = "--url") -> DbTarget:
    """`url` parsed, or UsageError naming `option` when it is not a valid url."""
    try:
        return parse_url(url)
    except ConfigError as e:
        raise UsageError(f"{option}: {e}") from None


def target_url(args: argparse.Namespace) -> tuple[str, DbConfig | None]:
    """The URL to work on and the configuration read, if any.

    ``--url`` alone reads no configuration (None); ``--url`` with ``--config`` reads
    that file for its namespaces only; otherwise `load_config(--config)` gives both.
    """
    if args.url:
        checked_url(args.url)
        return args.url, load_config(args.config) if args.config else None
    config = load_config(args.config)
    return config.url, config


def schema_dirs(args: argparse.Namespace, config: DbConfig | None = None) -> dict[str, str | Path]:
    """The namespaces to work with: the configuration's, then ``--schema-dir`` options.

    ``--schema-dir NAMESPACE=FOLDER`` adds a namespace, or replaces the configured
    folder of one (a relative FOLDER is relative to the current directory).
    """
    dirs: dict[str, str | Path] = dict(config.schema_dirs) if config is not None else {}
    for item in getattr(args, "schema_dir", None) or []:
        namespace, sep, folder = item.partition("=")
        if not sep or not namespace or not folder:
            raise UsageError(
                f"--schema-dir {item!r} is not NAMESPACE=FOLDER; write for example "
                "--schema-dir myapp=migrations"
            )
        dirs[namespace] = folder
    return dirs


def service(args: argparse.Namespace, url: str, config: DbConfig | None = None) -> DbService:
    """A DbService for `url` with the namespaces of `config` and ``--schema-dir``."""
    return DbService(
        url, schema_dirs=schema_dirs(args, config), timeout=args.timeout, **options(url, config)
    )


def options(url: str, config: DbConfig | None) -> dict[str, Any]:
    """The configuration's pooler, direct_url and replicas, when `url` is its url.

    They describe the servers behind ``[db] url``; another url (``--url``, copy's
    ``--from`` / ``--to``) may be another database, or SQLite.
    """
    if config is None or url != config.url:
        return {}
    return {"pooler": config.pooler, "direct_url": config.direct_url, **config.replication}


def emit_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=_json_default))


def _json_default(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def duration(ms: float) -> str:
    return f"{ms:.1f} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


def describe_index(index: IndexInfo) -> str:
    """``name  hnsw cosine dim 384  m=16 ef_construction=64  1.2 MB`` (+ notes)."""
    params = " ".join(f"{k}={v}" for k, v in index.parameters.items())
    text = (
        f"{index.name}  {index.method} {index.metric} dim {index.dimension}  {params}  "
        + format_bytes(index.size)
    )
    if index.halfvec:
        text += "  (half precision)"
    if not index.valid:
        text += "  INVALID: a concurrent build failed; drop it and build it again"
    return text.rstrip()
