"""``shareddb copy`` for an application's own tables: which ones, and whether they line up.

**Which tables.** Those an application namespace created, for each namespace given
(``--schema-dir NAMESPACE=FOLDER``; a `Mapping[str, Path]`) that the source's ledger
``schema_migrations`` shows applied: the files of that namespace the ledger lists are
read in version order and their ``CREATE TABLE`` / ``DROP TABLE`` / ``ALTER TABLE …
RENAME TO`` statements followed (`created_tables`). A namespace the source never
applied moves nothing and is reported as skipped; a namespace the source applied but
that was not given is reported too (`unlisted_namespaces`). The destination is initialized
with the same namespaces first, so they are present there too. Tables named with
``--table`` are added as they are. shareddb's own tables are never app tables.

**Checked first.** Before any row is written, every table must exist on both sides,
have a primary key, have the same column names on both sides (a quoted name as
written; an unquoted name matches whatever its case, as the engines fold it) and the
same primary key. Every problem of every table is reported at once, naming the
differing columns.

**Copied** by `copy_table_rows`, all application tables in one destination
transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from shareddb._admin.copy_catalog import TableInfo, catalog
from shareddb._admin.copy_values import Column
from shareddb._core.text import show
from shareddb._core.types import EngineKind
from shareddb._engines.base import Engine
from shareddb._migrations.created_tables import created_tables, name_key
from shareddb._migrations.files import (
    SHAREDDB_NAMESPACE,
    builtin_schema_dir,
    discover,
    migration_folders,
)
from shareddb.errors import ConfigError, ShareddbError

UPDATED_AT: Final = "updated_at"


@dataclass(frozen=True)
class Found:
    """An application table found in the source: its stored name and what created it."""

    name: str
    namespace: str | None  # None: named with --table


@dataclass(frozen=True)
class AppTable:
    """One application table, checked: its copied columns on each side and how they convert.

    Positions index the copied columns. `dest` is None in a dry run where the
    destination's pending migrations have not created the table yet.
    """

    found: Found
    source: TableInfo
    dest: TableInfo | None
    source_columns: tuple[str, ...]
    dest_columns: tuple[str, ...]
    columns: tuple[Column, ...]
    key: tuple[int, ...]  # the destination's primary key, in its order
    source_key: tuple[int, ...]  # the source's, in its order: the order rows are read in
    updated_at: int | None
    assigned: tuple[int, ...]  # the columns an UPDATE sets (not key, not identity)
    overriding: bool  # PostgreSQL: a GENERATED ALWAYS identity column is written


def find_tables(
    source: Engine[Any], schema_dirs: Mapping[str, Path], named: Sequence[str]
) -> tuple[list[Found], list[str]]:
    """The application tables in the source, and why a namespace was skipped (read-only).

    ConfigError for a ``--table`` that is not in the source or is shareddb's own, and
    for a namespace whose applied files are not in its folder.
    """
    ledger = source.read_ledger() or []
    own = shareddb_tables(source.kind)
    found: list[Found] = []
    skipped: list[str] = []
    cat = catalog(source.kind)
    with source.reading() as conn:
        for namespace, folder in schema_dirs.items():
            applied = {r.version: r.name for r in ledger if r.namespace == namespace}
            if not applied:
                skipped.append(
                    f"namespace {namespace!r}: no migration of it is applied in the source"
                )
                continue
            path = migration_folders(source.kind, {namespace: folder})[namespace]
            files = [f for f in discover(namespace, path) if f.version in applied]
            missing = sorted(set(applied) - {f.version for f in files})
            if missing:
                raise ConfigError(
                    f"the source applied {namespace}/{applied[missing[0]]}, which is not in "
                    f"{path}: the tables namespace {namespace!r} created can't be known",
                    fix="point --schema-dir at the migrations the source was created with",
                )
            for name in created_tables(files, source.kind):
                if name_key(name, source.kind) in own:
                    continue  # shareddb copies its own tables itself
                stored = cat.find_table(conn, name)
                if stored is None:
                    raise ShareddbError(
                        f"table {show(name)}, created by namespace {namespace!r}, is not in "
                        f"the source {source.target.masked}",
                        fix="restore it, or copy the other tables with --only",
                    )
                found.append(Found(stored, namespace))
        for name in named:
            stored = cat.find_table(conn, name)
            if stored is None:
                raise ConfigError(
                    f"--table {show(name)}: there is no such table in the source "
                    f"{source.target.masked}",
                    fix="check the name (as the database stores it) or the --from url",
                )
            if name_key(stored, source.kind) in own:
                raise ConfigError(
                    f"--table {show(name)} is shareddb's own table",
                    fix="sessions and task_embeddings are copied without --table (choose "
                    "them with --only)",
                )
            found.append(Found(stored, None))
    unique: dict[str, Found] = {}
    for f in found:
        unique.setdefault(name_key(f.name, source.kind), f)
    return list(unique.values()), skipped


def unlisted_namespaces(source: Engine[Any], schema_dirs: Mapping[str, Path]) -> list[str]:
    """The application namespaces the source applied that `schema_dirs` does not name.

    Their tables are not copied (copy can't know which they are without the
    migrations), so the report names them: nothing is left behind without a word.
    """
    applied = {r.namespace for r in source.read_ledger() or []}
    return sorted(applied - set(schema_dirs) - {SHAREDDB_NAMESPACE})


def shareddb_tables(kind: EngineKind) -> set[str]:
    """shareddb's own tables: never copied as an application's (compare with `name_key`)."""
    files = discover(SHAREDDB_NAMESPACE, builtin_schema_dir(kind))
    return {name_key(t, kind) for t in created_tables(files, kind)} | {"schema_migrations"}


def check_tables(
    found: Sequence[Found], source: Engine[Any], dest: Engine[Any] | None, *, pending: bool
) -> list[AppTable]:
    """Pair every table's columns on both sides; ShareddbError naming every problem.

    `pending`: the destination has migrations a dry run did not apply, so a table it
    lacks may yet be created: its rows count as new instead of an error.
    """
    sources: dict[str, TableInfo] = {}
    with source.reading() as conn:
        for f in found:
            sources[f.name] = catalog(source.kind).table(conn, f.name)
    dests: dict[str, TableInfo | None] = {}
    if dest is not None:
        cat = catalog(dest.kind)
        with dest.reading() as conn:
            for f in found:
                stored = cat.find_table(conn, f.name)
                dests[f.name] = None if stored is None else cat.table(conn, stored)
    tables: list[AppTable] = []
    problems: list[str] = []
    for f in found:
        target = dests.get(f.name)
        if target is None and dest is not None and not pending:
            made = f"namespace {f.namespace!r}" if f.namespace else "your schema"
            problems.append(f"table {show(f.name)} is not in the destination (add it to {made})")
            continue
        table = _pair_table(f, sources[f.name], target, source, dest, problems)
        if table is not None:
            tables.append(table)
    if problems:
        where = (
            f"from {source.target.masked} to {dest.target.masked if dest else 'the destination'}"
        )
        raise ShareddbError(
            f"can't copy the application tables {where}, no row was written: "
            + "; ".join(problems),
            fix="make the two sides' tables alike (a migration on the side that differs), "
            "or leave those tables out with --only",
        )
    return tables


def _pair_table(
    found: Found,
    source: TableInfo,
    dest: TableInfo | None,
    source_engine: Engine[Any],
    dest_engine: Engine[Any] | None,
    problems: list[str],
) -> AppTable | None:
    name = show(found.name)
    src_key = source.primary_key
    if not src_key:
        problems.append(f"table {name} has no primary key in the source (rows are matched on it)")
        return None
    if dest is None or dest_engine is None:  # a dry run: the destination lacks it yet
        columns = tuple(c.name for c in source.columns)
        converters = tuple(
            Column(
                c.kind, c.dimension, source=(source_engine.kind, c.kind), dest=source_engine.kind
            )
            for c in source.columns
        )
        key = tuple(columns.index(k) for k in src_key)
        return AppTable(
            found, source, None, columns, columns, converters, key, key, None, (), False
        )
    pairs, only_source, only_dest = _pair_names(
        [c.name for c in source.columns], [c.name for c in dest.columns]
    )
    if only_source or only_dest:
        parts = []
        if only_source:
            parts.append("only in the source: " + ", ".join(map(show, only_source)))
        if only_dest:
            parts.append("only in the destination: " + ", ".join(map(show, only_dest)))
        problems.append(f"table {name} columns differ ({'; '.join(parts)})")
        return None
    if not dest.primary_key:
        problems.append(f"table {name} has no primary key in the destination")
        return None
    if tuple(sorted(pairs[k] for k in src_key)) != tuple(sorted(dest.primary_key)):
        problems.append(
            f"table {name} has primary key ({', '.join(src_key)}) in the source but "
            f"({', '.join(dest.primary_key)}) in the destination"
        )
        return None
    copied = [(s, pairs[s]) for s in (c.name for c in source.columns)]
    copied = [(s, d) for s, d in copied if not dest.column(d).generated]
    dest_columns = tuple(d for _, d in copied)
    infos = [dest.column(d) for d in dest_columns]
    if any(dest.column(k).generated or dest.column(k).kind == "json" for k in dest.primary_key):
        problems.append(f"table {name}: a primary key column is generated or JSON")
        return None
    converters = tuple(
        Column(
            info.kind,
            info.dimension,
            source=(source_engine.kind, source.column(s).kind),
            dest=dest_engine.kind,
        )
        for (s, _), info in zip(copied, infos, strict=True)
    )
    key = tuple(dest_columns.index(k) for k in dest.primary_key)
    updated = [i for i, d in enumerate(dest_columns) if d.lower() == UPDATED_AT]
    return AppTable(
        found=found,
        source=source,
        dest=dest,
        source_columns=tuple(s for s, _ in copied),
        dest_columns=dest_columns,
        columns=converters,
        key=key,
        source_key=tuple(dest_columns.index(pairs[k]) for k in src_key),
        updated_at=updated[0] if len(updated) == 1 else None,
        assigned=tuple(
            i for i, info in enumerate(infos) if i not in key and not info.identity_always
        ),
        overriding=any(info.identity_always for info in infos),
    )


def _pair_names(
    source: Sequence[str], dest: Sequence[str]
) -> tuple[dict[str, str], list[str], list[str]]:
    """Source -> destination column names: the same name, else the one differing in case."""
    left = list(dest)
    pairs: dict[str, str] = {}
    for name in source:
        if name in left:
            pairs[name] = name
            left.remove(name)
    for name in source:
        if name not in pairs:
            alike = [d for d in left if d.lower() == name.lower()]
            if len(alike) == 1:
                pairs[name] = alike[0]
                left.remove(alike[0])
    return pairs, [s for s in source if s not in pairs], left


__all__ = [
    "AppTable",
    "Found",
    "check_tables",
    "find_tables",
    "shareddb_tables",
    "unlisted_namespaces",
]
