"""The schema runner: discover versioned ``.sql`` files, verify the ledger, apply what is pending.

Backend-specific work (locking, executing, the ledger's SQL) lives in
`_migrate_pg` and `_migrate_sqlite`; this module holds what both share.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

from ._sqlsplit import Statement, split_postgres, split_sqlite
from ._url import BackendType
from .errors import ChecksumMismatchError, MigrationError

SHAREDDB_NAMESPACE = "shareddb"
NO_TRANSACTION_DIRECTIVE = "-- shareddb:no-transaction"

_FILE_NAME = re.compile(r"^(\d{4,})_([A-Za-z0-9][A-Za-z0-9_\-]*)\.sql$")
_NAMESPACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")
_TRANSACTION_CONTROL = re.compile(
    r"^(BEGIN|COMMIT|ROLLBACK|END|START\s+TRANSACTION|ABORT)\b", re.IGNORECASE
)

MigrationState = Literal["applied", "pending", "changed", "missing", "out of order"]


@dataclass(frozen=True)
class MigrationFile:
    """One migration file as found on disk."""

    namespace: str
    version: int
    filename: str
    path: Path
    text: str
    checksum: str
    transactional: bool

    @property
    def label(self) -> str:
        return f"{self.namespace}/{self.filename}"


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


def checksum(text: str) -> str:
    """SHA-256 of the text with a BOM dropped and line endings folded to LF."""
    normalized = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    return hashlib.sha256(normalized.encode("utf-8")).hexdigest()


def builtin_schema_dir(backend: BackendType) -> Path:
    """The packaged ``schema/<backend>`` folder (inside the wheel, or the source checkout)."""
    packaged = Path(str(importlib.resources.files("shareddb"))) / "schema" / backend
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "schema" / backend


def migration_folders(
    backend: BackendType, schema_dirs: Mapping[str, str | Path] | None
) -> dict[str, Path]:
    """Namespace -> folder, ``shareddb`` first, then the application's in the given order.

    An application folder may hold ``postgres/`` and ``sqlite/`` subfolders; if it has
    one for this backend, that one is used, otherwise the folder itself.
    """
    folders = {SHAREDDB_NAMESPACE: builtin_schema_dir(backend)}
    for namespace, folder in (schema_dirs or {}).items():
        if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
            raise MigrationError(
                f"schema_dirs namespace {namespace!r} is not a plain name; use letters, "
                "digits, '_', '.' or '-' (at most 63 characters)"
            )
        if namespace == SHAREDDB_NAMESPACE:
            raise MigrationError(
                f"schema_dirs namespace {namespace!r} is reserved for shareddb's own "
                "migrations; choose your application's name"
            )
        path = Path(folder)
        folders[namespace] = path / backend if _is_dir(namespace, path / backend) else path
    return folders


def _is_dir(namespace: str, folder: Path) -> bool:
    """`folder.is_dir()`, with a path the OS refuses (too long, NUL) as MigrationError."""
    try:
        return folder.is_dir()
    except (OSError, ValueError) as e:
        raise MigrationError(
            f"migration folder {_short_path(folder)} for namespace {namespace!r} can't be "
            f"used ({getattr(e, 'strerror', None) or e}); fix schema_dirs",
            namespace=namespace,
        ) from None


def _short_path(path: Path) -> str:
    text = str(path)
    return text if len(text) <= 200 else f"{text[:150]}...{text[-40:]} ({len(text):,} chars)"


def discover(namespace: str, folder: Path) -> list[MigrationFile]:
    """Read every ``NNNN_slug.sql`` in `folder`, sorted by version.

    Any other ``.sql`` name, or two files with one version, is an error: a file
    that is silently skipped is a migration that silently never runs.
    """
    if not _is_dir(namespace, folder):
        raise MigrationError(
            f"migration folder {_short_path(folder)} for namespace {namespace!r} does not "
            "exist; create it or fix schema_dirs",
            namespace=namespace,
        )
    try:
        entries = sorted(folder.iterdir())
    except OSError as e:
        raise MigrationError(
            f"migration folder {_short_path(folder)} for namespace {namespace!r} can't be "
            f"listed ({e.strerror or e}); fix its permissions",
            namespace=namespace,
        ) from None
    found: dict[int, MigrationFile] = {}
    for path in entries:
        if not path.name.lower().endswith(".sql"):
            continue
        match = _FILE_NAME.fullmatch(path.name)
        if not match:
            raise MigrationError(
                f"migration file {namespace}/{path.name} is not named NNNN_slug.sql; "
                "rename it (for example 0004_add_index.sql)",
                namespace=namespace,
                filename=path.name,
            )
        version = int(match.group(1))
        if version in found:
            raise MigrationError(
                f"migration files {namespace}/{found[version].filename} and "
                f"{namespace}/{path.name} share version {version}; renumber one of them",
                namespace=namespace,
                filename=path.name,
            )
        text = _read_text(namespace, path)
        found[version] = MigrationFile(
            namespace=namespace,
            version=version,
            filename=path.name,
            path=path,
            text=text,
            checksum=checksum(text),
            transactional=not _has_no_transaction_directive(text),
        )
    return [found[v] for v in sorted(found)]


def discover_all(folders: Mapping[str, Path]) -> list[MigrationFile]:
    return [m for namespace, folder in folders.items() for m in discover(namespace, folder)]


def _read_text(namespace: str, path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise MigrationError(
            f"migration file {namespace}/{path.name} can't be read ({e.strerror or e}); fix "
            "its permissions",
            namespace=namespace,
            filename=path.name,
        ) from None
    except UnicodeDecodeError:
        raise MigrationError(
            f"migration file {namespace}/{path.name} is not UTF-8 text; save it as UTF-8",
            namespace=namespace,
            filename=path.name,
        ) from None


def _has_no_transaction_directive(text: str) -> bool:
    """The directive counts only in the leading block of comments and blank lines."""
    for line in text.removeprefix("\ufeff").splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("--"):
            return False
        if stripped.lower().replace(" ", "") == NO_TRANSACTION_DIRECTIVE.replace(" ", ""):
            return True
    return False


def split_statements(migration: MigrationFile, backend: BackendType) -> list[Statement]:
    """Split a file for `backend`, refusing transaction control (the runner owns it)."""
    splitter = split_postgres if backend == "postgres" else split_sqlite
    statements = splitter(migration.text)
    for stmt in statements:
        if _TRANSACTION_CONTROL.match(stmt.text):
            raise MigrationError(
                f"migration {migration.label} statement {stmt.number} (line {stmt.line}) is "
                f"{stmt.first_line!r}; remove it: shareddb runs each file in its own "
                f"transaction (or none, with '{NO_TRANSACTION_DIRECTIVE}')",
                namespace=migration.namespace,
                filename=migration.filename,
                statement=stmt.number,
                line=stmt.line,
            )
    return statements


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
                f"applied migration {row.namespace}/{row.name} is missing from its folder; "
                "restore the file (applied migrations must stay)",
                namespace=row.namespace,
                filename=row.name,
            )
        if file.filename != row.name:
            raise ChecksumMismatchError(
                f"applied migration {row.namespace}/{row.name} was renamed to "
                f"{file.label}; rename it back",
                namespace=row.namespace,
                filename=file.filename,
            )
        if file.checksum != row.checksum:
            raise ChecksumMismatchError(
                f"applied migration {file.label} was edited after it was applied "
                f"(checksum {row.checksum[:12]} in schema_migrations, {file.checksum[:12]} "
                "on disk); restore the original and put the change in a new file",
                namespace=file.namespace,
                filename=file.filename,
            )
    pending = [f for f in files if (f.namespace, f.version) not in applied]
    for file in pending:
        newest = max((v for ns, v in applied if ns == file.namespace), default=None)
        if newest is not None and file.version < newest:
            raise MigrationError(
                f"new migration {file.label} is numbered below the newest applied one "
                f"{file.namespace}/{applied[(file.namespace, newest)].name}; "
                f"renumber it above {newest:04d}",
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
