"""shareddb: one shared database layer in plain SQL, on SQLite or PostgreSQL + pgvector."""

from shareddb._async.service import AsyncDbService
from shareddb._async.shared import close_shared_async_dbs, get_shared_async_db
from shareddb._core.config import DbConfig, load_config
from shareddb._core.service import DbService
from shareddb._core.shared import close_shared_dbs, get_shared_db
from shareddb._migrations.ledger import AppliedMigration, MigrationInfo, MigrationReport
from shareddb.errors import (
    ChecksumMismatchError,
    ConfigError,
    DatabaseUnavailableError,
    DimensionMismatchError,
    EmbeddingNotFoundError,
    ExtensionMissingError,
    InvalidArgumentError,
    InvalidEmbeddingError,
    InvalidSessionError,
    MigrationError,
    MigrationLockTimeout,
    MigrationThroughPoolerError,
    ReadOnlyDatabaseError,
    SessionExistsError,
    SessionNotFoundError,
    ShareddbError,
)
from shareddb.sessions import AsyncSessionStorage, SessionRecord, SessionStorage
from shareddb.vectors import (
    AsyncVectorStorage,
    EmbeddingItem,
    EmbeddingRecord,
    IndexInfo,
    SearchHit,
    SearchResult,
    VectorStorage,
)

# Public types defined in private modules show (and pickle) under the name users import.
for _public in (
    AppliedMigration,
    AsyncDbService,
    DbConfig,
    DbService,
    MigrationInfo,
    MigrationReport,
):
    _public.__module__ = __name__

__all__ = [
    "AppliedMigration",
    "AsyncDbService",
    "AsyncSessionStorage",
    "AsyncVectorStorage",
    "ChecksumMismatchError",
    "ConfigError",
    "DatabaseUnavailableError",
    "DbConfig",
    "DbService",
    "DimensionMismatchError",
    "EmbeddingItem",
    "EmbeddingNotFoundError",
    "EmbeddingRecord",
    "ExtensionMissingError",
    "IndexInfo",
    "InvalidArgumentError",
    "InvalidEmbeddingError",
    "InvalidSessionError",
    "MigrationError",
    "MigrationInfo",
    "MigrationLockTimeout",
    "MigrationReport",
    "MigrationThroughPoolerError",
    "ReadOnlyDatabaseError",
    "SearchHit",
    "SearchResult",
    "SessionExistsError",
    "SessionNotFoundError",
    "SessionRecord",
    "SessionStorage",
    "ShareddbError",
    "VectorStorage",
    "close_shared_async_dbs",
    "close_shared_dbs",
    "get_shared_async_db",
    "get_shared_db",
    "load_config",
]
