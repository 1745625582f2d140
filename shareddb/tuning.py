"""Pick an index's search setting from measurements on the vectors already stored.

`tune()` answers "which ``ef_search`` (HNSW) or ``probes`` (IVFFlat) reaches the recall
I need, and what does it cost?" on your data. Give it your real queries (``queries=``, a
2-D array: every one is used) or let it sample stored vectors as queries; it gets their
exact neighbours with ``search(exact=True)`` and sweeps the setting of the index upward
until recall@k reaches the target. A stored vector's own row is excluded from both its
exact and its approximate answer (``search(..., exclude=[its id])``), so it is never
counted as finding itself; stored vectors still make easier queries than new ones (each
sits in the index next to its neighbours), so prefer real queries. Pass the chosen value
to ``VectorStorage.search``::

    result = tune(vectors, 384, metric="cosine", queries=real_queries)
    print(result.table())
    hits = vectors.search(query, k=10, metric="cosine", ef_search=result.value)

The command line does the same: ``shareddb tune --dimension 384 --queries queries.npy``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from shareddb._engines.postgres.pgvector import (
    INSTALLED_VERSION,
    ITERATIVE_SCAN_PGVECTOR,
    version_tuple,
)
from shareddb._vectors.validation import MAX_K, Metric, as_dimension, as_int, check_metric
from shareddb.errors import InvalidArgumentError, InvalidEmbeddingError, ShareddbError

if TYPE_CHECKING:
    from shareddb.vectors import IndexInfo, VectorStorage

__all__ = ["TuneResult", "TuneRow", "check_queries", "tune"]

DEFAULT_SAMPLE = 100  # stored vectors used as queries when no queries are given

# A query of the measurement: the id of the stored vector it is (None: a given query).
Probe = tuple[str | None, np.ndarray[Any, Any]]

# pgvector accepts ef_search 1..1000; below k an HNSW scan returns fewer than k rows.
EF_SEARCH_STEPS = (10, 20, 40, 60, 80, 100, 120, 160, 200, 300, 400, 600, 800, 1000)
PROBES_STEPS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
PARAMETER = {"hnsw": "ef_search", "ivfflat": "probes"}


@dataclass(frozen=True)
class TuneRow:
    """One setting of the sweep: its recall@k on the queries and its search latency."""

    value: int
    recall: float
    p50_ms: float
    p95_ms: float


@dataclass(frozen=True)
class TuneResult:
    """What `tune()` measured, and the smallest setting that met the target.

    `value` is None when no setting of the sweep reached `target_recall` (rebuild
    the index with a larger ``m`` / ``ef_construction`` or more ``lists``, or use
    ``exact=True``). `rows` lists every setting tried, in increasing order; the
    sweep stops at the first one that meets the target. `exact_p50_ms` is the
    latency of an exact search over the same rows, for comparison. `queries` says
    what was measured: ``"given"`` (every one of the queries passed, `sample` of them)
    or ``"stored"`` (`sample` stored vectors, `sample_ids`, each one's own row
    excluded from its answers).
    """

    index: str
    method: str
    parameter: str
    value: int | None
    dimension: int
    metric: str
    target_recall: float
    k: int
    sample: int
    rows: tuple[TuneRow, ...]
    exact_p50_ms: float
    sample_ids: tuple[str, ...] = ()
    queries: Literal["stored", "given"] = "stored"

    @property
    def met(self) -> bool:
        """True when a setting reached the target recall."""
        return self.value is not None

    @property
    def chosen(self) -> TuneRow | None:
        """The row of the chosen setting, or None."""
        return next((r for r in self.rows if r.value == self.value), None)

    def search_kwargs(self) -> dict[str, int]:
        """Keyword arguments for ``VectorStorage.search`` (empty when nothing met the target)."""
        return {} if self.value is None else {self.parameter: self.value}

    def table(self) -> str:
        """The sweep as a plain-text table followed by a one-line recommendation."""
        head = f"{self.parameter:>10}  recall@{self.k:<3}  p50 ms  p95 ms"
        if self.queries == "given":
            measured = f"all {self.sample} given queries"
        else:
            measured = (
                f"{self.sample} stored vectors as queries, each one's own row excluded "
                "(stored vectors are easier queries than new ones: pass real queries with "
                "queries= or --queries FILE.npy)"
            )
        lines = [
            f"index {self.index} ({self.method}, {self.metric}, dimension {self.dimension}); "
            f"target recall@{self.k} >= {self.target_recall:g}; measured on {measured}",
            head,
        ]
        for r in self.rows:
            mark = "  <- smallest meeting the target" if r.value == self.value else ""
            lines.append(
                f"{r.value:>10}  {r.recall:>9.3f}  {r.p50_ms:>6.2f}  {r.p95_ms:>6.2f}{mark}"
            )
        lines.append(f"{'exact':>10}  {1.0:>9.3f}  {self.exact_p50_ms:>6.2f}")
        if self.value is None:
            lines.append(
                f"no {self.parameter} up to {self.rows[-1].value if self.rows else '-'} reaches "
                f"recall@{self.k} >= {self.target_recall:g}; rebuild the index with larger "
                "parameters, or search with exact=True"
            )
        else:
            lines.append(
                f"use {self.parameter}={self.value}: "
                f"search(query, k={self.k}, metric={self.metric!r}, "
                f"{self.parameter}={self.value})"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def tune(
    storage: VectorStorage,
    dimension: int,
    *,
    metric: str,
    target_recall: float = 0.95,
    k: int = 10,
    sample: int | None = None,
    method: str | None = None,
    values: Sequence[int] | None = None,
    queries: object = None,
    seed: int = 0,
) -> TuneResult:
    """Measure recall@k and latency of the index for `dimension` / `metric`; pick a setting.

    With `queries` (your real queries, a 2-D array with one per row) every one of them
    is used. Without, `sample` stored vectors of that dimension (default 100, the same
    ones for the same `seed` and rows) are the queries, and each one's own row is
    excluded (``search(..., exclude=[its id])``) from both its exact and its
    approximate answer. It takes the exact top `k` from ``search(exact=True)``, then
    runs the same searches through the index at increasing ``ef_search`` (HNSW) or
    ``probes`` (IVFFlat) until the mean recall@k reaches `target_recall`. Every search
    goes through `storage.search`, so the latencies are what your application will see.

    Stored vectors make easier queries than new ones (each sits in the index's graph
    or list next to its neighbours), so the recall measured on them runs high: on
    stdlib-minilm (1,966 rows, HNSW m=16) 100 stored vectors showed recall@10 0.999 at
    ``ef_search=10``, where the dataset's 200 real queries got 0.963. Pass real
    `queries` when you have them. Use it after loading (and after large changes to the data). It
    only reads, and checks first that searches use the index (an unanalyzed table
    can make the planner skip it). Raises ShareddbError on SQLite (searches there
    are exact), when no index matches (build one with ``create_index``), or when
    fewer than ``k + 1`` vectors of that dimension are stored (``k`` with `queries`);
    InvalidArgumentError for a bad argument, InvalidEmbeddingError for bad `queries`.

    :param sample: how many stored vectors to use as queries (not with `queries`).
    :param method: ``"hnsw"`` or ``"ivfflat"`` when both kinds exist for the
        dimension and metric (keep one: the planner picks either).
    :param values: the settings to sweep, instead of the built-in ladder.
    :param queries: real query vectors (a 2-D array of numbers, one query of
        `dimension` per row); all of them are measured (see `check_queries`).
    :param seed: picks the sample of stored vectors.
    """
    dim = as_dimension(dimension)
    checked_metric = check_metric(metric)
    if isinstance(target_recall, bool) or not isinstance(target_recall, int | float):
        raise InvalidArgumentError(f"target_recall={target_recall!r} must be a number in (0, 1]")
    if not 0 < target_recall <= 1:
        raise InvalidArgumentError(
            f"target_recall={target_recall!r} must be in (0, 1]; 0.95 is common"
        )
    top = as_int(k, "k", 1, MAX_K)
    if queries is not None and sample is not None:
        raise InvalidArgumentError(
            f"sample={sample!r} picks stored vectors as queries, and queries= were given: "
            "every given query is used",
            fix="drop sample= (or drop queries= to measure on stored vectors)",
        )
    size = as_int(DEFAULT_SAMPLE if sample is None else sample, "sample", 1, 100_000)
    given = None if queries is None else check_queries(queries, dim)
    db = storage.db
    where = f"table {storage.table!r}"
    if db.get_backend_type() != "postgres":
        raise ShareddbError(
            f"tune() measures an approximate index, and {where} is on SQLite, where every "
            "search is exact (recall 1.0); there is nothing to tune"
        )
    info = _pick_index(storage, dim, checked_metric, method, where)
    parameter = PARAMETER[info.method]
    stored = storage.count(dimension=dim)
    if given is None and stored < top + 1:
        raise ShareddbError(
            f"{where} holds {stored} embeddings of dimension {dim}; "
            f"tune() needs at least k + 1 = {top + 1} to leave each query's own row out; "
            "load the data first"
        )
    if given is not None and stored < top:
        raise ShareddbError(
            f"{where} holds {stored} embeddings of dimension {dim}, fewer than k = {top}; "
            "load the data first"
        )
    probes: list[Probe] = (
        _stored_queries(storage, dim, size, seed)
        if given is None
        else [(None, row) for row in given]
    )
    # An HNSW scan yields at most ef_search rows. Excluding a stored query's own row
    # leaves ef_search - 1 of them: pgvector 0.8+ scans on (iterative scan) until k
    # rows pass, but before 0.8 search() would answer a short result exactly, so
    # there the sweep starts at k + 1.
    floor = top + 1 if given is None and not _iterative_scans(storage) else top
    ladder = _ladder(info, values, floor)
    _check_plan(storage, info, probes[0], top, checked_metric, parameter, ladder[0], where)
    exact_answers, exact_seconds = _run(storage, probes, top, checked_metric, {"exact": True})
    _run(storage, probes, top, checked_metric, {parameter: ladder[0]})  # warm the index up
    rows: list[TuneRow] = []
    chosen: int | None = None
    for value in ladder:
        answers, seconds = _run(storage, probes, top, checked_metric, {parameter: value})
        rows.append(
            TuneRow(
                value=value,
                recall=_recall(answers, exact_answers),
                p50_ms=_ms(seconds, 50),
                p95_ms=_ms(seconds, 95),
            )
        )
        if rows[-1].recall >= target_recall:
            chosen = value
            break
    return TuneResult(
        index=info.name,
        method=info.method,
        parameter=parameter,
        value=chosen,
        dimension=dim,
        metric=checked_metric,
        target_recall=float(target_recall),
        k=top,
        sample=len(probes),
        rows=tuple(rows),
        exact_p50_ms=_ms(exact_seconds, 50),
        sample_ids=tuple(task_id for task_id, _ in probes if task_id is not None),
        queries="stored" if given is None else "given",
    )


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise InvalidArgumentError(f"{name}={value!r} must be a whole number >= 1")
    return int(value)


def _pick_index(
    storage: VectorStorage, dim: int, metric: Metric, method: str | None, where: str
) -> IndexInfo:
    if method is not None and method not in PARAMETER:
        raise InvalidArgumentError(f"method={method!r} must be 'hnsw' or 'ivfflat'")
    found = [
        i
        for i in storage.indexes()
        if i.dimension == dim
        and i.metric == metric
        and i.valid
        and (method is None or i.method == method)
    ]
    if not found:
        kind = method or "hnsw"
        raise ShareddbError(
            f"{where} has no {method or 'vector'} index for dimension {dim} and metric "
            f"{metric!r}, so searches are exact and there is nothing to tune; build one with "
            f"create_index({dim}, method={kind!r}, metric={metric!r}) and tune again"
        )
    if len(found) > 1:
        names = ", ".join(sorted(i.name for i in found))
        raise ShareddbError(
            f"{where} has several indexes for dimension {dim} and metric {metric!r} ({names}) "
            "and the planner picks one; pass method='hnsw' or method='ivfflat', and keep one "
            "of them (drop_index the other)"
        )
    return found[0]


def _ladder(info: IndexInfo, values: Sequence[int] | None, floor: int) -> list[int]:
    if values is not None:
        given = [_positive_int(v, "each of values") for v in values]
        if not given:
            raise InvalidArgumentError("values is empty; pass at least one setting, or None")
    if info.method == "hnsw":
        # search() raises ef_search to k: what runs is at least that (see `floor`).
        return sorted({max(v, floor) for v in (EF_SEARCH_STEPS if values is None else given)})
    if values is not None:
        return sorted(set(given))
    lists = int(info.parameters.get("lists", 0)) or max(PROBES_STEPS)
    return [v for v in PROBES_STEPS if v < lists] + [lists]


def _stored_queries(storage: VectorStorage, dim: int, size: int, seed: int) -> list[Probe]:
    probes: list[Probe] = []
    for task_id in _sample_ids(storage, dim, size, seed):
        vector = storage.get(task_id)
        if vector is not None:  # deleted meanwhile
            probes.append((task_id, vector))
    return probes


def check_queries(queries: object, dimension: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    """`queries` as a float32 matrix with one query of `dimension` per row, or
    InvalidEmbeddingError saying what is wrong with it (dtype, shape, dimension, values).
    """
    try:
        matrix = np.asarray(queries)
    except (TypeError, ValueError) as e:
        raise InvalidEmbeddingError(
            f"queries must be a 2-D array of numbers: {e}",
            fix=f"pass a numpy array of shape (n, {dimension})",
        ) from None
    if matrix.dtype.kind not in "fiu":
        raise InvalidEmbeddingError(
            f"queries has dtype {matrix.dtype}, not numbers",
            fix=f"pass float32 (or other real numbers) of shape (n, {dimension})",
        )
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise InvalidEmbeddingError(
            f"queries has shape {matrix.shape}; tune needs a 2-D array with one query per row",
            fix=f"pass shape (n, {dimension}) with n >= 1 (one query q: q[None, :])",
        )
    if matrix.shape[1] != dimension:
        raise InvalidEmbeddingError(
            f"queries has dimension {matrix.shape[1]} (shape {matrix.shape}), "
            f"not the index's dimension {dimension}",
            fix=f"pass queries embedded with the model that made the {dimension}-d vectors",
        )
    with np.errstate(over="ignore", invalid="ignore"):  # reported below, as a value error
        result = matrix.astype(np.float32)
    if not np.isfinite(result).all():
        bad = int(np.flatnonzero(~np.isfinite(result).all(axis=1))[0])
        raise InvalidEmbeddingError(
            f"queries holds NaN or infinite values (first in row {bad}, or too large for float32)",
            fix="pass finite numbers",
        )
    return result


def _iterative_scans(storage: VectorStorage) -> bool:
    """Whether pgvector scans an index on until enough rows pass a filter (0.8+)."""
    version = storage.db.pgvector_version
    if version is None:
        with storage.db.connection() as conn:
            row = conn.execute(INSTALLED_VERSION).fetchone()
        version = str(row[0]) if row else "0"
    return version_tuple(version) >= ITERATIVE_SCAN_PGVECTOR


def _check_plan(
    storage: VectorStorage,
    info: IndexInfo,
    probe: Probe,
    k: int,
    metric: Metric,
    parameter: str,
    value: int,
    where: str,
) -> None:
    """Raise unless a search at this setting (the one `_run` makes) scans `info`'s index."""
    options: dict[str, Any] = {parameter: value}
    task_id, query = probe
    exclude = None if task_id is None else [task_id]
    plan = storage.explain(query, k, metric=metric, exclude=exclude, **options)
    if info.name not in plan:
        steps = [line.strip()[:80] for line in plan.splitlines() if not line.startswith("--")]
        raise ShareddbError(
            f"searches of dimension {info.dimension} in {where} don't use index {info.name}: "
            f"the planner chose {' / '.join(steps[:3])}. Either the table has no statistics "
            f"yet (run ANALYZE {storage.table} after loading, then tune again) or it is small "
            "enough that a sequential scan is cheaper, and such searches are exact: there is "
            "nothing to tune"
        )


