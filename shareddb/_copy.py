"""``shareddb copy``: sessions and embeddings from one database to another, in batches.

Any direction works (SQLite or PostgreSQL on either side). The destination is
initialized first; the source is only read. Rows are read in key order, one short
transaction per batch on each side, and written with an upsert on the natural key
(``sessions.session``, ``task_embeddings.qualified_task_id``) that keeps the source's
timestamps, so running the copy again changes nothing and an interrupted copy can
simply be run again. Embeddings travel as float32 bytes (binary on PostgreSQL), so
every value arrives bit for bit.

Each batch commits on its own: a copy is not one transaction. Writers on the
source during the copy may or may not be seen; run it again to catch up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, LiteralString, TextIO

import numpy as np
from pgvector import Vector

from ._doctor import table_exists
from ._service import DbService
from ._url import BackendType, parse_url
from .errors import ConfigError, ShareddbError

logger = logging.getLogger("shareddb.copy")

SESSIONS: Final = "sessions"
EMBEDDINGS: Final = "task_embeddings"
TABLES: Final = (SESSIONS, EMBEDDINGS)

MAX_BATCH: Final = 10_000  # below SQLite's and PostgreSQL's limits on parameters

# Key lists: one array parameter on PostgreSQL, a placeholder per key on SQLite.
_IN: Final[dict[BackendType, LiteralString]] = {
    "postgres": "= ANY(%s)",
    "sqlite": "IN ({keys})",
}

# A row in the form both sides compare: text, ints, UTC datetimes, float32 LE bytes.
Row = tuple[Any, ...]


@dataclass(frozen=True)
class CopyResult:
    """What one table's copy did: rows read from the source and their fate at the target."""

    table: str
    read: int
    inserted: int
    updated: int
    unchanged: int
    elapsed_ms: float

    @property
    def written(self) -> int:
        return self.inserted + self.updated


@dataclass(frozen=True)
class _Table:
    """The SQL of one table on one backend; `%s` placeholders, swapped for `?` on SQLite."""

    name: str
    key: str
    columns: tuple[str, ...]  # key first; what is copied and compared
    select_page: LiteralString  # rows after a cursor, in cursor order, with the cursor last
    select_first: LiteralString
    select_existing: LiteralString  # rows whose key is in a list (`{keys}`: placeholders)
    upsert: LiteralString
    count: LiteralString


def _sessions(backend: BackendType) -> _Table:
    cols: LiteralString = "session, repo_name, repo_url, branch, task_id, created_at, updated_at"
    # seq is each backend's insertion order; the copy preserves it by reading in
    # (created_at, seq) order and inserting in that order.
    if backend == "postgres":
        insert: LiteralString = (
            "INSERT INTO sessions (" + cols + ") VALUES (%s, %s, %s, %s, %s, %s, %s)"
        )
    else:
        insert = (
            "INSERT INTO sessions (" + cols + ", seq) VALUES (%s, %s, %s, %s, %s, %s, %s, "
            "(SELECT coalesce(max(seq), 0) + 1 FROM sessions))"
        )
    return _Table(
        name=SESSIONS,
        key="session",
        columns=tuple(c.strip() for c in cols.split(",")),
        select_page="SELECT " + cols + ", created_at, seq FROM sessions "
        "WHERE (created_at, seq) > (%s, %s) ORDER BY created_at, seq LIMIT %s",
        select_first="SELECT " + cols + ", created_at, seq FROM sessions "
        "ORDER BY created_at, seq LIMIT %s",
        select_existing="SELECT " + cols + " FROM sessions WHERE session " + _IN[backend],
        upsert=insert + " ON CONFLICT (session) DO UPDATE SET repo_name = excluded.repo_name, "
        "repo_url = excluded.repo_url, branch = excluded.branch, task_id = excluded.task_id, "
        "created_at = excluded.created_at, updated_at = excluded.updated_at",
        count="SELECT count(*) FROM sessions",
    )


def _embeddings(backend: BackendType) -> _Table:
    cols: LiteralString = "qualified_task_id, backend, dimension, embedding, created_at, updated_at"
    vector: LiteralString = "%b" if backend == "postgres" else "%s"  # binary: bit-exact
    return _Table(
        name=EMBEDDINGS,
        key="qualified_task_id",
        columns=tuple(c.strip() for c in cols.split(",")),
        select_page="SELECT " + cols + ", qualified_task_id FROM task_embeddings "
        "WHERE qualified_task_id > %s ORDER BY qualified_task_id LIMIT %s",
        select_first="SELECT " + cols + ", qualified_task_id FROM task_embeddings "
        "ORDER BY qualified_task_id LIMIT %s",
        select_existing="SELECT " + cols + " FROM task_embeddings "
        "WHERE qualified_task_id " + _IN[backend],
        upsert="INSERT INTO task_embeddings ("
        + cols
        + ") VALUES (%s, %s, %s, "
        + vector
        + ", %s, %s) ON CONFLICT (qualified_task_id) DO UPDATE SET backend = excluded.backend, "
        "dimension = excluded.dimension, embedding = excluded.embedding, "
        "created_at = excluded.created_at, updated_at = excluded.updated_at",
        count="SELECT count(*) FROM task_embeddings",
    )


