"""pgvector: initialize() creates it, its types reach every pooled connection, and a server or
role that can't provide it gets an error naming the fix, with nothing created.

The tests on a server without pgvector run where one is reachable (this machine kind has
PostgreSQL 15 without pgvector on 127.0.0.1:5432); the `plain_pg_url` fixture skips elsewhere.
"""

from __future__ import annotations

import numpy as np
import psycopg
import pytest
from helpers import scalar, table_exists
from pgvector import Vector
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from shareddb import DbService, ExtensionMissingError

pytestmark = pytest.mark.postgres


# -- on a server with pgvector ---------------------------------------------------------------


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


# -- on a server without pgvector ------------------------------------------------------------


def user_relations(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')"
            )
        ]


def test_initialize_without_pgvector_names_the_server_and_the_fix(plain_pg_url: str) -> None:
    params = conninfo_to_dict(plain_pg_url)
    with psycopg.connect(plain_pg_url) as conn:
        major = conn.info.server_version // 10000
    with DbService(plain_pg_url) as db:
        with pytest.raises(ExtensionMissingError) as info:
            db.initialize()
        assert db.pgvector_version is None
    message = str(info.value)
    assert str(params["dbname"]) in message
    assert str(params["host"]) in message
    assert f"postgresql-{major}-pgvector" in message
    assert "shareddb[embedded]" in message
    # Nothing was created: no ledger, no table of any migration, no extension.
    assert user_relations(plain_pg_url) == []
    with psycopg.connect(plain_pg_url) as conn:
        assert (
            scalar(conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'vector'")) == 0
        )


def test_initialize_without_pgvector_fails_the_same_way_every_time(plain_pg_url: str) -> None:
    with DbService(plain_pg_url) as db:
        for _ in range(2):
            with pytest.raises(ExtensionMissingError, match="pgvector is not installed"):
                db.initialize()
        # The service itself still works for plain SQL.
        with db.connection() as conn:
            assert conn.execute("SELECT 41 + 1").fetchone()[0] == 42
    assert user_relations(plain_pg_url) == []


def test_password_in_the_url_stays_out_of_the_message(plain_pg_url: str) -> None:
    # trust auth ignores the password, so the connection works and the message is built.
    url = plain_pg_url.replace("postgresql://postgres@", "postgresql://postgres:Sup3rSecret@")
    assert "Sup3rSecret" in url
    with DbService(url) as db, pytest.raises(ExtensionMissingError) as info:
        db.initialize()
    assert "Sup3rSecret" not in str(info.value)
    assert "***" in str(info.value)
