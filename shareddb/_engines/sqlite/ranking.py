"""Exact nearest-neighbour ranking with numpy over one dimension's cached rows.

Candidates come from one float32 matrix-vector product (the cost of a bare numpy
scan) and are re-ranked in float64, so float32 rounding never reorders the top k.
"""

from __future__ import annotations

import threading
from typing import Any, Final

import numpy as np

from shareddb._vectors.validation import Float32Array, Metric

# Extra candidates re-ranked in float64 beyond k, so float32 rounding in the
# matrix product can't push a true neighbour out of the top k.
RERANK_MARGIN: Final = 16
_LOWEST: Final = -np.finfo(np.float32).max  # cosine score of zero vectors: ranked last
# Above this bound on peak^2 * dimension (which bounds |row . query|, |row|^2 and
# |query|^2), float32 scores could overflow (an l2 score sums up to 3 such terms).
_FLOAT32_SAFE: Final = float(np.finfo(np.float32).max) / 4


class Matrix:
    """One dimension's rows, in id order, with lazily derived arrays (shared by threads)."""

    def __init__(
        self,
        token: int | None,
        rowids: np.ndarray[Any, np.dtype[np.int64]],
        ids: list[str],
        backends: list[str],
        raw: Float32Array,
    ) -> None:
        self.token = token
        self.rowids = rowids  # the table's id of each row, ascending
        self.ids = ids
        self.backends = backends
        self.raw = raw
        # Rows selected by filters (model, metadata), by the filter's canonical form.
        self.selections: dict[tuple[Any, ...], np.ndarray[Any, np.dtype[np.intp]]] = {}
        self._index: dict[str, int] | None = None
        self._lock = threading.Lock()
        self._unit: Float32Array | None = None
        self._zero: np.ndarray[Any, np.dtype[np.bool_]] | None = None
        self._sqnorms: Float32Array | None = None
        self._peak: float | None = None
        self._positions: dict[str, np.ndarray[Any, np.dtype[np.intp]]] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def unit(self) -> tuple[Float32Array, np.ndarray[Any, np.dtype[np.bool_]]]:
        """Rows scaled to length 1 (zero rows stay zero) and which rows are zero."""
        with self._lock:
            if self._unit is None or self._zero is None:
                norms = np.sqrt(np.einsum("ij,ij->i", self.raw, self.raw))
                zero = norms == 0
                scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=~zero)
                unit = self.raw * scale[:, None]
                unit.flags.writeable = False
                self._unit, self._zero = unit, zero
            return self._unit, self._zero

    def peak(self) -> float:
        """The largest magnitude of any value: whether float32 products may overflow."""
        with self._lock:
            if self._peak is None:
                raw = self.raw
                self._peak = max(float(raw.max()), -float(raw.min())) if raw.size else 0.0
            return self._peak

    def sqnorms(self) -> Float32Array:
        with self._lock:
            if self._sqnorms is None:
                self._sqnorms = np.einsum("ij,ij->i", self.raw, self.raw)
            return self._sqnorms

    def position_of(self, task_id: str) -> int | None:
        with self._lock:
            if self._index is None:
                self._index = {task_id: position for position, task_id in enumerate(self.ids)}
            return self._index.get(task_id)

    def of_rowids(self, rowids: list[int]) -> np.ndarray[Any, np.dtype[np.intp]]:
        """Positions of the rows with these table ids (each one is in the matrix)."""
        wanted = np.asarray(rowids, dtype=np.int64)
        return np.searchsorted(self.rowids, wanted).astype(np.intp)

    def positions(self, backend: str) -> np.ndarray[Any, np.dtype[np.intp]]:
        with self._lock:
            if self._positions is None:
                groups: dict[str, list[int]] = {}
                for position, label in enumerate(self.backends):
                    groups.setdefault(label, []).append(position)
                self._positions = {b: np.array(p, dtype=np.intp) for b, p in groups.items()}
            return self._positions.get(backend, np.empty(0, dtype=np.intp))


def nearest(
    matrix: Matrix,
    query: Float32Array,
    k: int,
    metric: Metric,
    subset: np.ndarray[Any, np.dtype[np.intp]] | None = None,
) -> tuple[np.ndarray[Any, np.dtype[np.intp]], np.ndarray[Any, np.dtype[np.float64]]]:
    """Positions of the `k` rows nearest to `query` and their distances, nearest first.

    Candidates come from one float32 matrix-vector product (the cost of a bare
    numpy scan); the best ``k + margin`` are then re-ranked by distances computed
    in float64, with ties in insertion order. Where values are so large that float32
    products could overflow, every row is ranked in float64. Distances follow
    pgvector; a zero row has no cosine distance (NaN) and comes last, as in
    PostgreSQL.
    """
    n = len(matrix)
    empty = (np.empty(0, dtype=np.intp), np.empty(0, dtype=np.float64))
    if n == 0:
        return empty
    if subset is not None and subset.size == 0:
        return empty
    raw = matrix.raw
    peak = max(matrix.peak(), float(np.abs(query).max()))
    if peak * peak * query.shape[0] > _FLOAT32_SAFE:
        everyone = np.arange(n) if subset is None else subset
        return _ranked(raw, everyone, query, k, metric)
    mask_from: np.ndarray[Any, np.dtype[np.intp]] | None = None
    if subset is not None and subset.size > n // 4:
        # A large share of the rows: one product over all of them and a mask is cheaper
        # than copying the subset's rows out of the matrix.
        mask_from, subset = subset, None
    if metric == "cosine":
        unit, zero = matrix.unit()
        q = query / np.float32(np.linalg.norm(query))
        scores = (unit if subset is None else unit[subset]) @ q
        zero_rows = zero if subset is None else zero[subset]
        if zero_rows.any():
            scores[zero_rows] = _LOWEST
    elif metric == "inner_product":
        scores = (raw if subset is None else raw[subset]) @ query
    else:  # l2: rank by 2 r·q - |r|², which orders as -|r - q|²
        sqnorms = matrix.sqnorms()
        scores = 2 * ((raw if subset is None else raw[subset]) @ query)
        scores -= sqnorms if subset is None else sqnorms[subset]
    eligible = scores.shape[0]
    if mask_from is not None:
        masked = np.full_like(scores, -np.inf)
        masked[mask_from] = scores[mask_from]
        scores, eligible = masked, mask_from.size
    m = scores.shape[0]
    candidates = min(eligible, k + max(k, RERANK_MARGIN))
    top = (
        np.argpartition(scores, m - candidates)[m - candidates :]
        if candidates < m
        else np.arange(m)
    )
    return _ranked(raw, top if subset is None else subset[top], query, k, metric)


def _ranked(
    raw: Float32Array,
    positions: np.ndarray[Any, np.dtype[np.intp]],
    query: Float32Array,
    k: int,
    metric: Metric,
) -> tuple[np.ndarray[Any, np.dtype[np.intp]], np.ndarray[Any, np.dtype[np.float64]]]:
    """The `k` nearest of the rows at `positions`, by distances computed in float64."""
    rows = raw[positions].astype(np.float64)
    q64 = query.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        if metric == "cosine":
            distances = 1.0 - (rows @ q64) / (np.linalg.norm(rows, axis=1) * np.linalg.norm(q64))
        elif metric == "inner_product":
            distances = -(rows @ q64)
        else:
            distances = np.sqrt(np.square(rows - q64).sum(axis=1))
    order = np.lexsort((positions, distances))[:k]
    return positions[order], distances[order]
