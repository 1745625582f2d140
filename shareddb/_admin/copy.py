"""``shareddb copy``: sessions, embeddings and application tables, one database to another.

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

Sessions and embeddings commit a batch at a time; the application's own tables (see
`copy_tables`: those its migration namespaces created, or named ones) follow, all of
them in one transaction. Every application table is checked before any row is
written. Writers on the source during the copy may or may not be seen; run it again
to catch up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Final, TextIO

import numpy as np
from pgvector import Vector

from shareddb._admin import copy_table_rows, copy_tables
from shareddb._admin.copy_builtin import (
    DIMENSION,
    EMBEDDING,
    EMBEDDINGS,
    METADATA,
    SESSIONS,
    CopiedTable,
)
from shareddb._admin.copy_builtin import TABLES as BUILTIN
from shareddb._admin.copy_report import CopyReport, CopyResult
from shareddb._admin.copy_values import Json, driver_forms, read_time
from shareddb._admin.doctor import not_created
from shareddb._admin.progress import Progress
from shareddb._core.service import DbService
from shareddb._core.url import parse_url
from shareddb._engines.base import Engine
from shareddb._migrations.files import discover_all, migration_folders
from shareddb._migrations.ledger import verify
from shareddb._vectors.codec import to_blob
from shareddb._vectors.metadata import check_metadata, load_metadata
from shareddb.errors import ConfigError, ShareddbError

logger = logging.getLogger("shareddb.copy")

__all__ = ["MAX_BATCH", "TABLES", "CopyReport", "CopyResult", "copy_rows"]

TABLES: Final = (SESSIONS, EMBEDDINGS)

MAX_BATCH: Final = 10_000  # below SQLite's and PostgreSQL's limits on parameters

# A row in the form both sides compare: text, ints, UTC datetimes, float32 LE bytes,
# metadata as `Json`; key first, created_at and updated_at last.
Row = tuple[Any, ...]


class _Side:
    """One database of the copy: its engine, and conversions to and from the common form."""

    def __init__(self, db: DbService) -> None:
        self.db = db
        self.engine: Engine[Any] = db.engine
        self.dialect = db.engine.dialect
        self.cursor, self.vector, self.json = driver_forms(self.engine)
        self._columns: dict[str, frozenset[str] | None] = {}

    def columns(self, table: CopiedTable) -> frozenset[str] | None:
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
    # little-endian float32 bytes that SQLite stores, metadata as `Json`.
    def read(self, table: CopiedTable, row: Sequence[Any]) -> Row:
        values = list(row)
        values[-2:] = [read_time(self.engine, value) for value in values[-2:]]
        if table.name == EMBEDDINGS:
            qid = str(values[0])
            values[EMBEDDING] = _blob(values[EMBEDDING], int(values[DIMENSION]), qid)
            values[METADATA] = _metadata(values[METADATA], qid, self.db)
        return tuple(values)

    def write(self, table: CopiedTable, row: Row) -> list[Any]:
        values = list(row)
        values[-2:] = [self.engine.write_time(value) for value in values[-2:]]
        if table.name == EMBEDDINGS:
            values[EMBEDDING] = self.vector(values[EMBEDDING])
            values[METADATA] = self.json(values[METADATA].text)
        return values


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


def _metadata(value: Any, qid: str, db: DbService) -> Json:
    """Stored metadata (SQLite's JSON text, or jsonb read as a dict) in the common form."""
    try:
        loaded = load_metadata(value)
        return Json(check_metadata(loaded, qid), loaded)
    except ShareddbError as e:
        raise ShareddbError(
            f"metadata of {qid!r} in {db.url} can't be copied: {e}",
            fix="fix or delete that row (VectorStorage.upsert(..., metadata=...))",
        ) from None


def copy_rows(
    source_url: str,
    dest_url: str,
    *,
    tables: Sequence[str] | None = None,
    schema_dirs: Mapping[str, Path] | None = None,
    app_tables: Sequence[str] = (),
    batch_size: int = 1000,
    timeout: float = 30.0,
    overwrite: bool = False,
    dry_run: bool = False,
    progress: TextIO | None = None,
    source_options: Mapping[str, Any] | None = None,
    dest_options: Mapping[str, Any] | None = None,
) -> CopyReport:
    """Copy from `source_url` to `dest_url`; idempotent, in batches of `batch_size`.

    Copies sessions and embeddings, then the application tables: those the
    namespaces of `schema_dirs` (namespace -> migrations folder) created, and those
    named in `app_tables` (see `copy_tables`). `tables`, if given, chooses among all
    of them by name. Initializes the destination (applies pending migrations,
    `schema_dirs`' too); reads the source only. A destination row whose
    ``updated_at`` is newer than the source's is kept and counted as `kept`, unless
    `overwrite`. With `dry_run`, reads both sides and reports what a copy would do,
    writing nothing and applying no migration (a destination that does not exist is
    not created). Raises ConfigError for an unknown table, when both urls name one
    database or the source does not exist; ShareddbError naming the columns when an
    application table differs between the two sides (before any row is written);
    the report's `unlisted` names the application namespaces the source applied that
    `schema_dirs` lacks (their tables are not copied);
    MigrationError when the destination's applied migrations were altered (as
    `initialize()` would). With `progress` (a text stream), reports rows done per table.
    `source_options` and `dest_options` are further `DbService` arguments for each side
    (``pooler``, ``direct_url``).
    """
    dirs = dict(schema_dirs or {})
    if tables is not None and not dirs and not app_tables:
        _choose(tables, [])  # an unknown name is an error before anything opens
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
        source = _Side(
            stack.enter_context(DbService(source_url, timeout=timeout, **(source_options or {})))
        )
        found, skipped = copy_tables.find_tables(source.engine, dirs, app_tables)
        unlisted = copy_tables.unlisted_namespaces(source.engine, dirs)
        builtin, app = _choose(tables, found)
        dest: _Side | None = None
        if not exists and dry_run:
            # Nothing to open: opening would create the file (or run initdb).
            files = discover_all(migration_folders(dest_target.engine, dirs))
            migrations = [f.label for f in files]
        else:
            dst = stack.enter_context(
                DbService(dest_url, schema_dirs=dirs, timeout=timeout, **(dest_options or {}))
            )
            dest = _Side(dst)
            migrations = _pending(dst, dirs) if dry_run else _initialize(dst)
        checked = copy_tables.check_tables(
            app, source.engine, dest.engine if dest else None, pending=dry_run and bool(migrations)
        )
        with Progress(progress) as display:
            results = [
                _copy_table(source, dest, BUILTIN[t], batch_size, overwrite, dry_run, display)
                for t in builtin
            ]
            results += copy_table_rows.copy_app_tables(
                checked,
                source.engine,
                dest.engine if dest else None,
                batch_size=batch_size,
                overwrite=overwrite,
                dry_run=dry_run,
                display=display,
            )
    return CopyReport(results, dry_run, overwrite, exists, migrations, skipped, unlisted)


def _choose(
    tables: Sequence[str] | None, found: Sequence[copy_tables.Found]
) -> tuple[list[str], list[copy_tables.Found]]:
    """`tables` as shareddb's own and the application's; ConfigError for an unknown name."""
    if tables is None:
        return list(TABLES), list(found)
    builtin = [t for t in TABLES if t in tables]
    app = []
    for name in dict.fromkeys(t for t in tables if t not in BUILTIN):
        alike = [f for f in found if f.name == name] or [
            f for f in found if f.name.lower() == name.lower()
        ]
        if not alike:
            known = ", ".join([*TABLES, *(f.name for f in found)])
            raise ConfigError(
                f"unknown table {name!r}; copy knows {known}",
                fix="name an application table with --table NAME, or the namespace that "
                "created it with --schema-dir NAMESPACE=FOLDER",
            )
        app.append(alike[0])
    return builtin, [f for f in found if f in app]


def _initialize(db: DbService) -> list[str]:
    """Apply the destination's pending migrations; their labels."""
    return [f"{m.namespace}/{m.name}" for m in db.initialize().applied]


def _pending(db: DbService, schema_dirs: Mapping[str, Path]) -> list[str]:
    """The labels of the migrations `initialize()` would apply; read-only.

    Raises as `initialize()` would when an applied migration was altered.
    """
    files = discover_all(migration_folders(db.engine.kind, schema_dirs))
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
    table: CopiedTable,
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


def _pages(side: _Side, table: CopiedTable, batch_size: int) -> Iterator[list[Row]]:
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
    dest: _Side | None, table: CopiedTable, batch: list[Row], overwrite: bool, dry_run: bool
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
