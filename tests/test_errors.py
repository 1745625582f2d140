"""The public error family: what kind of error each exported class is (no database needed).

The class hierarchy is checked here once; the other tests check which error a call raises.
"""

from __future__ import annotations

import shareddb
from shareddb import (
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

# The kinds a caller may catch: shareddb's own bases, and the built-in ones.
KINDS: tuple[type[BaseException], ...] = (
    ShareddbError,
    InvalidArgumentError,
    MigrationError,
    ValueError,
    LookupError,
    TypeError,
    OSError,
    RuntimeError,
)

# Every public error class and exactly the KINDS it belongs to (README, "Errors").
FAMILY: dict[type[BaseException], set[type[BaseException]]] = {
    ShareddbError: {ShareddbError},
    ConfigError: {ShareddbError, ValueError},
    InvalidArgumentError: {ShareddbError, InvalidArgumentError, ValueError},
    InvalidSessionError: {ShareddbError, InvalidArgumentError, ValueError},
    InvalidEmbeddingError: {ShareddbError, ValueError},
    DimensionMismatchError: {ShareddbError, ValueError},
    SessionExistsError: {ShareddbError},
    SessionNotFoundError: {ShareddbError, LookupError},
    EmbeddingNotFoundError: {ShareddbError, LookupError},
    DatabaseUnavailableError: {ShareddbError},
    MigrationError: {ShareddbError, MigrationError},
    ChecksumMismatchError: {ShareddbError, MigrationError},
    MigrationLockTimeout: {ShareddbError, MigrationError},
    MigrationThroughPoolerError: {ShareddbError, MigrationError},
    ExtensionMissingError: {ShareddbError},
    ReadOnlyDatabaseError: {ShareddbError},
}


def test_error_family() -> None:
    exported = {
        value
        for name in shareddb.__all__
        if isinstance(value := getattr(shareddb, name), type) and issubclass(value, BaseException)
    }
    assert exported == set(FAMILY), "every public error class has its line in FAMILY"
    actual = {cls: {kind for kind in KINDS if issubclass(cls, kind)} for cls in FAMILY}
    assert actual == FAMILY
