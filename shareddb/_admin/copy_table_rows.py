"""``shareddb copy`` moving the rows of application tables that `copy_tables` checked.

Rows are read from the source in primary-key order, a batch at a time (keyset
pagination, one short read transaction per batch), each value brought to the
destination column's form (`copy_values`), compared with the destination's row of
the same key, and inserted or updated; where both sides have ``updated_at``, a
destination row that is newer is kept unless `overwrite`. Tables are copied in the
order their migrations created them (a table referenced by a foreign key is usually
created first). On PostgreSQL a sequence behind a copied key (serial, identity) is
moved past the largest key copied, so the application's next insert does not clash.

**Atomic.** All application tables are written in one transaction on the
destination: either every one of them is copied, or (on any error) none is.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator, Sequence
from typing import Any, Final

import psycopg

from shareddb._admin.copy_catalog import catalog
from shareddb._admin.copy_report import CopyResult
from shareddb._admin.copy_tables import AppTable
from shareddb._admin.copy_values import BadValue, Column, driver_forms, same_values
from shareddb._admin.progress import Progress
from shareddb._core.text import show
from shareddb._engines.base import Engine
from shareddb.errors import ShareddbError

logger = logging.getLogger("shareddb.copy")

LOOKUP_PARAMS: Final = 900  # keys looked up per statement: below any SQLite's variable limit
_DRIVER_ERRORS: Final = (psycopg.Error, sqlite3.Error)


def copy_app_tables(
    tables: Sequence[AppTable],
    source: Engine[Any],
    dest: Engine[Any] | None,
    *,
    batch_size: int,
    overwrite: bool,
    dry_run: bool,
    display: Progress,
) -> list[CopyResult]:
    """Copy `tables` (checked by `check_tables`) in one destination transaction."""
    if not tables:
        return []
    if dest is None:  # a dry run to a destination that does not exist: every row is new
        return [_count_only(t, source, display) for t in tables]
    results: list[CopyResult] = []
    with dest.reading() if dry_run else dest.transaction() as conn:
        for table in tables:
            if table.dest is None:
                results.append(_count_only(table, source, display))
                continue
            try:
                copier = _Copier(table, source, dest, conn, overwrite=overwrite, dry_run=dry_run)
                results.append(copier.run(batch_size, display))
            except _DRIVER_ERRORS as e:
                reason = " ".join(str(e).split())
                raise ShareddbError(
                    f"copying table {show(table.found.name)} to {dest.target.masked} failed "
                    f"({reason}); no application table was written (rolled back)",
                    fix="fix the cause, then run copy again",
                ) from e
    return results


def _count_only(table: AppTable, source: Engine[Any], display: Progress) -> CopyResult:
    started = time.perf_counter()
    display.step(table.found.name)
    total = _count(source, table.source.name)
    elapsed = (time.perf_counter() - started) * 1000
    return CopyResult(table.found.name, total, total, 0, 0, 0, elapsed, table.found.namespace)


def _count(engine: Engine[Any], name: str) -> int:
    cat = catalog(engine.kind)
    with engine.reading() as conn:
        row = conn.execute(cat.sql("SELECT count(*) FROM {}", cat.ident(name)), ()).fetchone()
    return int(row[0])


class _Copier:
    """One table's copy into the destination's open transaction `conn`."""

    def __init__(
        self,
        table: AppTable,
        source: Engine[Any],
        dest: Engine[Any],
        conn: Any,
        *,
        overwrite: bool,
        dry_run: bool,
    ) -> None:
        assert table.dest is not None
        self.table = table
        self.source = source
        self.dest = dest
        self.conn = conn
        self.overwrite = overwrite
        self.dry_run = dry_run
        self.scat, self.dcat = catalog(source.kind), catalog(dest.kind)
        self.source_cursor = driver_forms(source)[0]
        self.dest_cursor = driver_forms(dest)[0](conn)

    def run(self, batch_size: int, display: Progress) -> CopyResult:
        started = time.perf_counter()
        t = self.table
        display.step(t.found.name, total=_count(self.source, t.source.name))
        read = inserted = updated = kept = 0
        for raw in self._pages(batch_size):
            rows = [(self._common(r), r) for r in raw]
            new, changed, newer = self._merge(rows)
            read += len(rows)
            inserted += new
            updated += changed
            kept += newer
            display.advance(read)
        display.step(None)
        if inserted and not self.dry_run:
            assert t.dest is not None
            self.dcat.resync_sequences(self.conn, t.dest)
        unchanged = read - inserted - updated - kept
        logger.info(
            "%s %s: %d read, %d inserted, %d updated, %d kept (newer in destination), %d unchanged",
            "compared (dry run)" if self.dry_run else "copied",
            t.found.name,
            read,
            inserted,
            updated,
            kept,
            unchanged,
        )
        elapsed = (time.perf_counter() - started) * 1000
        return CopyResult(
            t.found.name, read, inserted, updated, kept, unchanged, elapsed, t.found.namespace
        )

    def _pages(self, batch_size: int) -> Iterator[list[tuple[Any, ...]]]:
        """The source's rows in primary-key order, a page at a time (short read transactions)."""
        t, q = self.table, self.scat
        columns, table = q.reads(t.source, t.source_columns), q.ident(t.source.name)
        key = q.idents([t.source_columns[i] for i in t.source_key])
        first = q.sql("SELECT {} FROM {} ORDER BY {} LIMIT %s", columns, table, key)
        after = q.sql(
            "SELECT {} FROM {} WHERE ({}) > ({}) ORDER BY {} LIMIT %s",
            columns,
            table,
            key,
            q.marks(len(t.source_key)),
            key,
        )
        last: tuple[Any, ...] | None = None
        while True:
            with self.source.reading() as conn:
                cur = self.source_cursor(conn)
                cur.execute(first if last is None else after, (*(last or ()), batch_size))
                rows = [tuple(r) for r in cur.fetchall()]
            if not rows:
                return
            for row in rows:
                if any(row[i] is None for i in t.source_key):
                    raise ShareddbError(
                        f"table {show(t.found.name)} in the source has a row whose primary key "
                        "holds NULL (SQLite allows it outside INTEGER PRIMARY KEY)",
                        fix="give that row a key or delete it, then copy again",
                    )
            last = tuple(rows[-1][i] for i in t.source_key)
            yield rows
            if len(rows) < batch_size:
                return

    def _common(self, raw: tuple[Any, ...]) -> tuple[Any, ...]:
        t = self.table
        values = []
        for i, (column, value) in enumerate(zip(t.columns, raw, strict=True)):
            try:
                values.append(column.common(value))
            except BadValue as e:
                key = tuple(raw[k] for k in t.source_key)
                raise ShareddbError(
                    f"table {show(t.found.name)}, row {key!r}, column "
                    f"{show(t.source_columns[i])} in the source can't go into the "
                    f"destination's {t.dest_columns[i]!r} ({self._declared(i)}): {e}; no "
                    "application table was written",
                    fix="fix that row in the source (or the column's type), then copy again",
                ) from None
        return tuple(values)

    def _declared(self, i: int) -> str:
        assert self.table.dest is not None
        return self.table.dest.column(self.table.dest_columns[i]).declared or "no type"

    def _params(
        self, common: tuple[Any, ...], raw: tuple[Any, ...], at: Sequence[int]
    ) -> list[Any]:
        return [self.table.columns[i].param(common[i], raw[i]) for i in at]

    def _existing(self, rows: list[tuple[tuple[Any, ...], tuple[Any, ...]]]) -> dict[Any, Any]:
        """The destination's rows of these keys, in the common form, by key."""
        t, q = self.table, self.dcat
        assert t.dest is not None
        width = len(t.key)
        found: dict[Any, Any] = {}
        step = max(1, LOOKUP_PARAMS // width)
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            query = q.sql(
                "SELECT {} FROM {} WHERE ({}) IN {}",
                q.reads(t.dest, t.dest_columns),
                q.ident(t.dest.name),
                q.idents([t.dest_columns[i] for i in t.key]),
                q.rows_in(len(chunk), width),
            )
            params = [p for common, raw in chunk for p in self._params(common, raw, t.key)]
            self.dest_cursor.execute(query, params)
            for row in self.dest_cursor.fetchall():
                common = tuple(_existing(c, v) for c, v in zip(t.columns, row, strict=True))
                key = tuple(common[i] for i in t.key)
                if not any(isinstance(k, _Unreadable) for k in key):
                    found[key] = common
        return found

    def _merge(self, rows: list[tuple[tuple[Any, ...], tuple[Any, ...]]]) -> tuple[int, int, int]:
        """Insert the new rows, update those that differ: (inserted, updated, kept)."""
        t = self.table
        existing = self._existing(rows)
        new: list[tuple[tuple[Any, ...], tuple[Any, ...]]] = []
        changed: list[tuple[tuple[Any, ...], tuple[Any, ...]]] = []
        kept = 0
        for common, raw in rows:
            old = existing.get(tuple(common[i] for i in t.key))
            if old is None:
                new.append((common, raw))
            elif same_values(old, common):
                continue
            elif not self.overwrite and _newer(old, common, t.updated_at):
                kept += 1
            else:
                changed.append((common, raw))
        if not self.dry_run:
            self._write(new, changed)
        return len(new), len(changed), kept

    def _write(
        self,
        new: list[tuple[tuple[Any, ...], tuple[Any, ...]]],
        changed: list[tuple[tuple[Any, ...], tuple[Any, ...]]],
    ) -> None:
        t, q = self.table, self.dcat
        assert t.dest is not None
        table = q.ident(t.dest.name)
        everything = range(len(t.dest_columns))
        if new:
            template = (
                "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE VALUES ({})"
                if t.overriding
                else "INSERT INTO {} ({}) VALUES ({})"
            )
            insert = q.sql(template, table, q.idents(t.dest_columns), q.marks(len(everything)))
            self.dest_cursor.executemany(insert, [self._params(c, r, everything) for c, r in new])
        if changed and t.assigned:
            assignments = q.join([q.sql("{} = %s", q.ident(t.dest_columns[i])) for i in t.assigned])
            where = q.join([q.sql("{} = %s", q.ident(t.dest_columns[i])) for i in t.key], " AND ")
            update = q.sql("UPDATE {} SET {} WHERE {}", table, assignments, where)
            order = [*t.assigned, *t.key]
            self.dest_cursor.executemany(update, [self._params(c, r, order) for c, r in changed])


class _Unreadable:
    """A destination value that has no common form: it differs from every source value."""

    def __eq__(self, other: object) -> bool:
        return False

    __hash__ = None  # type: ignore[assignment]


def _existing(column: Column, value: Any) -> Any:
    try:
        return column.existing(value)
    except BadValue:
        return _Unreadable()


def _newer(old: tuple[Any, ...], new: tuple[Any, ...], at: int | None) -> bool:
    """Whether the destination's updated_at is later than the source's."""
    if at is None or old[at] is None or new[at] is None:
        return False
    try:
        return bool(old[at] > new[at])
    except TypeError:
        return False


__all__ = ["copy_app_tables"]
