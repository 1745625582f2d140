"""``shareddb copy``: sessions and embeddings from one database to another, in batches.

Any direction works (SQLite or PostgreSQL on either side). The destination is
initialized first; the source is only read. Rows are read in key order, one short
transaction per batch on each side, and compared with the destination's rows of the
same natural key (``sessions.session``, ``task_embeddings.qualified_task_id``): new
rows are inserted and changed ones updated, keeping the source's timestamps, so
running the copy again changes nothing and an interrupted copy can simply be run
again. A destination row whose ``updated_at`` is newer than the source's is kept
(counted as `kept`) unless ``overwrite`` is set. Embeddings travel as float32 bytes
(binary on PostgreSQL), so every value arrives bit for bit; metadata as canonical
JSON (jsonb on PostgreSQL, JSON text on SQLite), equal as a JSON value on both sides.

A source whose schema predates a column (``metadata``, ``content_hash``, ``model`` came
with migration 0003) is read as that migration leaves old rows: ``{}``, NULL, NULL.

With ``dry_run`` nothing is written and the destination is not initialized: its rows
are read (a missing column as above) and compared, and a destination that does not
exist or has no tables yet counts every source row as to be inserted.

Every statement is written once with ``%s`` placeholders; each side's engine
dialect turns it into its own, and its engine stores and reads the timestamps.

Each batch commits on its own: a copy is not one transaction. Writers on the
source during the copy may or may not be seen; run it again to catch up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final, LiteralString, TextIO

import numpy as np
from pgvector import Vector
from psycopg.types.json import Jsonb

from shareddb._admin.doctor import not_created
from shareddb._admin.progress import Progress
from shareddb._core.service import DbService
from shareddb._core.url import parse_url
from shareddb._engines.base import Dialect, Engine
from shareddb._migrations.files import discover_all, migration_folders
from shareddb._migrations.ledger import verify
from shareddb._vectors.codec import from_blob, to_blob
from shareddb._vectors.metadata import check_metadata, load_metadata
from shareddb.errors import ConfigError, ShareddbError

logger = logging.getLogger("shareddb.copy")

SESSIONS: Final = "sessions"
EMBEDDINGS: Final = "task_embeddings"
TABLES: Final = (SESSIONS, EMBEDDINGS)

MAX_BATCH: Final = 10_000  # below SQLite's and PostgreSQL's limits on parameters

# A row in the form both sides compare: text, ints, UTC datetimes, float32 LE bytes,
# metadata as `_Json`; key first, created_at and updated_at last.
Row = tuple[Any, ...]


@dataclass(frozen=True)
class CopyResult:
    """What one table's copy did (with ``dry_run``: would do) to the source's rows.

    Every row read is exactly one of: `inserted` (new at the destination), `updated`
    (differed, and the destination's was not newer), `kept` (differed, but the
    destination's ``updated_at`` is newer: left as it is unless ``overwrite``) or
    `unchanged` (equal on both sides).
    """

    table: str
    read: int
    inserted: int
    updated: int
    kept: int
    unchanged: int
    elapsed_ms: float

    @property
    def written(self) -> int:
        return self.inserted + self.updated


@dataclass(frozen=True)
class CopyReport:
    """What `copy_rows()` did, or with `dry_run` would do, and to which destination.

    `exists`: the destination database existed before (a SQLite file, an embedded
    data folder; a PostgreSQL server's database always does). `migrations`: the
    labels of the migrations applied to the destination before copying (with
    `dry_run`: those a copy would apply; a dry run applies none).
    """

    tables: list[CopyResult]
    dry_run: bool = False
    overwrite: bool = False
    exists: bool = True
    migrations: list[str] = field(default_factory=list)

    @property
    def initialized(self) -> bool:
        """True when the destination's schema was up to date before the copy."""
        return self.exists and not self.migrations


@dataclass(frozen=True)
class _Table:
    """One table's copied columns and statements, with ``%s`` placeholders."""

    name: LiteralString
    # Key first, created_at and updated_at last.
    columns: tuple[LiteralString, ...]
    cursor: LiteralString  # unique, indexed: the order pages are read in
    # Columns later migrations added, and what an older layout's rows hold instead.
    added: Mapping[str, LiteralString]
    insert: Callable[[Dialect], LiteralString]  # a new row, in the dialect's form

    @property
    def width(self) -> int:
        return len(self.columns)

    @property
    def count(self) -> LiteralString:
        return "SELECT count(*) FROM " + self.name

    def select(self, present: Collection[str]) -> LiteralString:
        """``SELECT`` of the copied columns; a column not `present` reads as its default."""
        values = [c if c in present or c not in self.added else self.added[c] for c in self.columns]
        return "SELECT " + ", ".join(values)

    def select_first(self, present: Collection[str]) -> LiteralString:
        """The first page, in cursor order; the cursor's columns follow the copied ones."""
        return self.select(present) + ", " + self.cursor + " FROM " + self.name + self._order

    def select_page(self, present: Collection[str]) -> LiteralString:
        """The page after a cursor (its values first, then the page size)."""
        after = ", ".join(["%s"] * (self.cursor.count(",") + 1))
        where = " WHERE (" + self.cursor + ") > (" + after + ")"
        return (
            self.select(present) + ", " + self.cursor + " FROM " + self.name + where + self._order
        )

    def select_existing(self, present: Collection[str]) -> LiteralString:
        """The rows whose key is in a list (``{in_keys}``, see `Dialect.keys`)."""
        return self.select(present) + " FROM " + self.name + " WHERE " + self.key + " {in_keys}"

    @property
    def update(self) -> LiteralString:
        """One row by key: the other columns' values, then the key."""
        assignments = ", ".join(c + " = %s" for c in self.columns[1:])
        return "UPDATE " + self.name + " SET " + assignments + " WHERE " + self.key + " = %s"

    @property
    def key(self) -> LiteralString:
        return self.columns[0]

    @property
    def _order(self) -> LiteralString:
        return " ORDER BY " + self.cursor + " LIMIT %s"


_EMBEDDING_COLUMNS: Final[tuple[LiteralString, ...]] = (
    "qualified_task_id",
    "backend",
    "dimension",
    "embedding",
    "metadata",
    "content_hash",
    "model",
    "created_at",
    "updated_at",
)
_DIMENSION, _EMBEDDING, _METADATA = 2, 3, 4  # positions in _EMBEDDING_COLUMNS

_TABLES: Final = {
    # seq is each engine's insertion order: reading in (created_at, seq) order and
    # inserting with the sessions domain's own statement (which numbers seq on SQLite)
    # keeps sessions of one microsecond in their order.
    SESSIONS: _Table(
        name=SESSIONS,
        columns=(
            "session",
            "repo_name",
            "repo_url",
            "branch",
            "task_id",
            "created_at",
            "updated_at",
        ),
        cursor="created_at, seq",
        added={},
        insert=lambda dialect: dialect.session_insert,
    ),
    EMBEDDINGS: _Table(
        name=EMBEDDINGS,
        columns=_EMBEDDING_COLUMNS,
        cursor="qualified_task_id",
        # Migration 0003 added these; the rows it found got '{}', NULL and NULL.
        added={"metadata": "'{}'", "content_hash": "NULL", "model": "NULL"},
        insert=lambda dialect: dialect.sql(
            "INSERT INTO task_embeddings ("
            + ", ".join(_EMBEDDING_COLUMNS)
            + ") VALUES ("
            + ", ".join(["%s"] * len(_EMBEDDING_COLUMNS))
            + ") ON CONFLICT (qualified_task_id) DO NOTHING"
        ),
    ),
}


class _Side:
    """One database of the copy: its engine, and conversions to and from the common form."""

    def __init__(self, db: DbService) -> None:
        self.db = db
        self.engine: Engine[Any] = db.engine
        self.dialect = db.engine.dialect
        self.cursor, self.vector, self.json = _driver_forms(self.engine)
        self._columns: dict[str, frozenset[str] | None] = {}

    def columns(self, table: _Table) -> frozenset[str] | None:
        """The columns `table` has on this side, or None when it does not exist (read once)."""
        if table.name not in self._columns:
            with self.engine.reading() as conn:
                found: frozenset[str] | None = None
                if self.engine.table_exists(conn, table.name):
                    cur = conn.cursor()
                    cur.execute("SELECT * FROM " + table.name + " LIMIT 0")
                    found = frozenset(str(d[0]) for d in cur.description or ())
            self._columns[table.name] = found
        return self._columns[table.name]

    # Rows in the common form: timestamps as aware UTC datetimes, embeddings as the
    # little-endian float32 bytes that SQLite stores, metadata as `_Json`.
    def read(self, table: _Table, row: Sequence[Any]) -> Row:
        values = list(row)
        values[-2:] = [_read_time(self.engine, value) for value in values[-2:]]
        if table.name == EMBEDDINGS:
            qid = str(values[0])
            values[_EMBEDDING] = _blob(values[_EMBEDDING], int(values[_DIMENSION]), qid)
            values[_METADATA] = _metadata(values[_METADATA], qid, self.db)
        return tuple(values)

    def write(self, table: _Table, row: Row) -> list[Any]:
        values = list(row)
        values[-2:] = [self.engine.write_time(value) for value in values[-2:]]
        if table.name == EMBEDDINGS:
            values[_EMBEDDING] = self.vector(values[_EMBEDDING])
            values[_METADATA] = self.json(values[_METADATA].text)
        return values


def _driver_forms(
    engine: Engine[Any],
) -> tuple[Callable[[Any], Any], Callable[[bytes], Any], Callable[[str], Any]]:
    """How `engine`'s driver carries values exactly: (a cursor to read, a blob's parameter,
    a JSON text's parameter).

    PostgreSQL: binary results (a vector arrives as pgvector's float32 `Vector`, not as
    decimal text), a float32 array, which the connection's vector dumper sends in
    pgvector's binary form (`to_pgvector`), and the JSON text as a jsonb parameter;
    SQLite: the stored blob and the JSON text as they are. The one place the copy asks
    which engine it has: the Dialect is SQL, and this is the driver.
    """
    if engine.kind == "postgres":
        return (lambda conn: conn.cursor(binary=True)), from_blob, _jsonb
    return (lambda conn: conn.cursor()), bytes, str


def _jsonb(text: str) -> Jsonb:
    """Canonical JSON text as a jsonb parameter, sent as it is (not encoded again)."""
    return Jsonb(text, dumps=_as_is)


def _as_is(text: Any) -> str:
    return str(text)


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


class _Json:
    """Metadata in the common form: the canonical JSON text to write, compared as a JSON value.

    Canonical (sorted keys, no spaces): the text `VectorStorage` itself stores. Two
    values are equal when they are the same JSON value, whichever engine read them:
    jsonb keeps a number's value but not its spelling (``-0.0`` reads back as ``0.0``,
    ``1e18`` as ``1000000000000000000``), and such a row must not count as changed on
    every copy.
    """

    __slots__ = ("key", "text")

    def __init__(self, text: str, value: object) -> None:
        self.text = text
        self.key = _json_key(value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Json) and self.key == other.key

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"_Json({self.text!r})"


def _json_key(value: object) -> object:
    """`value` (as json.loads makes it) in a form whose == is JSON-value equality.

    Numbers compare by value (Python compares int and float exactly; 1 == 1.0 is one
    JSON number), bools and null apart from numbers, objects whatever their key order.
    """
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return (type(value).__name__, value)
    if isinstance(value, int | float):
        return ("number", value)
    if isinstance(value, list):
        return ("array", tuple(_json_key(v) for v in value))
    if isinstance(value, dict):
        return ("object", tuple(sorted((str(k), _json_key(v)) for k, v in value.items())))
    return ("other", repr(value))


def _metadata(value: Any, qid: str, db: DbService) -> _Json:
    """Stored metadata (SQLite's JSON text, or jsonb read as a dict) in the common form."""
    try:
        loaded = load_metadata(value)
        return _Json(check_metadata(loaded, qid), loaded)
    except ShareddbError as e:
        raise ShareddbError(
            f"metadata of {qid!r} in {db.url} can't be copied: {e}",
            fix="fix or delete that row (VectorStorage.upsert(..., metadata=...))",
        ) from None


def copy_rows(
    source_url: str,
    dest_url: str,
    *,
    tables: Sequence[str] = TABLES,
    batch_size: int = 1000,
    timeout: float = 30.0,
    overwrite: bool = False,
    dry_run: bool = False,
    progress: TextIO | None = None,
) -> CopyReport:
    """Copy `tables` from `source_url` to `dest_url`; idempotent, in batches of `batch_size`.

    Initializes the destination (applies pending migrations); reads the source
    only. A destination row whose ``updated_at`` is newer than the source's is kept
    and counted as `kept`, unless `overwrite`. With `dry_run`, reads both sides and
    reports what a copy would do, writing nothing and applying no migration (a
    destination that does not exist is not created). Raises ConfigError when both
    urls name one database or the source does not exist; MigrationError when the
    destination's applied migrations were altered (as `initialize()` would). With
    `progress` (a text stream), reports rows done per table.
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
    dest_target = parse_url(dest_url)
    exists = not not_created(dest_target)
    with ExitStack() as stack:
        source = _Side(stack.enter_context(DbService(source_url, timeout=timeout)))
        dest: _Side | None = None
        if not exists and dry_run:
            # Nothing to open: opening would create the file (or run initdb).
            files = discover_all(migration_folders(dest_target.engine, None))
            migrations = [f.label for f in files]
        else:
            dst = stack.enter_context(DbService(dest_url, timeout=timeout))
            dest = _Side(dst)
            migrations = _pending(dst) if dry_run else _initialize(dst)
        with Progress(progress) as display:
            results = [
                _copy_table(source, dest, _TABLES[t], batch_size, overwrite, dry_run, display)
                for t in tables
            ]
    return CopyReport(results, dry_run, overwrite, exists, migrations)


def _initialize(db: DbService) -> list[str]:
    """Apply the destination's pending migrations; their labels."""
    return [f"{m.namespace}/{m.name}" for m in db.initialize().applied]


def _pending(db: DbService) -> list[str]:
    """The labels of the migrations `initialize()` would apply; read-only.

    Raises as `initialize()` would when an applied migration was altered.
    """
    files = discover_all(migration_folders(db.engine.kind, None))
    return [f.label for f in verify(files, db.engine.read_ledger() or [])]


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
    source: _Side,
    dest: _Side | None,
    table: _Table,
    batch_size: int,
    overwrite: bool,
    dry_run: bool,
    display: Progress,
) -> CopyResult:
    started = time.perf_counter()
    if source.columns(table) is None:
        raise ShareddbError(
            f"the source database {source.db.url} has no {table.name} table; run "
            "`shareddb init` on it first, or pass --only for the other table"
        )
    with source.engine.reading() as conn:
        total = int(conn.execute(table.count).fetchone()[0])
    display.step(table.name, total=total)
    read = inserted = updated = kept = 0
    for batch in _pages(source, table, batch_size):
        new, changed, newer = _merge_batch(dest, table, batch, overwrite, dry_run)
        read += len(batch)
        inserted += new
        updated += changed
        kept += newer
        display.advance(read)
    display.step(None)
    unchanged = read - inserted - updated - kept
    elapsed = (time.perf_counter() - started) * 1000
    logger.info(
        "%s %s: %d read, %d inserted, %d updated, %d kept (newer in destination), %d unchanged",
        "compared (dry run)" if dry_run else "copied",
        table.name,
        read,
        inserted,
        updated,
        kept,
        unchanged,
    )
    return CopyResult(table.name, read, inserted, updated, kept, unchanged, elapsed)


def _pages(side: _Side, table: _Table, batch_size: int) -> Iterator[list[Row]]:
    """Batches of source rows in the common form, by keyset pagination (short transactions)."""
    present = side.columns(table) or frozenset()
    first = side.dialect.sql(table.select_first(present))
    page = side.dialect.sql(table.select_page(present))
    after: tuple[Any, ...] | None = None
    while True:
        with side.engine.reading() as conn:
            cur = side.cursor(conn)
            if after is None:
                cur.execute(first, (batch_size,))
            else:
                cur.execute(page, (*after, batch_size))
            rows = cur.fetchall()
        if not rows:
            return
        after = tuple(rows[-1][table.width :])
        yield [side.read(table, row[: table.width]) for row in rows]
        if len(rows) < batch_size:
            return


def _merge_batch(
    dest: _Side | None, table: _Table, batch: list[Row], overwrite: bool, dry_run: bool
) -> tuple[int, int, int]:
    """Insert the rows that are new and update those that differ: (inserted, updated, kept).

    A destination row whose updated_at is newer than the source's is kept (unless
    `overwrite`). With `dry_run`, only reads. `dest` None: a destination that does not
    exist yet (dry run), where every row is new.
    """
    if dest is None:
        return len(batch), 0, 0
    present = dest.columns(table)
    if present is None:  # dry run on a destination without the table yet
        return len(batch), 0, 0
    select, params = dest.dialect.keys(table.select_existing(present), [row[0] for row in batch])
    with dest.engine.reading() if dry_run else dest.engine.transaction() as conn:
        cur = dest.cursor(conn)
        cur.execute(select, params)
        existing = {row[0]: dest.read(table, row) for row in cur.fetchall()}
        new = [row for row in batch if row[0] not in existing]
        changed: list[Row] = []
        kept = 0
        for row in batch:
            old = existing.get(row[0])
            if old is None or old == row:
                continue
            if old[-1] > row[-1] and not overwrite:  # updated_at: the destination's is newer
                kept += 1
            else:
                changed.append(row)
        if not dry_run:
            if new:
                cur.executemany(table.insert(dest.dialect), [dest.write(table, r) for r in new])
            if changed:
                values = [dest.write(table, row) for row in changed]
                by_key = [[*v[1:], v[0]] for v in values]  # the SET values, then the key
                cur.executemany(dest.dialect.sql(table.update), by_key)
    return len(new), len(changed), kept