_TABLE_SQL: Final[dict[str, Callable[[BackendType], _Table]]] = {
    SESSIONS: _sessions,
    EMBEDDINGS: _embeddings,
}


class _Side:
    """One database of the copy: its dialect, and conversions to and from the common form."""

    def __init__(self, db: DbService) -> None:
        self.db = db
        self.backend = db.get_backend_type()

    def sql(self, query: LiteralString) -> LiteralString:
        if self.backend == "sqlite":
            return query.replace("%b", "?").replace("%s", "?")
        return query

    def cursor(self, conn: Any) -> Any:
        # Binary results on PostgreSQL: vectors arrive as float32 bits, not decimal text.
        return conn.cursor(binary=True) if self.backend == "postgres" else conn.cursor()

    # Rows in the common form: timestamps as aware UTC datetimes, embeddings as the
    # little-endian float32 bytes that SQLite stores.
    def read(self, table: str, row: Sequence[Any]) -> Row:
        values = list(row)
        for i in (-2, -1):
            values[i] = _utc(values[i])
        if table == EMBEDDINGS:
            values[3] = _embedding_bytes(values[3], int(values[2]), str(values[0]))
        return tuple(values)

    def write(self, table: str, row: Row) -> tuple[Any, ...]:
        values = list(row)
        if self.backend == "sqlite":
            for i in (-2, -1):
                values[i] = values[i].isoformat(timespec="microseconds")
        elif table == EMBEDDINGS:
            values[3] = Vector(np.frombuffer(values[3], dtype="<f4"))
        return tuple(values)


