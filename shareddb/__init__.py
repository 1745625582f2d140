"""shareddb: one shared database layer in plain SQL, on SQLite or PostgreSQL + pgvector."""

from ._config import DbConfig, load_config
from ._migrate import AppliedMigration, MigrationInfo, MigrationReport
from ._service import DbService
from ._shared import close_shared_dbs, get_shared_db
from .errors import (
    ChecksumMismatchError,
    ConfigError,
    DatabaseUnavailableError,
    DimensionMismatchError,
    ExtensionMissingError,
    InvalidArgumentError,
    InvalidEmbeddingError,
    InvalidSessionError,
    MigrationError,
    MigrationLockTimeout,
    SessionExistsError,
    SessionNotFoundError,
    ShareddbError,
)
from .sessions import SessionRecord, SessionStorage
from .vectors import IndexInfo, SearchResult, VectorStorage

__all__ = [
    "AppliedMigration",
    "ChecksumMismatchError",
    "ConfigError",
    "DatabaseUnavailableError",
    "DbConfig",
    "DbService",
    "DimensionMismatchError",
    "ExtensionMissingError",
    "IndexInfo",
    "InvalidArgumentError",
    "InvalidEmbeddingError",
    "InvalidSessionError",
    "MigrationError",
    "MigrationInfo",
    "MigrationLockTimeout",
    "MigrationReport",
    "SearchResult",
    "SessionExistsError",
    "SessionNotFoundError",
    "SessionRecord",
    "SessionStorage",
    "ShareddbError",
    "VectorStorage",
    "close_shared_dbs",
    "get_shared_db",
    "load_config",
]
