"""What a script reports: markdown tables, the JSON file with the machine's facts, plots.

Also the output options every script shares (``--out``, ``--no-peers``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import sqlite3
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"


@dataclass
class Report:
    """What a script prints and writes: titled markdown tables, facts, skipped peers."""

    script: str
    params: dict[str, Any]
    tables: list[tuple[str, list[str], list[list[Any]]]] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    def table(self, title: str, headers: list[str], rows: list[list[Any]]) -> None:
        self.tables.append((title, headers, rows))
        print(f"\n### {title}\n\n{markdown_table(headers, rows)}", flush=True)

    def skip(self, what: str, why: str) -> None:
        self.skipped[what] = why
        print(f"skipped {what}: {why}", file=sys.stderr, flush=True)

    def write(self, out_dir: Path, stem: str) -> Path:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{stem}.json"
        payload = {
            "script": self.script,
            "params": self.params,
            "machine": machine_facts() | self.facts,
            "records": self.records,
            "skipped": self.skipped,
            "tables": [
                {"title": t, "headers": h, "rows": [[_plain(c) for c in r] for r in rows]}
                for t, h, rows in self.tables
            ],
        }
        path.write_text(json.dumps(payload, indent=2, default=_plain) + "\n", encoding="utf-8")
        print(f"\nwrote {path}", flush=True)
        return path


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def fmt(value: Any) -> str:
    """A table cell: floats with 3 significant digits (more for large numbers)."""
    if isinstance(value, float | np.floating):
        v = float(value)
        if math.isinf(v) or math.isnan(v):
            return str(v)
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if 0.1 <= v < 1:  # recalls: round down, so that 0.9995 never shows as 1
            return f"{math.floor(v * 1000) / 1000:.3f}"
        return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "" if value is None else str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[fmt(c) for c in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return None


def machine_facts() -> dict[str, Any]:
    """CPU, memory and the versions of everything a number here depends on."""
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
        "packages": {
            name: _version(name)
            for name in (
                "shareddb",
                "numpy",
                "psycopg",
                "psycopg-binary",
                "psycopg-pool",
                "pgvector",
                "langchain-postgres",
                "sqlite-vec",
                "apsw",
            )
        },
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def add_output_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS_DIR,
        help="folder for the JSON and PNG files [default: %(default)s]",
    )
    parser.add_argument(
        "--no-peers",
        action="store_true",
        help="skip the optional peer libraries even when installed",
    )


def plot_recall_qps(
    path: Path,
    panels: dict[str, dict[str, list[tuple[float, float, str]]]],
    title: str,
    *,
    xlabel: str = "recall@10",
) -> Path | None:
    """Recall (x) vs QPS (y, log): one panel per index, one line per client.

    `panels[index][client]` lists (recall, qps, setting) points in sweep order; each
    point is labelled with its setting, and a client keeps its colour in every panel.
    Returns None, after saying why, when matplotlib isn't installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "skipping the plot: matplotlib is not installed; pip install -e '.[bench]'",
            file=sys.stderr,
        )
        return None
    names = list(dict.fromkeys(client for series in panels.values() for client in series))
    colours = {name: f"C{i}" for i, name in enumerate(names)}
    fig, axes = plt.subplots(
        1, max(len(panels), 1), figsize=(6.5 * max(len(panels), 1), 5.2), dpi=110, squeeze=False
    )
    for ax, (panel, series) in zip(axes[0], panels.items(), strict=False):
        for name, points in series.items():
            if not points:
                continue
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                marker="o",
                color=colours[name],
                label=name,
                linewidth=1.5,
            )
            for recall, qps, label in points:
                ax.annotate(
                    label, (recall, qps), fontsize=7, xytext=(3, 3), textcoords="offset points"
                )
        ax.set_xlabel(xlabel)
        ax.set_ylabel("queries per second, one client (log)")
        ax.set_yscale("log")
        ax.set_title(panel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    print(f"wrote {path}", flush=True)
    return path
