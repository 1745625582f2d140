"""``shareddb copy``: sessions and embeddings from one database to another, in batches.

Any direction works (SQLite or PostgreSQL on either side). The destination is
initialized first; the source is only read. Rows are read in key order, one short
transaction per batch on each side, and compared with the destination's rows of the
same natural key (``sessions.session``, ``task_embeddings.qualified_task_id``): new
rows are inserted and changed ones updated, keeping the source's timestamps, so
running the copy again changes nothing and an interrupted copy can simply be run
again. Embeddings travel as float32 bytes (binary on PostgreSQL), so every value
arrives bit for bit.

Every statement is written once with ``%s`` placeholders; each side's engine
dialect turns it into its own, and its engine stores and reads the timestamps.

Each batch commits on its own: a copy is not one transaction. Writers on the
source during the copy may or may not be seen; run it again to catch up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, LiteralString, TextIO

import numpy as np
from pgvector import Vector

from shareddb._admin.progress import Progress
from shareddb._core.service import DbService
from shareddb._core.url import parse_url
from shareddb._engines.base import Dialect, Engine
from shareddb._vectors.codec import from_blob, to_blob
from shareddb.errors import ConfigError, ShareddbError

logger = logging.getLogger("shareddb.copy")

SESSIONS: Final = "sessions"
EMBEDDINGS: Final = "task_embeddings"
TABLES: Final = (SESSIONS, EMBEDDINGS)

MAX_BATCH: Final = 10_000  # below SQLite's and PostgreSQL's limits on parameters

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
    """One table's statements, with ``%s`` placeholders (see `_table`)."""

    name: str
    width: int  # the copied columns, key first; pages add the cursor columns after them
    count: LiteralString
    select_first: LiteralString  # the first page, in cursor order
    select_page: LiteralString  # the page after a cursor
    select_existing: LiteralString  # the rows whose key is in a list (``{in_keys}``)
    insert: Callable[[Dialect], LiteralString]  # a new row, in the dialect's form
    update: LiteralString  # one row by key: the other columns, then the key


def _table(
    name: LiteralString,
    columns: LiteralString,
    cursor: LiteralString,
    insert: Callable[[Dialect], LiteralString],
    update: LiteralString,
) -> _Table:
    """The statements of `name`, read page by page in `cursor` order (unique, indexed)."""
    key = columns.split(",")[0]
    select = "SELECT " + columns + ", " + cursor + " FROM " + name
    after = ", ".join(["%s"] * (cursor.count(",") + 1))
    order = " ORDER BY " + cursor + " LIMIT %s"
    return _Table(
        name=name,
        width=columns.count(",") + 1,
        count="SELECT count(*) FROM " + name,
        select_first=select + order,
        select_page=select + " WHERE (" + cursor + ") > (" + after + ")" + order,
        select_existing="SELECT " + columns + " FROM " + name + " WHERE " + key + " {in_keys}",
        insert=insert,
        update=update,
    )


_TABLES: Final = {
    # seq is each engine's insertion order: reading in (created_at, seq) order and
    # inserting with the sessions domain's own statement (which numbers seq on SQLite)
    # keeps sessions of one microsecond in their order.
    SESSIONS: _table(
        SESSIONS,
        "session, repo_name, repo_url, branch, task_id, created_at, updated_at",
        "created_at, seq",
        lambda dialect: dialect.session_insert,
        "UPDATE sessions SET repo_name = %s, repo_url = %s, branch = %s, task_id = %s, "
        "created_at = %s, updated_at = %s WHERE session = %s",
    ),
    EMBEDDINGS: _table(
        EMBEDDINGS,
        "qualified_task_id, backend, dimension, embedding, created_at, updated_at",
        "qualified_task_id",
        lambda dialect: dialect.sql(
            "INSERT INTO task_embeddings (qualified_task_id, backend, dimension, embedding, "
            "created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (qualified_task_id) DO NOTHING"
        ),
        "UPDATE task_embeddings SET backend = %s, dimension = %s, embedding = %s, "
        "created_at = %s, updated_at = %s WHERE qualified_task_id = %s",
    ),
}


class _Side:
    """One database of the copy: its engine, and conversions to and from the common form."""

    def __init__(self, db: DbService) -> None:
        self.db = db
        self.engine: Engine[Any] = db.engine
        self.dialect = db.engine.dialect
        self.cursor, self.vector = _vector_forms(self.engine)

    # Rows in the common form: timestamps as aware UTC datetimes, embeddings as the
    # little-endian float32 bytes that SQLite stores.
    def read(self, table: _Table, row: Sequence[Any]) -> Row:
        values = list(row)
        values[-2:] = [_read_time(self.engine, value) for value in values[-2:]]
        if table.name == EMBEDDINGS:
            values[3] = _blob(values[3], int(values[2]), str(values[0]))
        return tuple(values)

    def write(self, table: _Table, row: Row) -> list[Any]:
        values = list(row)
        values[-2:] = [self.engine.write_time(value) for value in values[-2:]]
        if table.name == EMBEDDINGS:
            values[3] = self.vector(values[3])
        return values


