"""A search's arguments as one value, checked once for `search`, `explain` and `tune`."""

from __future__ import annotations

from typing import NamedTuple

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
    check_method,
    check_metric,
)
from shareddb.errors import InvalidArgumentError


class SearchRequest(NamedTuple):
    """A checked search: the float32 query and how to search for its `k` nearest rows."""

    query: Float32Array
    k: int
    metric: Metric
    backend: str | None
    exact: bool
    ef_search: int | None
    probes: int | None

    @property
    def dimension(self) -> int:
        return int(self.query.shape[0])


def search_request(
    query: object,
    k: object,
    metric: object,
    backend: object,
    exact: object,
    ef_search: object,
    probes: object,
) -> SearchRequest:
    """The arguments of `VectorStorage.search` checked, or the error that names the bad one."""
    return SearchRequest(
        as_query(query, metric),
        check_k(k),
        check_metric(metric),
        None if backend is None else check_backend(backend),
        bool(exact),
        None if ef_search is None else as_int(ef_search, "ef_search", 1, MAX_EF_SEARCH),
        None if probes is None else as_int(probes, "probes", 1, MAX_PROBES),
    )


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
