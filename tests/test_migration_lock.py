"""The migration lock on PostgreSQL: an advisory lock, its timeout, its scope.

Many processes initializing one database at once: test_concurrent_initialize.py.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from helpers import AppMigrations, ledger, scalar, table_exists

from shareddb import MigrationLockTimeout
from shareddb._engines.postgres.migrate import LOCK_KEY

pytestmark = pytest.mark.postgres


@pytest.fixture
def app(tmp_path: Path) -> AppMigrations:
    return AppMigrations(tmp_path / "app-migrations")


def test_lock_timeout_names_the_holder(pg_url: str, app: AppMigrations) -> None:
    app.write("0001_t.sql", "CREATE TABLE t (id integer);\n")
    with psycopg.connect(pg_url, autocommit=True, application_name="stuck-migrator") as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        holder_pid = holder.info.backend_pid
        with app.service(pg_url) as db:
            with pytest.raises(MigrationLockTimeout) as info:
                db.initialize(lock_timeout=0.3)
            message = str(info.value)
            assert f"pid {holder_pid}" in message
            assert "stuck-migrator" in message
            assert "pg_terminate_backend" in message
            assert "0.30 sec" in message
            assert not table_exists(db, "t")
        holder.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
        # Released, the same call goes through.
        with app.service(pg_url) as db:
            db.initialize(lock_timeout=0.3)
            assert ledger(db) == [(1, "0001_t.sql")]


def test_lock_is_released_after_a_failed_migration(pg_url: str, app: AppMigrations) -> None:
    app.write("0001_bad.sql", "SELECT * FROM nope;\n")
    with app.service(pg_url) as db, pytest.raises(Exception, match="nope"):
        db.initialize()
    with psycopg.connect(pg_url, autocommit=True) as other:
        assert scalar(other.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)))


def test_lock_does_not_block_other_databases(
    pg_url: str, pg_server_url: str, app: AppMigrations
) -> None:
    # Advisory locks are per database: a lock held in another database does not matter.
    with psycopg.connect(pg_server_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        app.write("0001_t.sql", "CREATE TABLE t (id integer);\n")
        with app.service(pg_url) as db:
            db.initialize(lock_timeout=0.3)
            assert table_exists(db, "t")
        holder.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
