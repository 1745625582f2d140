"""The vector domain's SQL on PostgreSQL + pgvector, as psycopg `sql` templates.

Statements only: `PostgresVectors` runs them. Tables are `{table}` identifiers,
values are parameters; the search statement applies its own settings (see
`search_statement`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, LiteralString

from psycopg import sql

from shareddb._vectors.request import DEFAULT_EF_CONSTRUCTION, DEFAULT_M
from shareddb._vectors.validation import (
    MAX_HALFVEC_INDEX_DIMENSION,
    MAX_VECTOR_INDEX_DIMENSION,
    Metric,
)

OPERATORS: Final[dict[str, LiteralString]] = {"cosine": "<=>", "l2": "<->", "inner_product": "<#>"}
OPCLASS_SUFFIX: Final[dict[str, LiteralString]] = {
    "cosine": "cosine_ops",
    "l2": "l2_ops",
    "inner_product": "ip_ops",
}
METRIC_OF_OPCLASS: Final = {"cosine": "cosine", "l2": "l2", "ip": "inner_product"}
DEFAULT_EF_SEARCH: Final = 40  # pgvector's default hnsw.ef_search
DEFAULT_HNSW = {"m": DEFAULT_M, "ef_construction": DEFAULT_EF_CONSTRUCTION}
DEFAULT_IVFFLAT_LISTS: Final = 100

STAGING: Final = sql.Identifier("shareddb_vector_staging")

# A record field given as None keeps the stored value (and takes the default on insert).
UPSERT: Final = sql.SQL(
    "INSERT INTO {table} AS t (qualified_task_id, backend, dimension, embedding, metadata, "
    "content_hash, model) VALUES (%(id)s, COALESCE(%(backend)s, %(default_backend)s), "
    "%(dimension)s, %(embedding)s, COALESCE(%(metadata)s::jsonb, '{{}}'::jsonb), "
    "%(content_hash)s, %(model)s) "
    "ON CONFLICT (qualified_task_id) DO UPDATE SET "
    "backend = COALESCE(%(backend)s, t.backend), embedding = EXCLUDED.embedding, "
    "metadata = COALESCE(%(metadata)s::jsonb, t.metadata), "
    "content_hash = COALESCE(%(content_hash)s, t.content_hash), "
    "model = COALESCE(%(model)s, t.model), updated_at = clock_timestamp() "
    "WHERE t.dimension = EXCLUDED.dimension RETURNING 1"
)
CREATE_STAGING: Final = sql.SQL(
    "CREATE TEMPORARY TABLE {staging} (qualified_task_id text NOT NULL, "
    "default_backend text NOT NULL, dimension integer NOT NULL, embedding vector NOT NULL, "
    "backend text, metadata jsonb, content_hash text, model text) ON COMMIT DROP"
)
PROBE: Final = sql.SQL(
    "SELECT EXISTS (SELECT 1 FROM {table} WHERE qualified_task_id = ANY(%s::text[]))"
)
PROBE_IDS: Final = 64
GET: Final = sql.SQL("SELECT embedding FROM {table} WHERE qualified_task_id = %s")
RECORD_COLUMNS: Final = (
    "qualified_task_id, backend, dimension, embedding, metadata, content_hash, model, "
    "created_at, updated_at"
)
GET_RECORD: Final = sql.SQL(
    "SELECT " + RECORD_COLUMNS + " FROM {table} WHERE qualified_task_id = %s"
)
GET_MANY: Final = sql.SQL(
    "SELECT qualified_task_id, embedding FROM {table} WHERE qualified_task_id = ANY(%s::text[])"
)
EXISTS: Final = sql.SQL("SELECT EXISTS (SELECT 1 FROM {table} WHERE qualified_task_id = %s)")
DELETE_MANY: Final = sql.SQL("DELETE FROM {table} WHERE qualified_task_id = ANY(%s::text[])")
# Ids in code-point order (as SQLite sorts them), read through a server-side cursor.
IDS: Final = sql.SQL(
    'SELECT qualified_task_id FROM {table} WHERE {where} ORDER BY qualified_task_id COLLATE "C"'
)
COUNT_WHERE: Final = sql.SQL("SELECT count(*) FROM {table} WHERE {where}")
# Of the given (id, hash) pairs, in their order: those missing, or stored with another hash
# (or, with a model, made by another model).
# The ids and hashes travel as two JSON arrays: psycopg dumps a text[] element by element in
# Python (at 100k ids that took longer than the query; JSON text is one json.dumps each).
STALE: Final = sql.SQL(
    "SELECT g.id FROM ROWS FROM (json_array_elements_text(%s::json), "
    "json_array_elements_text(%s::json)) WITH ORDINALITY AS g(id, hash, n) "
    "LEFT JOIN {table} AS t ON t.qualified_task_id = g.id "
    "WHERE t.qualified_task_id IS NULL OR t.content_hash IS DISTINCT FROM g.hash "
    "OR (%s::text IS NOT NULL AND t.model IS DISTINCT FROM %s::text) ORDER BY g.n"
)
DIMENSION_OF: Final = sql.SQL("SELECT dimension FROM {table} WHERE qualified_task_id = %s")
DELETE: Final = sql.SQL("DELETE FROM {table} WHERE qualified_task_id = %s")
COUNT: Final = sql.SQL("SELECT count(*) FROM {table}")
COUNT_DIMENSION: Final = sql.SQL("SELECT count(*) FROM {table} WHERE dimension = %s")
# The stored dimensions, read with a skip scan of the (dimension, backend) index.
DIMENSIONS: Final = sql.SQL(
    "WITH RECURSIVE dims(d) AS ("
    "SELECT min(dimension) FROM {table} "
    "UNION ALL SELECT (SELECT min(dimension) FROM {table} WHERE dimension > dims.d) "
    "FROM dims WHERE dims.d IS NOT NULL) "
    "SELECT d FROM dims WHERE d IS NOT NULL LIMIT 20"
)
INDEXES: Final = (
    "SELECT c.relname, n.nspname, am.amname, opc.opcname, c.reloptions, "
    "pg_get_expr(i.indpred, i.indrelid), pg_relation_size(c.oid), i.indisvalid, "
    "pg_get_indexdef(c.oid) "
    "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
    "JOIN pg_namespace n ON n.oid = c.relnamespace "
    "JOIN pg_am am ON am.oid = c.relam "
    "JOIN pg_opclass opc ON opc.oid = i.indclass[0] "
    "WHERE i.indrelid = to_regclass(quote_ident(%s)) AND am.amname IN ('hnsw', 'ivfflat') "
    "ORDER BY c.relname"
)
ANALYZE: Final = sql.SQL("ANALYZE {table} (dimension, backend)")
CREATE_TABLE: Final = sql.SQL(
    "CREATE TABLE IF NOT EXISTS {table} ("
    "id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, "
    "qualified_task_id text NOT NULL, "
    "backend text NOT NULL, "
    "dimension integer NOT NULL, "
    "embedding vector NOT NULL, "
    "created_at timestamptz NOT NULL DEFAULT now(), "
    "updated_at timestamptz NOT NULL DEFAULT now(), "
    "metadata jsonb NOT NULL DEFAULT '{{}}'::jsonb, "
    "content_hash text, "
    "model text, "
    "CONSTRAINT {key} UNIQUE (qualified_task_id), "
    "CONSTRAINT {id_check} CHECK (qualified_task_id <> ''), "
    "CONSTRAINT {dimension_check} CHECK (dimension BETWEEN 1 AND 16000), "
    "CONSTRAINT {embedding_check} CHECK (vector_dims(embedding) = dimension), "
    "CONSTRAINT {metadata_check} CHECK (jsonb_typeof(metadata) = 'object'))"
)
CREATE_DIMENSION_INDEX: Final = sql.SQL(
    "CREATE INDEX IF NOT EXISTS {index} ON {table} (dimension, backend)"
)
CREATE_METADATA_INDEX: Final = sql.SQL(
    "CREATE INDEX IF NOT EXISTS {index} ON {table} USING gin (metadata jsonb_path_ops)"
)
# Ids of one dimension in an order fixed by a seed (tuning's sample of stored queries).
SAMPLE_IDS: Final = sql.SQL(
    "SELECT qualified_task_id FROM {table} WHERE dimension = %s "
    "ORDER BY md5(qualified_task_id || %s) LIMIT %s"
)


COPY_INTO: Final = sql.SQL("COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)")
# Where a batch's rows go: new rows straight into the table, others through the staging
# table (its `default_backend` is the label a new row gets when none is given).
TABLE_COLUMNS: Final = ("qualified_task_id", "backend", "dimension", "embedding")
STAGING_COLUMNS: Final = ("qualified_task_id", "default_backend", "dimension", "embedding")
# From the staging table: new ids inserted, existing ones of the same dimension updated;
# a record field left NULL keeps the stored value. A concurrent writer inserting one of
# the ids makes MERGE fail with a unique violation: the caller runs it again.
MERGE_FROM_STAGING: Final = sql.SQL(
    "MERGE INTO {table} AS t USING pg_temp.shareddb_vector_staging AS s "
    "ON t.qualified_task_id = s.qualified_task_id "
    "WHEN MATCHED AND t.dimension = s.dimension THEN UPDATE SET "
    "backend = COALESCE(s.backend, t.backend), embedding = s.embedding, "
    "metadata = COALESCE(s.metadata, t.metadata), "
    "content_hash = COALESCE(s.content_hash, t.content_hash), "
    "model = COALESCE(s.model, t.model), updated_at = clock_timestamp() "
    "WHEN NOT MATCHED THEN INSERT (qualified_task_id, backend, dimension, embedding, metadata, "
    "content_hash, model) VALUES (s.qualified_task_id, COALESCE(s.backend, s.default_backend), "
    "s.dimension, s.embedding, COALESCE(s.metadata, '{{}}'::jsonb), s.content_hash, s.model)"
)
STAGING_MISMATCH_T: Final = sql.SQL(
    "SELECT s.qualified_task_id, t.dimension, s.dimension "
    "FROM pg_temp.shareddb_vector_staging s "
    "JOIN {table} t ON t.qualified_task_id = s.qualified_task_id "
    "WHERE t.dimension <> s.dimension LIMIT 1"
)
SHOW_SEARCH_SETTINGS: Final = (
    "SELECT concat_ws(', ', 'hnsw.ef_search = ' || current_setting('hnsw.ef_search', true), "
    "'ivfflat.probes = ' || current_setting('ivfflat.probes', true), "
    "'hnsw.iterative_scan = ' || current_setting('hnsw.iterative_scan', true))"
)
_SETTINGS: Final[dict[str, LiteralString]] = {
    "ef_search": "set_config('hnsw.ef_search', %s, true)",
    # Raise ef_search to k without lowering a larger configured value.
    "ef_search_at_least": (
        "set_config('hnsw.ef_search', GREATEST(COALESCE(NULLIF("
        "current_setting('hnsw.ef_search', true), '')::integer, 40), %s::integer)::text, true)"
    ),
    "probes": "set_config('ivfflat.probes', %s, true)",
    "iterative": (
        "set_config('hnsw.iterative_scan', 'relaxed_order', true), "
        "set_config('ivfflat.iterative_scan', 'relaxed_order', true)"
    ),
}


def settings_expression(names: Iterable[str]) -> sql.Composed:
    """``concat(set_config(..., true), ...)``: the search's transaction-local settings."""
    return (
        sql.SQL("concat(") + sql.SQL(", ").join(sql.SQL(_SETTINGS[n]) for n in names) + sql.SQL(")")
    )