def _vector_forms(engine: Engine[Any]) -> tuple[Callable[[Any], Any], Callable[[bytes], Any]]:
    """How `engine`'s driver carries vectors bit for bit: (a cursor to read, a blob's parameter).

    PostgreSQL: binary results (a vector arrives as pgvector's float32 `Vector`, not as
    decimal text) and a float32 array, which the connection's vector dumper sends in
    pgvector's binary form (`to_pgvector`); SQLite: the stored blob both ways. The one
    place the copy asks which engine it has: the Dialect is SQL, and this is the driver.
    """
    if engine.kind == "postgres":
        return (lambda conn: conn.cursor(binary=True)), from_blob
    return (lambda conn: conn.cursor()), bytes


def _read_time(engine: Engine[Any], value: Any) -> datetime:
    """`engine.read_time(value)`, refusing a value without a time zone (it would move)."""
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else value
    except ValueError:
        parsed = None
    if not isinstance(parsed, datetime) or parsed.utcoffset() is None:
        raise ShareddbError(
            f"timestamp {value!r} is not an aware datetime or ISO-8601 text with a time zone",
            fix="fix the row in the source database",
        )
    return engine.read_time(value)


def _blob(value: Any, dimension: int, qid: str) -> bytes:
    """A stored embedding as float32 LE bytes: SQLite's blob (its size checked) or a Vector."""
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        if len(data) != 4 * dimension:
            raise ShareddbError(
                f"embedding of {qid!r} in the source holds {len(data)} bytes, not "
                f"{4 * dimension} (dimension {dimension})",
                fix="fix or delete that row",
            )
        return data
    return to_blob(value.to_numpy() if isinstance(value, Vector) else np.asarray(value))


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
    unknown = [t for t in tables if t not in _TABLES]
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
        with Progress(progress) as display:
            return [_copy_table(source, dest, _TABLES[t], batch_size, display) for t in tables]


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
    source: _Side, dest: _Side, table: _Table, batch_size: int, display: Progress
) -> CopyResult:
    started = time.perf_counter()
    with source.engine.reading() as conn:
        if not source.engine.table_exists(conn, table.name):
            raise ShareddbError(
                f"the source database {source.db.url} has no {table.name} table; run "
                "`shareddb init` on it first, or pass --only for the other table"
            )
        total = int(conn.execute(table.count).fetchone()[0])
    display.step(table.name, total=total)
    read = inserted = updated = 0
    for batch in _pages(source, table, batch_size):
        new, changed = _write_batch(dest, table, batch)
        read += len(batch)
        inserted += new
        updated += changed
        display.advance(read)
    display.step(None)
    unchanged = read - inserted - updated
    elapsed = (time.perf_counter() - started) * 1000
    logger.info(
        "copied %s: %d read, %d inserted, %d updated, %d unchanged",
        table.name,
        read,
        inserted,
        updated,
        unchanged,
    )
    return CopyResult(table.name, read, inserted, updated, unchanged, elapsed)


def _pages(side: _Side, table: _Table, batch_size: int) -> Iterator[list[Row]]:
    """Batches of source rows in the common form, by keyset pagination (short transactions)."""
    after: tuple[Any, ...] | None = None
    while True:
        with side.engine.reading() as conn:
            cur = side.cursor(conn)
            if after is None:
                cur.execute(side.dialect.sql(table.select_first), (batch_size,))
            else:
                cur.execute(side.dialect.sql(table.select_page), (*after, batch_size))
            rows = cur.fetchall()
        if not rows:
            return
        after = tuple(rows[-1][table.width :])
        yield [side.read(table, row[: table.width]) for row in rows]
        if len(rows) < batch_size:
            return


def _write_batch(dest: _Side, table: _Table, batch: list[Row]) -> tuple[int, int]:
    """Insert the rows that are new and update those that differ: (inserted, updated)."""
    select, params = dest.dialect.keys(table.select_existing, [row[0] for row in batch])
    with dest.engine.transaction() as conn:
        cur = dest.cursor(conn)
        cur.execute(select, params)
        existing = {row[0]: dest.read(table, row) for row in cur.fetchall()}
        new = [dest.write(table, row) for row in batch if row[0] not in existing]
        changed = [
            dest.write(table, row)
            for row in batch
            if row[0] in existing and existing[row[0]] != row
        ]
        if new:
            cur.executemany(table.insert(dest.dialect), new)
        if changed:
            by_key = [[*values[1:], values[0]] for values in changed]
            cur.executemany(dest.dialect.sql(table.update), by_key)
    return len(new), len(changed)
