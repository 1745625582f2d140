"""A PostgreSQL server without pgvector: initialize() explains the fix and creates nothing.

Runs where such a server is reachable (this machine kind has PostgreSQL 15 without
pgvector on 127.0.0.1:5432); the `plain_pg_url` fixture skips elsewhere.
"""

from __future__ import annotations

import psycopg
import pytest
from foundation_helpers import scalar
from psycopg.conninfo import conninfo_to_dict

from shareddb import DbService, ExtensionMissingError, ShareddbError

pytestmark = pytest.mark.postgres


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
    assert isinstance(info.value, ShareddbError)
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
