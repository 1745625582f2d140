"""Migration files on disk: discovery, naming rules, checksums, statements.

Read-only: nothing here touches a database. `shareddb._migrations.ledger` compares
what is found with what was applied, and `shareddb._migrations.runner` applies it.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from shareddb._core.types import EngineKind
from shareddb._migrations.sqlsplit import Statement, split_postgres, split_sqlite
from shareddb.errors import MigrationError

SHAREDDB_NAMESPACE = "shareddb"
NO_TRANSACTION_DIRECTIVE = "-- shareddb:no-transaction"

_FILE_NAME = re.compile(r"^(\d{4,})_([A-Za-z0-9][A-Za-z0-9_\-]*)\.sql$")
_NAMESPACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")
_TRANSACTION_CONTROL = re.compile(
    r"^(BEGIN|COMMIT|ROLLBACK|END|START\s+TRANSACTION|ABORT)\b", re.IGNORECASE
)


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


def checksum(text: str) -> str:
    """SHA-256 of the text with a BOM dropped and line endings folded to LF."""
    normalized = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    return hashlib.sha256(normalized.encode("utf-8")).hexdigest()


def builtin_schema_dir(backend: EngineKind) -> Path:
    """The ``shareddb/schema/<backend>`` folder: package data, in a wheel and a checkout alike."""
    return Path(str(importlib.resources.files("shareddb"))) / "schema" / backend


def migration_folders(
    backend: EngineKind, schema_dirs: Mapping[str, str | Path] | None
) -> dict[str, Path]:
    """Namespace -> folder, ``shareddb`` first, then the application's in the given order.

    An application folder may hold ``postgres/`` and ``sqlite/`` subfolders; if it has
    one for this backend, that one is used, otherwise the folder itself.
    """
    folders = {SHAREDDB_NAMESPACE: builtin_schema_dir(backend)}
    for namespace, folder in (schema_dirs or {}).items():
        problem = namespace_problem(namespace)
        if problem:
            raise MigrationError(f"schema_dirs namespace {namespace!r} {problem}")
        path = Path(folder)
        folders[namespace] = path / backend if _is_dir(namespace, path / backend) else path
    return folders


def namespace_problem(namespace: object) -> str | None:
    """Why `namespace` can't name an application's migrations (a phrase), or None if it can."""
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        return "is not a plain name; use letters, digits, '_', '.' or '-' (at most 63 characters)"
    if namespace == SHAREDDB_NAMESPACE:
        return "is reserved for shareddb's own migrations; choose your application's name"
    return None


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


def split_statements(migration: MigrationFile, backend: EngineKind) -> list[Statement]:
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
