"""The read-replica options of a DbService (and of ``[db]``), checked before any I/O."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from shareddb._core.url import DbTarget, parse_url
from shareddb.errors import ConfigError

# Seconds of replay lag past which a replica serves no reads.
DEFAULT_MAX_REPLICA_LAG: Final = 5.0


def replica_options(
    primary: DbTarget, replicas: Sequence[str], max_lag: float, read_your_writes: bool
) -> dict[str, Any]:
    """The engine's keyword arguments for these options; ConfigError naming a bad one."""
    if isinstance(replicas, str) or not isinstance(replicas, Sequence):
        raise ConfigError(
            f"replicas={replicas!r} must be a list of PostgreSQL urls",
            fix='pass replicas=["postgresql://user:pass@replica-host:5432/db", ...]',
        )
    if isinstance(max_lag, bool) or not isinstance(max_lag, int | float) or not max_lag > 0:
        raise ConfigError(f"max_replica_lag={max_lag!r} must be a number of seconds > 0")
    if not isinstance(read_your_writes, bool):
        raise ConfigError(f"read_your_writes={read_your_writes!r} must be True or False")
    if not replicas:
        return {}
    if primary.engine != "postgres":
        raise ConfigError(
            f"replicas are for PostgreSQL; {primary.masked} is a {primary.engine} database",
            fix="leave replicas out, or use a PostgreSQL url",
        )
    targets = [_replica(url, primary) for url in replicas]
    return {
        "replicas": targets,
        "max_replica_lag": float(max_lag),
        "read_your_writes": read_your_writes,
    }


def _replica(url: object, primary: DbTarget) -> DbTarget:
    if not isinstance(url, str):
        raise ConfigError(
            f"replica {url!r} is a {type(url).__name__}, not a url",
            fix="pass each replica as a postgresql:// url",
        )
    try:
        target = parse_url(url)
    except ConfigError as e:
        raise ConfigError(f"replica url: {e}") from None
    if target.engine != "postgres" or target.embedded_dir is not None:
        raise ConfigError(
            f"replica {target.masked} is not a PostgreSQL server url",
            fix="give each replica as postgresql://user:pass@host:port/db (a streaming standby)",
        )
    if target.conninfo == primary.conninfo:
        raise ConfigError(
            f"replica {target.masked} is the primary's own url",
            fix="list the standbys' urls in replicas, not the primary's",
        )
    return target
