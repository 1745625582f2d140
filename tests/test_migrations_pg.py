"""Schema runner behaviour specific to PostgreSQL: the cheap up-to-date check, the advisory
lock, pgvector."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
from foundation_helpers import AppMigrations, ledger, scalar, table_exists
from pgvector import Vector
from psycopg_pool import ConnectionPool

from shareddb import DbService, ExtensionMissingError, MigrationLockTimeout
from shareddb._migrate_pg import LOCK_KEY

pytestmark = pytest.mark.postgres


@pytest.fixture
def app(tmp_path: Path) -> AppMigrations:
    return AppMigrations(tmp_path / "app-migrations")


def install_ddl_log(url: str) -> None:
    """An event trigger that records the tag of every DDL command run in the database."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE ddl_log (tag text NOT NULL)")
        conn.execute(
            "CREATE FUNCTION log_ddl() RETURNS event_trigger LANGUAGE plpgsql AS "
            "$$ BEGIN INSERT INTO ddl_log (tag) VALUES (tg_tag); END $$"
        )
        conn.execute("CREATE EVENT TRIGGER log_ddl ON ddl_command_start EXECUTE FUNCTION log_ddl()")


def install_login_log(url: str) -> bool:
    """A login event trigger recording shareddb's new sessions; False before PostgreSQL 17."""
    with psycopg.connect(url, autocommit=True) as conn:
        if conn.info.server_version < 170000:
            return False
        conn.execute("CREATE TABLE login_log (pid integer NOT NULL)")
        conn.execute(
            "CREATE FUNCTION log_login() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF current_setting('application_name') = 'shareddb' THEN "
            "INSERT INTO login_log (pid) VALUES (pg_backend_pid()); END IF; END $$"
        )
        conn.execute("CREATE EVENT TRIGGER log_login ON login EXECUTE FUNCTION log_login()")
    return True


