"""Vector indexes on PostgreSQL: building, dropping and listing them, and watching a build.

`PostgresIndexes.create()` sizes ``maintenance_work_mem`` for the build
(`build_memory_kb`), logs progress from ``pg_stat_progress_create_index`` while a
long build runs (`read_progress`, which also serves ``shareddb init``'s progress
lines), and runs ANALYZE afterwards so the planner sees the new index.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Final

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from shareddb._core.types import PgConnection
from shareddb._engines.postgres.vector_sql import (
    ANALYZE,
    COUNT_DIMENSION,
    DEFAULT_HNSW,
    DEFAULT_IVFFLAT_LISTS,
    INDEXES,
    METRIC_OF_OPCLASS,
    OPCLASS_SUFFIX,
)
from shareddb._vectors.request import IndexRequest
from shareddb._vectors.results import IndexInfo
from shareddb._vectors.validation import (
    MAX_VECTOR_INDEX_DIMENSION,
    Method,
    Metric,
    vector_index_name,
)
from shareddb.errors import InvalidArgumentError, ShareddbError

if TYPE_CHECKING:
    from shareddb._engines.postgres.engine import PostgresEngine

logger = logging.getLogger("shareddb.vectors")

IDLE = TransactionStatus.IDLE
INTRANS = TransactionStatus.INTRANS

# create_index raises maintenance_work_mem for its session up to this (kB): 1 GB.
MAX_BUILD_MEMORY_KB: Final = 1024 * 1024
PROGRESS_AFTER: Final = 3.0  # seconds of index build before progress is logged
PROGRESS_EVERY: Final = 10.0
# The build in progress in this database (of one backend pid, or any).
PROGRESS: Final = (
    "SELECT index_relid::regclass::text, phase, tuples_done, tuples_total, blocks_done, "
    "blocks_total FROM pg_stat_progress_create_index "
    "WHERE datname = current_database() AND (pid = %s OR %s::integer IS NULL) LIMIT 1"
)
MAINTENANCE_WORK_MEM_KB: Final = (
    "SELECT setting::bigint * CASE unit WHEN 'kB' THEN 1 WHEN 'MB' THEN 1024 "
    "WHEN 'GB' THEN 1048576 ELSE 1 END, current_setting('maintenance_work_mem') "
    "FROM pg_settings WHERE name = 'maintenance_work_mem'"
)
SET_MAINTENANCE_WORK_MEM: Final = "SELECT set_config('maintenance_work_mem', %s, %s)"


def create_index_statement(
    table: sql.Identifier,
    name: str,
    dimension: int,
    method: Method,
    metric: Metric,
    parameters: dict[str, int],
    concurrently: bool,
) -> sql.Composed:
    halfvec = dimension > MAX_VECTOR_INDEX_DIMENSION
    kind = sql.SQL("halfvec" if halfvec else "vector")
    opclass = sql.SQL(("halfvec_" if halfvec else "vector_") + OPCLASS_SUFFIX[metric])
    options = sql.SQL(", ").join(
        sql.SQL("{} = {}").format(sql.SQL(key), sql.Literal(value))  # keys are our own constants
        for key, value in parameters.items()
        if key in ("m", "ef_construction", "lists")
    )
    return sql.SQL(
        "CREATE INDEX {concurrently}IF NOT EXISTS {name} ON {table} USING {method} "
        "((embedding::{kind}({d})) {opclass}) WITH ({options}) WHERE dimension = {d}"
    ).format(
        concurrently=sql.SQL("CONCURRENTLY " if concurrently else ""),
        name=sql.Identifier(name),
        table=table,
        method=sql.SQL("hnsw" if method == "hnsw" else "ivfflat"),
        kind=kind,
        d=sql.Literal(dimension),
        opclass=opclass,
        options=options,
    )


def build_memory_kb(method: str, rows: int, dimension: int, parameters: dict[str, int]) -> int:
    """Estimated maintenance_work_mem (kB) for building the index in memory.

    HNSW keeps the whole graph in memory while it fits: per element the vector, its
    neighbour lists (2m at layer 0, m on the few upper layers, 16 bytes a candidate)
    and about 200 bytes of bookkeeping. IVFFlat needs its k-means sample: 50 rows a
    list, at least 10,000. Both get 25 % headroom.
    """
    value = 8 + (2 if dimension > MAX_VECTOR_INDEX_DIMENSION else 4) * dimension
    if method == "hnsw":
        m = parameters.get("m", 16)
        per_element = value + (2 * m + m // 2) * 16 + 200
        needed = rows * per_element
    else:
        lists = parameters.get("lists", DEFAULT_IVFFLAT_LISTS)
        samples = min(rows, max(lists * 50, 10_000))
        needed = (samples + lists) * value * 2
    return int(needed * 1.25 / 1024) + 1024


def parse_index(
    name: str,
    method: str,
    opclass: str,
    options: list[str] | None,
    predicate: str | None,
    size: int,
    valid: bool,
    definition: str,
) -> IndexInfo:
    """IndexInfo from the catalog: dimension from the predicate, metric from the opclass."""
    match = re.search(r"dimension\s*=\s*(\d+)", predicate or "") or re.search(
        r"(?:vector|halfvec)\((\d+)\)", definition
    )
    dimension = int(match.group(1)) if match else 0
    family = re.sub(r"^(vector|halfvec|bit|sparsevec)_|_ops$", "", opclass)
    parameters: dict[str, int] = (
        dict(DEFAULT_HNSW) if method == "hnsw" else {"lists": DEFAULT_IVFFLAT_LISTS}
    )
    for option in options or []:
        key, _, value = option.partition("=")
        if key in parameters and value.isdigit():
            parameters[key] = int(value)
    return IndexInfo(
        name=name,
        dimension=dimension,
        metric=METRIC_OF_OPCLASS.get(family, family),
        method=method,
        parameters=parameters,
        size=int(size),
        valid=bool(valid),
        halfvec=opclass.startswith("halfvec"),
    )


def _same_build(existing: IndexInfo, parameters: dict[str, int], default_lists: bool) -> bool:
    if existing.method == "ivfflat" and default_lists:
        return True  # lists=None accepts whatever the index was built with
    return all(existing.parameters.get(k) == v for k, v in parameters.items())


def _describe(parameters: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in parameters.items())


class PostgresIndexes:
    """The vector indexes of one table; every method runs on the connection it is given."""

    def __init__(self, engine: PostgresEngine, table: str) -> None:
        self._engine = engine
        self._table = table
        self._ident = sql.Identifier(table)

    def create(self, c: PgConnection, request: IndexRequest) -> str:
        """Build the index `request` asks for on `c` unless it exists; its name."""
        dimension, method, metric, m, ef_construction, lists, concurrently = request
        name = vector_index_name(self._table, method, metric, dimension)
        rows = self._count_dimension(c, dimension)
        parameters: dict[str, int]
        if method == "hnsw":
            parameters = {"m": m, "ef_construction": ef_construction}
        else:
            parameters = {"lists": lists if lists is not None else max(1, rows // 1000)}
            parameters["lists"] = min(parameters["lists"], 32_768)
        existing = next((i for i in self.listing(c) if i.name == name), None)
        if existing is not None:
            if existing.valid and _same_build(existing, parameters, lists is None):
                logger.debug("index %s exists; nothing to build", name)
                return name
            if existing.valid:
                raise InvalidArgumentError(
                    f"index {name} exists with {_describe(existing.parameters)}, not "
                    f"{_describe(parameters)}",
                    fix=f"drop_index({name!r}) first to rebuild it (shareddb index drop {name})",
                )
            logger.warning("dropping invalid index %s (a failed CONCURRENTLY build)", name)
            self._drop(c, existing, concurrently)
        statement = create_index_statement(
            self._ident, name, dimension, method, metric, parameters, concurrently
        )
        needed_kb = build_memory_kb(method, rows, dimension, parameters)
        started = time.monotonic()
        # Behind a transaction pooler a session setting would land on one server
        # connection and the build on another (and stay for its next client); the pid
        # the connection was given is the pooler's, so progress is looked up by index.
        pooled = self._engine.pooler == "transaction"
        with (
            _maintenance_memory(
                c, 0 if pooled and concurrently else needed_kb, session=concurrently
            ),
            _progress(self._engine, None if pooled else c.info.backend_pid, name),
        ):
            c.execute(statement)
        # Fresh statistics for "dimension = d" let the planner pick the new index.
        c.execute(ANALYZE.format(table=self._ident))
        elapsed = time.monotonic() - started
        log = logger.info if elapsed >= PROGRESS_AFTER else logger.debug
        log("built index %s on %s rows in %.1f s", name, f"{rows:,}", elapsed)
        return name

    def _count_dimension(self, conn: PgConnection, dimension: int) -> int:
        row = conn.execute(COUNT_DIMENSION.format(table=self._ident), (dimension,)).fetchone()
        assert row is not None
        return int(row[0])

    def drop(self, c: PgConnection, name: str, concurrently: bool) -> None:
        """Drop the vector index `name` of this table, or InvalidArgumentError naming them."""
        found = next((i for i in self._index_rows(c) if i[0].name == name), None)
        if found is None:
            known = ", ".join(i.name for i in self.listing(c)) or "none"
            raise InvalidArgumentError(
                f"{name!r} is not a vector index of table {self._table} (its vector "
                f"indexes: {known}); see indexes()"
            )
        self._drop(c, found[0], concurrently, schema=found[1])

    def _drop(
        self, conn: PgConnection, index: IndexInfo, concurrently: bool, schema: str | None = None
    ) -> None:
        target = sql.Identifier(schema, index.name) if schema else sql.Identifier(index.name)
        verb = sql.SQL(
            "DROP INDEX CONCURRENTLY IF EXISTS" if concurrently else "DROP INDEX IF EXISTS"
        )
        conn.execute(sql.SQL("{} {}").format(verb, target))

    def listing(self, conn: PgConnection) -> list[IndexInfo]:
        return [info for info, _ in self._index_rows(conn)]

    def _index_rows(self, conn: PgConnection) -> list[tuple[IndexInfo, str]]:
        result = []
        for (
            name,
            schema,
            method,
            opclass,
            options,
            predicate,
            size,
            valid,
            definition,
        ) in conn.execute(INDEXES, (self._table,)):
            result.append(
                (
                    parse_index(name, method, opclass, options, predicate, size, valid, definition),
                    str(schema),
                )
            )
        return result


@contextmanager
def _maintenance_memory(conn: PgConnection, needed_kb: int, *, session: bool) -> Iterator[None]:
    """Raise maintenance_work_mem to `needed_kb` (capped) for this build, then restore it."""
    row = conn.execute(MAINTENANCE_WORK_MEM_KB).fetchone()
    assert row is not None
    current_kb, current = int(row[0]), str(row[1])
    target_kb = min(needed_kb, MAX_BUILD_MEMORY_KB)
    if target_kb <= current_kb:
        yield
        return
    logger.info(
        "raising maintenance_work_mem from %s to %d MB for this index build",
        current,
        target_kb // 1024,
    )
    conn.execute(SET_MAINTENANCE_WORK_MEM, (f"{target_kb}kB", not session))
    try:
        yield
    finally:
        if not conn.broken and conn.info.transaction_status in (IDLE, INTRANS):
            conn.execute(SET_MAINTENANCE_WORK_MEM, (current, not session))


def read_progress(conn: PgConnection, pid: int | None = None) -> tuple[str, str] | None:
    """A running index build, from ``pg_stat_progress_create_index``: its index and progress.

    The progress reads ``building index: loading tuples, 3,442 of 6,000 rows (57%)``.
    """
    row = conn.execute(PROGRESS, (pid, pid)).fetchone()
    if row is None:
        return None
    index, phase, tuples_done, tuples_total, blocks_done, blocks_total = row
    text = str(phase)
    if tuples_total:
        share = 100 * tuples_done / tuples_total
        text += f", {tuples_done:,} of {tuples_total:,} rows ({share:.0f}%)"
    elif tuples_done:
        text += f", {tuples_done:,} rows"
    elif blocks_total:
        text += f", {blocks_done:,} of {blocks_total:,} blocks"
    return str(index), text


@contextmanager
def _progress(engine: PostgresEngine, pid: int | None, name: str) -> Iterator[None]:
    """Log the build's progress for `pid` while it runs past PROGRESS_AFTER."""
    stop = threading.Event()
    watcher = threading.Thread(
        target=_watch_progress,
        args=(engine, pid, name, stop),
        name=f"shareddb-progress-{name}",
        daemon=True,
    )
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join(timeout=5.0)


def _watch_progress(
    engine: PostgresEngine, pid: int | None, name: str, stop: threading.Event
) -> None:
    started = time.monotonic()
    if stop.wait(PROGRESS_AFTER):
        return
    while not stop.is_set():
        try:
            with engine.statement() as conn:
                progress = read_progress(conn, pid)
        except (psycopg.Error, ShareddbError) as e:
            logger.debug("no progress for index %s: %s", name, e)
            progress = None
        if progress is not None:
            elapsed = time.monotonic() - started
            logger.info("building index %s: %s after %.0f s", name, progress[1], elapsed)
        if stop.wait(PROGRESS_EVERY):
            return
