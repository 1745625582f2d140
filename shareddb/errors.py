"""The shareddb exception family.

Every message names the object involved and the next step, as a full sentence.
Catch `ShareddbError` to handle anything shareddb raises on purpose; errors that
come from the driver for hand-written SQL (``psycopg.Error``, ``sqlite3.Error``)
pass through unchanged.
"""

from __future__ import annotations


class ShareddbError(Exception):
    """Base class of every error shareddb raises on purpose.

    `fix` is the next step on its own (as psycopg's ``diag.message_hint``) when the
    error was raised with one; the message then ends with it, after ``"; "``.
    """

    def __init__(self, message: str = "", *, fix: str | None = None) -> None:
        super().__init__(f"{message}; {fix}" if fix else message)
        self.fix = fix


class ConfigError(ShareddbError, ValueError):
    """A configuration file, URL or argument is invalid."""


class InvalidArgumentError(ShareddbError, ValueError):
    """An argument to a shareddb method is invalid: an id, `k`, a metric, a table name, …"""


class DatabaseUnavailableError(ShareddbError):
    """The database could not be reached, or no connection was free in time."""


class ReadOnlyDatabaseError(ShareddbError):
    """A write, or `initialize()` with work to do, was sent to a server that refuses writes.

    Raised for a hot standby (a read replica in recovery) and for a server whose
    ``default_transaction_read_only`` is on; the message says which, and to point
    writes at the primary.
    """


class MigrationError(ShareddbError):
    """A migration could not be discovered, verified or applied.

    When a statement failed, `namespace`, `filename`, `statement`, `line` and
    `sqlstate` say where; the others stay None.
    """

    def __init__(
        self,
        message: str,
        *,
        namespace: str | None = None,
        filename: str | None = None,
        statement: int | None = None,
        line: int | None = None,
        sqlstate: str | None = None,
        fix: str | None = None,
    ) -> None:
        super().__init__(message, fix=fix)
        self.namespace = namespace
        self.filename = filename
        self.statement = statement
        self.line = line
        self.sqlstate = sqlstate


class ChecksumMismatchError(MigrationError):
    """An applied migration file was edited after it was applied."""


class MigrationLockTimeout(MigrationError):
    """Another process held the migration lock for longer than allowed."""


class MigrationThroughPoolerError(MigrationError):
    """`initialize()` has work to do but would run it through a transaction pooler.

    The migration lock is a session lock, which a transaction pooler can't hold: set
    ``direct_url=`` (``[db] direct_url``) to a connection that reaches the server directly.
    """


class ExtensionMissingError(ShareddbError):
    """pgvector is not installed on the server, too old, or may not be created."""


class DimensionMismatchError(ShareddbError, ValueError):
    """An embedding's length does not match the stored or indexed dimension."""


class InvalidEmbeddingError(ShareddbError, ValueError):
    """An embedding is not a 1-D array of finite real numbers of a valid size."""


class EmbeddingNotFoundError(ShareddbError, KeyError):
    """No embedding is stored under the id that `VectorStorage.search_by_id()` was given."""

    def __str__(self) -> str:  # KeyError's own would quote the message
        return str(self.args[0]) if self.args else ""


class InvalidSessionError(InvalidArgumentError):
    """A session record, name, field or filter is invalid (wrong type, empty, NUL, …)."""


class SessionExistsError(ShareddbError):
    """`SessionStorage.add()` was given a name that another session already has."""


class SessionNotFoundError(ShareddbError, LookupError):
    """No session has the name that `SessionStorage.update()` was given."""