def _utc(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise ShareddbError(
            f"timestamp {value!r} is not an aware datetime or ISO-8601 text with a time zone; "
            "fix the row in the source database"
        )
    return value.astimezone(UTC)


def _embedding_bytes(value: Any, dimension: int, qid: str) -> bytes:
    if isinstance(value, Vector):
        array = value.to_numpy()
    elif isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        if len(data) != 4 * dimension:
            raise ShareddbError(
                f"embedding of {qid!r} in the source holds {len(data)} bytes, not "
                f"{4 * dimension} (dimension {dimension}); fix or delete that row"
            )
        return data
    else:
        array = np.asarray(value)
    return np.ascontiguousarray(array, dtype="<f4").tobytes()


def copy_rows(
    source_url: str,
    dest_url: str,
    *,
    tables: Sequence[str] = TABLES,
    batch_size: int = 1000,
    timeout: float = 30.0,
    progress: TextIO | None = None,
) -> list[CopyResult]:
    """Copy `tables` from `source_url` to `dest_url`; idempotent, in batches of `batch_size`.

    Initializes the destination (applies pending migrations); reads the source
    only. Raises ConfigError when both urls name one database or the source does
    not exist. With `progress` (a text stream), reports rows done per table.
    """
    unknown = [t for t in tables if t not in _TABLE_SQL]
    if unknown:
        raise ConfigError(f"unknown table {unknown[0]!r}; copy knows {', '.join(TABLES)}")
    if not 1 <= batch_size <= MAX_BATCH:
        raise ConfigError(f"batch_size={batch_size!r} must be from 1 to {MAX_BATCH:,}")
    _check_distinct(source_url, dest_url)
    source_target = parse_url(source_url)
    if source_target.sqlite_path is not None and not source_target.sqlite_path.exists():
        raise ConfigError(
            f"source database {source_target.url} does not exist; check the --from url"
        )
    with DbService(source_url, timeout=timeout) as src, DbService(dest_url, timeout=timeout) as dst:
        dst.initialize()
        source, dest = _Side(src), _Side(dst)
        return [_copy_table(source, dest, table, batch_size, progress) for table in tables]


def _check_distinct(source_url: str, dest_url: str) -> None:
    a, b = parse_url(source_url), parse_url(dest_url)
    same = a.url == b.url
    if a.sqlite_path is not None and b.sqlite_path is not None:
        same = same or _same_file(a.sqlite_path, b.sqlite_path)
    if a.embedded_dir is not None and b.embedded_dir is not None:
        same = same or _same_file(a.embedded_dir, b.embedded_dir)
    if same or (a.url == "sqlite:///:memory:" and b.url == "sqlite:///:memory:"):
        raise ConfigError(
            f"--from and --to both name {a.masked}; copy needs two different databases"
        )


def _same_file(a: Path, b: Path) -> bool:
    return a.expanduser().resolve() == b.expanduser().resolve()


def _copy_table(
    source: _Side, dest: _Side, table: str, batch_size: int, progress: TextIO | None
) -> CopyResult:
    src_sql, dst_sql = _TABLE_SQL[table](source.backend), _TABLE_SQL[table](dest.backend)
    started = time.perf_counter()
    with source.db.connection() as conn:
        if not table_exists(source.db, conn, table):
            raise ShareddbError(
                f"the source database {source.db.url} has no {table} table; run "
                "`shareddb init` on it first, or pass --only for the other table"
            )
        total = int(conn.execute(src_sql.count).fetchone()[0])
    bar = _Bar(table, total, progress)
    read = inserted = updated = unchanged = 0
    for batch in _pages(source, src_sql, batch_size):
        new, changed = _write_batch(dest, dst_sql, table, batch)
        read += len(batch)
        inserted += new
        updated += changed
        unchanged += len(batch) - new - changed
        bar.update(read)
    bar.finish(read)
    elapsed = (time.perf_counter() - started) * 1000
    logger.info(
        "copied %s: %d read, %d inserted, %d updated, %d unchanged",
        table,
        read,
        inserted,
        updated,
        unchanged,
    )
    return CopyResult(table, read, inserted, updated, unchanged, elapsed)


def _pages(side: _Side, sql: _Table, batch_size: int) -> Iterator[list[Row]]:
    """Batches of source rows in the common form, by keyset pagination (short transactions)."""
    ncols = len(sql.columns)
    after: tuple[Any, ...] | None = None
    while True:
        with side.db.connection() as conn:
            cur = side.cursor(conn)
            if after is None:
                cur.execute(side.sql(sql.select_first), (batch_size,))
            else:
                cur.execute(side.sql(sql.select_page), (*after, batch_size))
            rows = cur.fetchall()
        if not rows:
            return
        after = tuple(rows[-1][ncols:])
        yield [side.read(sql.name, row[:ncols]) for row in rows]
        if len(rows) < batch_size:
            return


def _write_batch(dest: _Side, sql: _Table, table: str, batch: list[Row]) -> tuple[int, int]:
    """Upsert the rows that are new or differ; returns (inserted, updated)."""
    keys = [row[0] for row in batch]
    if dest.backend == "postgres":
        select, params = sql.select_existing, [keys]
    else:
        select = sql.select_existing.replace("{keys}", ", ".join(["%s"] * len(keys)))
        params = keys
    with dest.db.connection() as conn:
        cur = dest.cursor(conn)
        cur.execute(dest.sql(select), params)
        existing = {row[0]: dest.read(table, row) for row in cur.fetchall()}
        todo = [row for row in batch if existing.get(row[0]) != row]
        if todo:
            cur.executemany(dest.sql(sql.upsert), [dest.write(table, row) for row in todo])
    inserted = sum(1 for row in todo if row[0] not in existing)
    return inserted, len(todo) - inserted


class _Bar:
    """A progress bar on a terminal; elsewhere a line every few seconds. Silent without a stream."""

    def __init__(self, table: str, total: int, stream: TextIO | None, every: float = 2.0) -> None:
        self._table = table
        self._total = total
        self._stream = stream
        self._tty = bool(stream is not None and stream.isatty())
        self._every = every
        self._started = self._last = time.monotonic()

    def update(self, done: int) -> None:
        if self._stream is None:
            return
        now = time.monotonic()
        if self._tty:
            width = 30
            filled = width * done // max(self._total, 1)
            self._stream.write(
                f"\r{self._table:<16} [{'#' * filled}{'.' * (width - filled)}] "
                f"{done:,}/{self._total:,} {now - self._started:.1f} s"
            )
            self._stream.flush()
        elif now - self._last >= self._every:
            self._last = now
            pct = 100 * done // max(self._total, 1)
            print(
                f"  {self._table}: {done:,} of {self._total:,} rows ({pct}%) "
                f"... {now - self._started:.1f} s",
                file=self._stream,
                flush=True,
            )

    def finish(self, done: int) -> None:
        if self._stream is not None and self._tty:
            self.update(done)
            self._stream.write("\n")
            self._stream.flush()