def login_log(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT pid FROM login_log")]


def ddl_log(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT tag FROM ddl_log")]


@pytest.fixture
def trace_file() -> Iterator[Path]:
    fd, name = tempfile.mkstemp(prefix="shareddb-trace-")
    os.close(fd)
    yield Path(name)
    os.unlink(name)


def test_initialize_creates_pgvector_and_reports_its_version(pg_url: str) -> None:
    with DbService(pg_url) as db:
        assert db.pgvector_version is None
        db.initialize()
        version = db.pgvector_version
        assert version is not None
        assert tuple(int(p) for p in version.split(".")[:2]) >= (0, 5)
        with db.connection() as conn:
            row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            assert row.fetchone()[0] == version


def test_up_to_date_initialize_is_one_query_and_no_ddl(
    pg_url: str, app: AppMigrations, trace_file: Path
) -> None:
    app.write("0001_t.sql", "CREATE TABLE t (id integer);\n")
    with app.service(pg_url, min_size=1, max_size=1) as db:
        assert not db.initialize().up_to_date
        logins = install_login_log(pg_url)
        install_ddl_log(pg_url)
        pool = db.get_sql()
        assert isinstance(pool, ConnectionPool)
        with open(trace_file, "w") as out:
            with pool.connection() as conn:  # the pool's only connection
                conn.pgconn.trace(out.fileno())
                conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
            report = db.initialize()
            with pool.connection() as conn:
                conn.pgconn.untrace()
        assert report.up_to_date
        assert db.pgvector_version is not None
    sent = [
        line.split("\t")[2]
        for line in trace_file.read_text().splitlines()
        if line.startswith("F\t")
    ]
    queries = [m for m in sent if m in ("Query", "Parse")]
    assert len(queries) == 1, sent
    # No statement elsewhere either: no DDL anywhere, and no other connection (the
    # locked path uses its own) when the server can tell us (login triggers: PG 17+).
    assert ddl_log(pg_url) == []
    if logins:
        assert login_log(pg_url) == []


def test_initialize_with_pending_work_runs_ddl(pg_url: str, app: AppMigrations) -> None:
    # The counterpart of the test above: the DDL log does see the runner's work.
    app.write("0001_t.sql", "CREATE TABLE t (id integer);\n")
    with app.service(pg_url) as db:
        db.initialize()
        logins = install_login_log(pg_url)
        install_ddl_log(pg_url)
        app.write("0002_u.sql", "CREATE TABLE u (id integer);\n")
        db.initialize()
    assert ddl_log(pg_url) == ["CREATE TABLE"]
    if logins:
        assert len(login_log(pg_url)) == 1  # the dedicated migration connection


def test_edited_file_stops_before_any_ddl_per_the_event_log(
    pg_url: str, app: AppMigrations
) -> None:
    app.write("0001_t.sql", "CREATE TABLE t (id integer);\n")
    with app.service(pg_url) as db:
        db.initialize()
        install_ddl_log(pg_url)
        app.write("0001_t.sql", "CREATE TABLE t (id bigint);\n")
        app.write("0002_u.sql", "CREATE TABLE u (id integer);\n")
        with pytest.raises(Exception, match="was edited"):
            db.initialize()
    assert ddl_log(pg_url) == []


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


def test_connections_opened_before_pgvector_existed_get_vector_types(pg_url: str) -> None:
    with DbService(pg_url) as early:
        with early.connection() as conn:  # pooled before the extension exists
            conn.execute("SELECT 1")
        with DbService(pg_url) as other:
            other.initialize()  # another process creates the extension
        early.initialize()  # up to date now: the cheap path
        for _ in range(3):
            with early.connection() as conn:
                value = conn.execute("SELECT '[1,2,3]'::vector").fetchone()[0]
                assert isinstance(value, Vector), value  # a str when the types are missing
                np.testing.assert_array_equal(value.to_numpy(), np.array([1, 2, 3], np.float32))
                # and numpy arrays are accepted as parameters
                param = np.array([4, 5, 6], dtype=np.float32)
                echoed = conn.execute("SELECT %s::vector", (param,)).fetchone()[0]
                np.testing.assert_array_equal(echoed.to_numpy(), param)


def test_every_pooled_connection_has_vector_types_after_initialize(pg_url: str) -> None:
    with DbService(pg_url, min_size=3, max_size=3) as db:
        db.initialize()
        pool = db.get_sql()
        assert isinstance(pool, ConnectionPool)
        conns = [pool.getconn(timeout=10) for _ in range(3)]
        try:
            for conn in conns:
                value = scalar(conn.execute("SELECT '[0.5,2]'::vector"))
                assert isinstance(value, Vector), value
                conn.rollback()
        finally:
            for conn in conns:
                pool.putconn(conn)


def test_role_that_may_not_create_pgvector_gets_the_grant_that_fixes_it(pg_url: str) -> None:
    role = "shareddb_plain_role"
    with psycopg.connect(pg_url, autocommit=True) as admin:
        dbname = admin.info.dbname
        admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
        admin.execute(f'GRANT CREATE, CONNECT ON DATABASE "{dbname}" TO "{role}"')
        admin.execute(f'GRANT CREATE, USAGE ON SCHEMA public TO "{role}"')
    user_url = pg_url.replace("postgresql://postgres:@", f"postgresql://{role}:@")
    assert role in user_url
    try:
        with DbService(user_url) as db:
            with pytest.raises(ExtensionMissingError) as info:
                db.initialize()
            message = str(info.value)
            assert f"role '{role}' may not create the pgvector extension" in message
            assert "CREATE EXTENSION vector" in message
            assert repr(dbname) in message
            assert not table_exists(db, "schema_migrations")
        # Once a superuser created it, the same role initializes.
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("CREATE EXTENSION vector")
        with DbService(user_url) as db:
            db.initialize()
            assert table_exists(db, "schema_migrations")
    finally:
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("DROP SCHEMA public CASCADE")
            admin.execute("CREATE SCHEMA public")
            admin.execute(f'REVOKE ALL ON DATABASE "{dbname}" FROM "{role}"')
            admin.execute(f'DROP ROLE "{role}"')