def _sample_ids(storage: VectorStorage, dim: int, size: int, seed: int) -> list[str]:
    """`size` ids of that dimension in a pseudo-random order fixed by `seed`."""
    return storage.db.engine.vector_ops(storage.table).sample_ids(dim, size, seed)


def _run(
    storage: VectorStorage,
    queries: list[Probe],
    k: int,
    metric: Metric,
    options: dict[str, Any],
) -> tuple[list[list[str]], list[float]]:
    """Each query's top `k` ids, and each search's seconds.

    A stored query's own row is excluded by the search itself, so its answer holds
    `k` other rows and it is never counted as finding itself.
    """
    answers: list[list[str]] = []
    seconds: list[float] = []
    clock = time.perf_counter
    for task_id, vector in queries:
        exclude = None if task_id is None else (task_id,)
        start = clock()
        hits = storage.search(vector, k, metric=metric, exclude=exclude, **options)
        seconds.append(clock() - start)
        answers.append([h.qualified_task_id for h in hits])
    return answers, seconds


def _recall(found: list[list[str]], exact: list[list[str]]) -> float:
    """Mean over queries of |found ∩ exact| / |exact|."""
    scores = [len(set(f) & set(e)) / len(e) for f, e in zip(found, exact, strict=True) if e]
    return statistics.fmean(scores) if scores else 0.0


def _ms(seconds: list[float], pct: float) -> float:
    return float(np.percentile(np.asarray(seconds), pct)) * 1000 if seconds else 0.0
