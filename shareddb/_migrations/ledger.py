"""The ledger ``schema_migrations`` against the files: verification, status, reports.

Pure functions over rows and files, shared by every engine: what is pending, what
was edited or removed, and the errors that say so before any DDL runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from shareddb._migrations.files import MigrationFile
from shareddb._migrations.sqlsplit import Statement
from shareddb.errors import ChecksumMismatchError, MigrationError

MigrationState = Literal["applied", "pending", "changed", "missing", "out of order"]


@dataclass(frozen=True)
class LedgerRow:
    """One row of ``schema_migrations``."""

    namespace: str
    version: int
    name: str
    checksum: str
    applied_at: datetime | None = None
    execution_ms: float | None = None


@dataclass(frozen=True)
class AppliedMigration:
    """A migration applied by one `initialize()` call."""

    namespace: str
    version: int
    name: str
    execution_ms: float


# Called with each migration right after it is committed (live progress, e.g. `shareddb init`).
OnApplied = Callable[[AppliedMigration], None]


@dataclass(frozen=True)
class MigrationReport:
    """What `DbService.initialize()` did: the migrations it applied, in order."""

    applied: list[AppliedMigration] = field(default_factory=list)

    @property
    def up_to_date(self) -> bool:
        """True when nothing was pending."""
        return not self.applied


@dataclass(frozen=True)
class MigrationInfo:
    """One known migration as `DbService.migration_status()` reports it.

    `state` is ``applied`` (checksum matches), ``pending``, ``changed`` (applied,
    then edited), ``missing`` (applied, file gone) or ``out of order`` (pending but
    numbered below the newest applied file of its namespace).
    """

    namespace: str
    version: int
    name: str
    state: MigrationState
    applied_at: datetime | None = None
    execution_ms: float | None = None

    @property
    def applied(self) -> bool:
        return self.state in ("applied", "changed", "missing")


def verify(files: Sequence[MigrationFile], ledger: Iterable[LedgerRow]) -> list[MigrationFile]:
    """Check the ledger against the files and return the pending ones, in order.

    Raises before anything runs if an applied file was edited, renamed or removed,
    or if a pending file is numbered below the newest applied one. Ledger rows of
    namespaces this process does not know are left alone.
    """
    namespaces = {f.namespace for f in files}
    by_key = {(f.namespace, f.version): f for f in files}
    applied: dict[tuple[str, int], LedgerRow] = {}
    for row in ledger:
        if row.namespace not in namespaces:
            continue
        applied[(row.namespace, row.version)] = row
        file = by_key.get((row.namespace, row.version))
        if file is None:
            raise MigrationError(
                f"applied migration {row.namespace}/{row.name} is missing from its folder",
                fix="restore the file (applied migrations must stay)",
                namespace=row.namespace,
                filename=row.name,
            )
        if file.filename != row.name:
            raise ChecksumMismatchError(
                f"applied migration {row.namespace}/{row.name} was renamed to {file.label}",
                fix="rename it back",
                namespace=row.namespace,
                filename=file.filename,
            )
        if file.checksum != row.checksum:
            raise ChecksumMismatchError(
                f"applied migration {file.label} was edited after it was applied "
                f"(checksum {row.checksum[:12]} in schema_migrations, {file.checksum[:12]} "
                "on disk)",
                fix="restore the original and put the change in a new file",
                namespace=file.namespace,
                filename=file.filename,
            )
    pending = [f for f in files if (f.namespace, f.version) not in applied]
    for file in pending:
        newest = max((v for ns, v in applied if ns == file.namespace), default=None)
        if newest is not None and file.version < newest:
            raise MigrationError(
                f"new migration {file.label} is numbered below the newest applied one "
                f"{file.namespace}/{applied[(file.namespace, newest)].name}",
                fix=f"renumber it above {newest:04d}",
                namespace=file.namespace,
                filename=file.filename,
            )
    return pending


def status(files: Sequence[MigrationFile], ledger: Iterable[LedgerRow]) -> list[MigrationInfo]:
    """Every known migration (files and ledger rows) with its state; never raises."""
    namespaces = list(dict.fromkeys(f.namespace for f in files))
    rows = {(r.namespace, r.version): r for r in ledger if r.namespace in namespaces}
    keys = sorted(
        {(f.namespace, f.version) for f in files} | set(rows),
        key=lambda k: (namespaces.index(k[0]), k[1]),
    )
    by_key = {(f.namespace, f.version): f for f in files}
    newest = {ns: max((v for n, v in rows if n == ns), default=-1) for ns in namespaces}
    result: list[MigrationInfo] = []
    for key in keys:
        file, row = by_key.get(key), rows.get(key)
        state: MigrationState
        if row is None:
            assert file is not None
            state = "out of order" if file.version < newest[file.namespace] else "pending"
            result.append(MigrationInfo(file.namespace, file.version, file.filename, state))
            continue
        if file is None:
            state = "missing"
        elif file.checksum != row.checksum or file.filename != row.name:
            state = "changed"
        else:
            state = "applied"
        result.append(
            MigrationInfo(
                row.namespace, row.version, row.name, state, row.applied_at, row.execution_ms
            )
        )
    return result


def statement_error(
    migration: MigrationFile, stmt: Statement, error: Exception, sqlstate: str | None, note: str
) -> MigrationError:
    """The error for a failed statement: file, statement number, line, SQLSTATE, first line."""
    code = f" [{sqlstate}]" if sqlstate else ""
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return MigrationError(
        f"migration {migration.label} statement {stmt.number} (line {stmt.line}) failed"
        f"{code}: {message}; statement begins {stmt.first_line!r}; {note}",
        namespace=migration.namespace,
        filename=migration.filename,
        statement=stmt.number,
        line=stmt.line,
        sqlstate=sqlstate,
    )
