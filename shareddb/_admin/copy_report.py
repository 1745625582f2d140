"""What ``shareddb copy`` reports: one `CopyResult` per table, in one `CopyReport`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CopyResult:
    """What one table's copy did (with ``dry_run``: would do) to the source's rows.

    Every row read is exactly one of: `inserted` (new at the destination), `updated`
    (differed, and the destination's was not newer), `kept` (differed, but the
    destination's ``updated_at`` is newer: left as it is unless ``overwrite``) or
    `unchanged` (equal on both sides). `namespace`: the migration namespace that
    created the table (``shareddb`` for sessions and embeddings), None for a table
    named with ``--table``.
    """

    table: str
    read: int
    inserted: int
    updated: int
    kept: int
    unchanged: int
    elapsed_ms: float
    namespace: str | None = "shareddb"

    @property
    def written(self) -> int:
        return self.inserted + self.updated


@dataclass(frozen=True)
class CopyReport:
    """What `copy_rows()` did, or with `dry_run` would do, and to which destination.

    `exists`: the destination database existed before (a SQLite file, an embedded
    data folder; a PostgreSQL server's database always does). `migrations`: the
    labels of the migrations applied to the destination before copying (with
    `dry_run`: those a copy would apply; a dry run applies none). `skipped`: why a
    namespace given to copy moved nothing (not applied in the source). `unlisted`:
    the application namespaces the source applied that copy was not given, whose
    tables were therefore not copied.
    """

    tables: list[CopyResult]
    dry_run: bool = False
    overwrite: bool = False
    exists: bool = True
    migrations: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)

    @property
    def initialized(self) -> bool:
        """True when the destination's schema was up to date before the copy."""
        return self.exists and not self.migrations
