"""Datasets for the bench scripts: the real sets in bench/data, seeded synthetic ones, recall.

``siftsmall`` (SIFT10K, L2) and ``stdlib-minilm`` (MiniLM embeddings, cosine) are read from
``bench/data`` unless ``--data-dir`` or ``$SHAREDDB_BENCH_DATA`` names another folder laid
out the same way; ``synthetic`` is seeded Gaussian data with its exact answer from numpy.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
DATA_ENV = "SHAREDDB_BENCH_DATA"
DEFAULT_DATA_DIR = BENCH_DIR / "data"
METRICS = ("cosine", "l2", "inner_product")
ID_PREFIX = "bench#"


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
        return ids_for(self.n)


def ids_for(n: int) -> list[str]:
    """``bench#0`` … ``bench#{n-1}``: the qualified id of each of n rows."""
    return [f"{ID_PREFIX}{i}" for i in range(n)]


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
    """Where the real datasets live: --data-dir, $SHAREDDB_BENCH_DATA, or bench/data."""
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
    add_data_dir_arg(parser, "siftsmall/ and stdlib-minilm/")
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


def add_data_dir_arg(parser: argparse.ArgumentParser, holding: str) -> None:
    """``--data-dir``: the folder holding the real datasets (`holding` names them)."""
    parser.add_argument(
        "--data-dir",
        default=None,
        help=f"folder holding {holding} [default: ${DATA_ENV}, else {DEFAULT_DATA_DIR}]",
    )


def recall_at_k(found: Sequence[Sequence[int]], truth: np.ndarray, k: int) -> float:
    """Mean fraction of each query's true top-k that the search returned in its first k."""
    hits = [len(set(list(f)[:k]) & set(truth[i, :k].tolist())) for i, f in enumerate(found)]
    return float(sum(hits)) / (k * len(found))


def minilm_mixture(
    folder: Path,
    n: int,
    *,
    seed: int = 0,
    neighbours: int = 10,
    mix: int = 3,
    noise: float = 0.3,
) -> tuple[np.ndarray, np.ndarray]:
    """`n` x 384 "real-text-like" unit rows grown from stdlib-minilm, and its 200 real queries.

    Row j is a convex mix of one random base row `a` and `mix` of `a`'s `neighbours`
    nearest base rows (cosine; picked at random), weighted Dirichlet(4, 1, …, 1) so `a`
    dominates, plus isotropic Gaussian noise of norm about `noise`, normalised to unit
    length. So the rows sit on the real embeddings' manifold, in tight clusters of about
    n / 1,966 paraphrase-like rows around each docstring, and the queries are the set's own
    natural-language queries (not rows of the base). Seeded: the same arguments give the
    same rows on every machine.
    """
    minilm = folder / "stdlib-minilm"
    base = _normalised(np.load(_require(minilm / "base.npy")).astype(np.float64))
    queries = np.load(_require(minilm / "queries.npy")).astype(np.float32, copy=False)
    rng = np.random.default_rng(seed)
    similarity = base @ base.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = np.argsort(-similarity, axis=1)[:, :neighbours]
    anchors = rng.integers(0, base.shape[0], size=n)
    picks = np.argsort(rng.random((n, neighbours)), axis=1)[:, :mix]
    members = np.concatenate([anchors[:, None], nearest[anchors[:, None], picks]], axis=1)
    weights = rng.dirichlet([4.0] + [1.0] * mix, size=n)
    rows = np.einsum("nm,nmd->nd", weights, base[members])
    rows += rng.standard_normal(rows.shape) * (noise / np.sqrt(base.shape[1]))
    return _normalised(rows).astype(np.float32), queries
