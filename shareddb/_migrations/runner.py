"""The one apply loop: verify the ledger, then apply each pending file with its ledger row.

Every engine runs migrations through `apply_pending`; what differs (the lock, the
ledger's SQL, how a statement runs) comes from the engine's `MigrationSession`.
The ledger is read and verified again inside each file's transaction, under the
migration lock, so concurrent processes apply every file exactly once, and a
refused run (an edited file, pgvector missing) changes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from shareddb._migrations.files import MigrationFile
from shareddb._migrations.ledger import AppliedMigration, OnApplied, statement_error, verify

if TYPE_CHECKING:
    from shareddb._engines.base import MigrationSession

logger = logging.getLogger("shareddb.migrate")

IN_TRANSACTION_NOTE = "nothing of this file was applied and schema_migrations is unchanged"
NO_TRANSACTION_NOTE = (
    "earlier statements of this no-transaction file stay applied and the file is not "
    "recorded; make it idempotent (IF NOT EXISTS) and run initialize() again"
)


def apply_pending(
    session: MigrationSession,
    files: Sequence[MigrationFile],
    on_applied: OnApplied | None = None,
) -> list[AppliedMigration]:
    """Apply what is pending, one file (and its ledger row) per transaction, in order."""
    applied: list[AppliedMigration] = []
    prepared = False
    while True:
        with session.transaction():
            ledger = session.ledger()
            pending = verify(files, ledger or [])
            if not prepared:
                session.prepare()
                prepared = True
            if ledger is None:
                session.create_ledger()
            if not pending:
                return applied
            migration = pending[0]
            if migration.transactional:
                elapsed = _run(session, migration, IN_TRANSACTION_NOTE)
                session.record(migration, elapsed)
        if not migration.transactional:
            elapsed = _run(session, migration, NO_TRANSACTION_NOTE)
            with session.transaction():
                if not session.recorded(migration):  # another process may have run it too
                    session.record(migration, elapsed)
        logger.info("applied migration %s in %.1f ms", migration.label, elapsed)
        applied.append(
            AppliedMigration(migration.namespace, migration.version, migration.filename, elapsed)
        )
        if on_applied is not None:
            on_applied(applied[-1])


def _run(session: MigrationSession, migration: MigrationFile, note: str) -> float:
    """Run the file's statements; milliseconds taken, or MigrationError naming the statement."""
    started = time.perf_counter()
    for stmt in session.statements(migration):
        try:
            session.execute(stmt)
        except Exception as e:
            sqlstate = session.sqlstate(e)
            if sqlstate is False:
                raise
            raise statement_error(migration, stmt, e, sqlstate, note) from e
    return (time.perf_counter() - started) * 1000