def settings_select(names: Iterable[str]) -> sql.Composed:
    return sql.SQL("SELECT ") + settings_expression(names)


def distance_expression(
    dimension: int, metric: Metric, exact: bool, query: sql.Composable
) -> sql.Composed:
    """The ORDER BY expression; approximate searches use the index's own expression."""
    operator = sql.SQL(OPERATORS[metric])
    if exact:
        return sql.SQL("embedding {op} {q}").format(op=operator, q=query)
    d = sql.Literal(dimension)
    if MAX_VECTOR_INDEX_DIMENSION < dimension <= MAX_HALFVEC_INDEX_DIMENSION:
        return sql.SQL("(embedding::halfvec({d})) {op} ({q}::halfvec({d}))").format(
            d=d, op=operator, q=query
        )
    return sql.SQL("(embedding::vector({d})) {op} {q}").format(d=d, op=operator, q=query)


QUERY_PARAMETER: Final = sql.SQL("%s")
# search_by_id: the stored vector, read inside the search statement (one round trip).
QUERY_OF_ID: Final = sql.SQL("(SELECT embedding FROM {table} WHERE qualified_task_id = %s)")


def search_statement(
    table: sql.Identifier,
    dimension: int,
    metric: Metric,
    k: int,
    exact: bool,
    settings: tuple[str, ...] = (),
    *,
    conditions: Sequence[LiteralString] = (),
    by_id: bool = False,
    with_metadata: bool = False,
) -> sql.Composed:
    """The search SELECT: nearest `k` rows of one dimension that meet `conditions`.

    Parameters, in order: the settings' values, the query vector (with `by_id`, the id
    whose stored vector is the query, twice), then each condition's. A filtered
    approximate search (see below) takes the query vector (or the id, once) first,
    then the settings' values, then the conditions' parameters twice.
    ``WHERE dimension = d`` matches the partial index's predicate and the
    distance expression matches its expression, so the planner can scan the index in
    distance order. Exact searches order ties by id (insertion order), like SQLite.

    With `settings` the statement applies them itself, in one round trip: a one-row
    subquery calls ``set_config(..., is_local => true)`` and the search is a LATERAL
    subquery that refers to it. Its reference becomes a one-time filter (or the
    inner side of a nested loop), which the executor evaluates before the index scan
    starts, so pgvector reads the new values when it begins; ``is_local`` ends them
    with the statement's transaction. With iterative scans the index returns rows in
    relaxed order, so the k rows are re-sorted exactly (``+ 0`` keeps the planner
    from trusting the subquery's order).

    A filtered approximate search carries its own fallback: an index scan can stop
    short of k matching rows (``hnsw.max_scan_tuples``, or a graph the filter cut
    apart), so the approximate rows are materialized and, only when there are fewer
    than k of them, an exact scan of the matching rows answers instead. The check is
    an uncorrelated subquery, a one-time filter: the exact branch is never executed
    when the index found k rows. One statement, one round trip, whichever answers.
    """
    given = QUERY_OF_ID.format(table=table) if by_id else QUERY_PARAMETER
    if exact or not conditions:
        return _nearest_rows(
            table, dimension, metric, k, exact, settings, conditions, given, by_id, with_metadata
        )
    # Both scans read the query vector (or the id's stored one) from one place: it is
    # sent, and looked up, once.
    query = sql.SQL("(SELECT v FROM shareddb_query)")
    metadata: LiteralString = ", metadata" if with_metadata else ""
    scans = [
        _nearest_rows(
            table,
            dimension,
            metric,
            k,
            exact,
            these,
            conditions,
            query,
            by_id,
            with_metadata,
            tie=True,
        )
        for exact, these in ((False, settings), (True, ()))
    ]
    return sql.SQL(
        "WITH shareddb_query AS (SELECT {given}::vector AS v), "
        "shareddb_approximate AS MATERIALIZED ({approximate}), "
        "shareddb_found AS (SELECT count(*) AS n FROM shareddb_approximate) "
        "SELECT {output} FROM ("
        "SELECT {columns} FROM shareddb_approximate WHERE (SELECT n FROM shareddb_found) >= {k} "
        "UNION ALL SELECT {columns} FROM ({exact_rows}) AS e "
        "WHERE (SELECT n FROM shareddb_found) < {k}) AS u ORDER BY distance + 0, tie"
    ).format(
        given=given,
        approximate=scans[0],
        output=sql.SQL("qualified_task_id, distance" + metadata),
        columns=sql.SQL("qualified_task_id, distance, tie" + metadata),
        exact_rows=scans[1],
        k=sql.Literal(k),
    )


