"""A search's arguments as one value, checked once for `search`, `explain` and `tune`."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Final, NamedTuple

from shareddb._vectors.filters import Filter, parse_filter
from shareddb._vectors.validation import (
    MAX_EF_SEARCH,
    MAX_PROBES,
    Float32Array,
    Method,
    Metric,
    as_dimension,
    as_int,
    as_query,
    check_backend,
    check_indexable,
    check_k,
    check_label,
    check_method,
    check_metric,
    check_task_id,
)
from shareddb.errors import InvalidArgumentError


class RowFilter(NamedTuple):
    """Which rows a search, `ids()` or `count()` may see, checked; None means any."""

    dimension: int | None = None
    backend: str | None = None
    model: str | None = None
    where: Filter | None = None
    exclude: tuple[str, ...] = ()

    @property
    def narrows(self) -> bool:
        """Whether it keeps fewer rows of a dimension than all of them."""
        return bool(
            self.backend is not None or self.model is not None or self.where or self.exclude
        )


NO_FILTER = RowFilter()


def row_filter(
    *,
    dimension: object = None,
    backend: object = None,
    model: object = None,
    where: object = None,
    exclude: object = None,
) -> RowFilter:
    """The row filter of `ids`, `count` and `search`, every part checked."""
    excluded: tuple[str, ...] = ()
    if exclude is not None:
        if isinstance(exclude, str | bytes) or not isinstance(exclude, Iterable):
            raise InvalidArgumentError(
                f"exclude={exclude!r} is not a collection of ids",
                fix="pass a list or set of qualified task ids",
            )
        excluded = tuple(dict.fromkeys(check_task_id(i) for i in exclude))
    return RowFilter(
        None if dimension is None else as_dimension(dimension),
        None if backend is None else check_backend(backend),
        None if model is None else check_label("model", model),
        None if where is None else parse_filter(where),
        excluded,
    )


class SearchRequest(NamedTuple):
    """A checked search: the float32 query (or the id whose vector is the query) and how."""

    query: Float32Array | None
    k: int
    metric: Metric
    rows: RowFilter
    exact: bool
    ef_search: int | None
    probes: int | None
    max_distance: float | None = None
    by_id: str | None = None
    with_metadata: bool = False

    @property
    def dimension(self) -> int:
        assert self.query is not None
        return int(self.query.shape[0])


def search_request(
    query: object,
    k: object,
    metric: object,
    rows: RowFilter,
    exact: object,
    ef_search: object,
    probes: object,
    max_distance: object = None,
    *,
    by_id: str | None = None,
    with_metadata: object = False,
) -> SearchRequest:
    """The arguments of `VectorStorage.search` checked, or the error that names the bad one."""
    if max_distance is not None and (
        isinstance(max_distance, bool)
        or not isinstance(max_distance, int | float)
        or not math.isfinite(max_distance)
    ):
        raise InvalidArgumentError(
            f"max_distance={max_distance!r} must be a finite number",
            fix="pass the largest distance a hit may have, or None for no limit",
        )
    return SearchRequest(
        None if by_id is not None else as_query(query, metric),
        check_k(k),
        check_metric(metric),
        rows,
        bool(exact),
        None if ef_search is None else as_int(ef_search, "ef_search", 1, MAX_EF_SEARCH),
        None if probes is None else as_int(probes, "probes", 1, MAX_PROBES),
        None if max_distance is None else float(max_distance),
        by_id,
        bool(with_metadata),
    )


# HNSW build parameters when none are given (pgvector's own defaults).
DEFAULT_M: Final = 16
DEFAULT_EF_CONSTRUCTION: Final = 64


class IndexRequest(NamedTuple):
    """A checked `create_index`: which rows, how, and with what build parameters."""

    dimension: int
    method: Method
    metric: Metric
    m: int
    ef_construction: int
    lists: int | None
    concurrently: bool


def index_request(
    dimension: object,
    method: object,
    metric: object,
    m: object,
    ef_construction: object,
    lists: object,
    concurrently: object,
) -> IndexRequest:
    """The arguments of `VectorStorage.create_index` checked (pgvector's own limits)."""
    dim = as_dimension(dimension)
    check_indexable(dim)
    checked_method = check_method(method)
    checked_metric = check_metric(metric)
    m_value = as_int(m, "m", 2, 100)
    ef_value = as_int(ef_construction, "ef_construction", 4, 1000)
    if checked_method == "hnsw" and ef_value < 2 * m_value:
        raise InvalidArgumentError(
            f"ef_construction={ef_value} must be at least 2 * m = {2 * m_value} "
            "(pgvector's rule); raise ef_construction or lower m"
        )
    return IndexRequest(
        dim,
        checked_method,
        checked_metric,
        m_value,
        ef_value,
        None if lists is None else as_int(lists, "lists", 1, MAX_PROBES),
        bool(concurrently),
    )
