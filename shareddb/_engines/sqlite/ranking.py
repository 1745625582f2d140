"""Exact nearest-neighbour ranking with numpy over one dimension's cached rows.

Candidates come from one float32 matrix-vector product (the cost of a bare numpy
scan) and are re-ranked in float64, so float32 rounding never reorders the top k.
Every product goes through `products`, which never wakes BLAS's threads (they stall
searches on a busy machine) and leaves the application's BLAS settings alone.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Final, Literal

import numpy as np

from shareddb._vectors.products import dot, row_dots
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
        self.selections: dict[tuple[Any, ...], Selection] = {}
        # Bytes the selections may hold in gathered copies of their rows, in all.
        self.gather_budget = raw.nbytes
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

    def keep(self, key: tuple[Any, ...], selection: Selection, most: int) -> Selection:
        """Cache `selection` under `key`, the oldest dropped beyond `most` (its copies too)."""
        with self._lock:
            while len(self.selections) >= most:
                dropped = self.selections.pop(next(iter(self.selections)))
                self.gather_budget += sum(rows.nbytes for rows in dropped.gathered.values())
                dropped.gathered = {}
            return self.selections.setdefault(key, selection)

    def hold(self, selection: Selection, kind: Rows, rows: np.ndarray[Any, Any]) -> None:
        """Keep `rows` gathered for a cached `selection` while the budget allows."""
        with self._lock:
            cached = any(s is selection for s in self.selections.values())
            if cached and kind not in selection.gathered and self.gather_budget >= rows.nbytes:
                self.gather_budget -= rows.nbytes
                selection.gathered[kind] = rows

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


Rows = Literal["unit", "zero", "raw", "sqnorms"]


class Selection:
    """The positions of the rows a filter keeps, and those rows gathered once.

    Apps search with the same few filters again and again: a small selection's rows
    are copied out of the matrix on its first search and reused, so a search scans a
    compact array instead of gathering the rows anew (for a 1 % filter that gather
    costs more than the product). The copies share the matrix's `gather_budget`, so
    all of them together never take more memory than the matrix itself.
    """

    def __init__(self, matrix: Matrix, positions: np.ndarray[Any, np.dtype[np.intp]]) -> None:
        self.positions = positions
        self._matrix = matrix
        self.gathered: dict[Rows, np.ndarray[Any, Any]] = {}  # see Matrix.hold

    def rows(self, kind: Rows, source: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """`source` (the matrix's array of `kind`) at the selected rows."""
        found = self.gathered.get(kind)
        if found is not None:
            return found
        rows: np.ndarray[Any, Any] = source[self.positions]
        self._matrix.hold(self, kind, rows)
        return rows


def _take(
    subset: Selection | np.ndarray[Any, np.dtype[np.intp]] | None,
    kind: Rows,
    source: np.ndarray[Any, Any],
) -> np.ndarray[Any, Any]:
    if subset is None:
        return source
    if isinstance(subset, Selection):
        return subset.rows(kind, source)
    rows: np.ndarray[Any, Any] = source[subset]
    return rows


def nearest(
    matrix: Matrix,
    query: Float32Array,
    k: int,
    metric: Metric,
    subset: Selection | np.ndarray[Any, np.dtype[np.intp]] | None = None,
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
    positions = subset.positions if isinstance(subset, Selection) else subset
    if n == 0 or (positions is not None and positions.size == 0):
        return empty
    raw = matrix.raw
    peak = max(matrix.peak(), float(np.abs(query).max()))
    if peak * peak * query.shape[0] > _FLOAT32_SAFE:
        everyone = np.arange(n) if positions is None else positions
        return _ranked(raw, everyone, query, k, metric)
    mask_from: np.ndarray[Any, np.dtype[np.intp]] | None = None
    if positions is not None and positions.size > n // 4:
        # A large share of the rows: one product over all of them and a mask is cheaper
        # than copying the subset's rows out of the matrix.
        mask_from, subset, positions = positions, None, None
    if metric == "cosine":
        unit, zero = matrix.unit()
        q = query / np.float32(math.sqrt(dot(query, query)))
        scores = row_dots(_take(subset, "unit", unit), q)
        zero_rows = _take(subset, "zero", zero)
        if zero_rows.any():
            scores[zero_rows] = _LOWEST
    elif metric == "inner_product":
        scores = row_dots(_take(subset, "raw", raw), query)
    else:  # l2: rank by 2 r·q - |r|², which orders as -|r - q|²
        scores = 2 * row_dots(_take(subset, "raw", raw), query)
        scores -= _take(subset, "sqnorms", matrix.sqnorms())
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
    return _ranked(raw, top if positions is None else positions[top], query, k, metric)


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
    if metric == "cosine":
        norms = np.sqrt(np.einsum("ij,ij->i", rows, rows) * dot(q64, q64))
        if norms.all():
            distances = 1.0 - row_dots(rows, q64) / norms
        else:
            with np.errstate(invalid="ignore", divide="ignore"):  # zero rows: NaN, ranked last
                distances = 1.0 - row_dots(rows, q64) / norms
    elif metric == "inner_product":
        distances = -row_dots(rows, q64)
    else:
        distances = np.sqrt(np.square(rows - q64).sum(axis=1))
    order = np.lexsort((positions, distances))[:k]
    return positions[order], distances[order]