def _nearest_rows(
    table: sql.Identifier,
    dimension: int,
    metric: Metric,
    k: int,
    exact: bool,
    settings: tuple[str, ...],
    conditions: Sequence[LiteralString],
    query: sql.Composable,
    by_id: bool,
    with_metadata: bool,
    *,
    tie: bool = False,
) -> sql.Composed:
    """One scan of `search_statement`: the nearest `k` rows, approximate or exact."""
    first: list[sql.Composable] = [sql.SQL("dimension = {d}").format(d=sql.Literal(dimension))]
    if by_id:  # no rows at all (not rows at a NULL distance) when the id is missing
        first.append(sql.SQL("{q} IS NOT NULL").format(q=query))
    where = sql.SQL(" AND ").join([*first, *map(sql.SQL, conditions)])
    if settings:
        where = where + sql.SQL(" AND shareddb_settings.applied IS NOT NULL")
    order = sql.SQL("distance, id") if exact else sql.SQL("distance")
    metadata: LiteralString = ", metadata" if with_metadata else ""
    extra = sql.SQL((", id AS tie" if tie else "") + metadata)
    inner = sql.SQL(
        "SELECT qualified_task_id, {expr} AS distance{extra} FROM {table} WHERE {where} "
        "ORDER BY {order} LIMIT {k}"
    ).format(
        expr=distance_expression(dimension, metric, exact, query),
        extra=extra,
        table=table,
        where=where,
        order=order,
        k=sql.Literal(k),
    )
    if not settings:
        return inner
    resort = sql.SQL(" ORDER BY r.distance + 0") if "iterative" in settings else sql.SQL("")
    outer_extra = sql.SQL((", r.tie" if tie else "") + (", r.metadata" if with_metadata else ""))
    return sql.SQL(
        "SELECT r.qualified_task_id, r.distance{extra} "
        "FROM (SELECT {applied}) AS shareddb_settings(applied), LATERAL ({inner}) AS r{resort}"
    ).format(extra=outer_extra, applied=settings_expression(settings), inner=inner, resort=resort)


class StatementCache:
    """One table's statements rendered to bytes once per shape (psycopg then caches its parse).

    Rendering a composed statement costs more client time than a short query's round
    trip is worth shaving, so every statement a storage runs is rendered once.
    """

    def __init__(self, table: str) -> None:
        self.ident = sql.Identifier(table)
        self._rendered: dict[tuple[Any, ...], bytes] = {}

    def statement(self, key: tuple[Any, ...], build: Callable[[], sql.Composable]) -> bytes:
        rendered = self._rendered.get(key)
        if rendered is None:
            rendered = build().as_string(None).encode()
            self._rendered[key] = rendered
        return rendered

    def simple(self, name: str, template: sql.SQL) -> bytes:
        """`template` with this table in ``{table}``."""
        return self.statement((name,), lambda: template.format(table=self.ident))
