"""DbService: lifecycle, transactions, threads, pooled connections, fork, failures, masking."""

from __future__ import annotations

import logging
import random
import socket
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import psycopg
import pytest
from helpers import pool_of, run_in_child, scalar
from psycopg_pool import ConnectionPool

from shareddb import (
    ConfigError,
    DatabaseUnavailableError,
    DbService,
    MigrationLockTimeout,
    VectorStorage,
)

SECRET = "Hunter2-s3cret"


def closed_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def make_table(db: DbService) -> None:
    with db.connection() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t (id integer PRIMARY KEY, v integer)")


def ph(db: DbService) -> str:
    return "?" if db.get_backend_type() == "sqlite" else "%s"


def ids(db: DbService) -> list[int]:
    with db.connection() as conn:
        return [r[0] for r in conn.execute("SELECT id FROM t ORDER BY id")]


# -- construction and lifecycle ----------------------------------------------------------------


def test_constructor_does_no_io(tmp_path: Path) -> None:
    target = tmp_path / "not" / "yet" / "there.db"
    db = DbService(f"sqlite:///{target}")
    assert not target.parent.exists()
    assert "closed" in repr(db)
    # An unreachable server is fine too, until something connects.
    DbService(f"postgresql://u:{SECRET}@127.0.0.1:{closed_port()}/db", timeout=1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_size": -1},
        {"max_size": 0},
        {"min_size": 5, "max_size": 2},
        {"timeout": 0},
        {"timeout": -1.0},
        {"timeout": float("nan")},
        {"timeout": "30"},
        {"min_size": 1.5},
    ],
)
def test_bad_pool_arguments_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        DbService("sqlite:///:memory:", **kwargs)  # type: ignore[arg-type]


def test_context_manager_opens_and_closes(db_url: str) -> None:
    db = DbService(db_url)
    with db as entered:
        assert entered is db
        assert "open" in repr(db)
    assert repr(db).endswith("closed>")


def test_open_is_idempotent_and_close_then_reopen_keeps_data(db_url: str) -> None:
    db = DbService(db_url)
    db.open()
    sql = db.get_sql()
    db.open()
    assert db.get_sql() is sql
    make_table(db)
    with db.connection() as conn:
        conn.execute(f"INSERT INTO t (id) VALUES ({ph(db)})", (1,))
    db.close()
    db.close()  # closing twice is harmless
    assert "closed" in repr(db)
    db.open()
    assert db.get_sql() is not sql
    assert ids(db) == [1]
    db.close()


def test_connection_opens_a_closed_service_on_demand(db_url: str) -> None:
    db = DbService(db_url)
    try:
        with db.connection() as conn:
            assert conn.execute("SELECT 1").fetchone()[0] == 1
        assert "open" in repr(db)
    finally:
        db.close()


def test_get_sql_returns_the_underlying_client(db: DbService) -> None:
    client = db.get_sql()
    if db.get_backend_type() == "sqlite":
        assert isinstance(client, sqlite3.Connection)
        assert client.execute("SELECT 2").fetchone()[0] == 2
    else:
        assert isinstance(client, ConnectionPool)
        with client.connection() as conn:
            assert scalar(conn.execute("SELECT 2")) == 2


def test_backend_type_follows_the_url(sqlite_url: str) -> None:
    assert DbService(sqlite_url).get_backend_type() == "sqlite"
    assert DbService("sqlite:///:memory:").get_backend_type() == "sqlite"
    assert DbService("postgresql://h/db").get_backend_type() == "postgres"
    assert DbService("postgres://h/db").get_backend_type() == "postgres"


def test_memory_database_works(tmp_path: Path) -> None:
    with DbService("sqlite:///:memory:") as db:
        db.initialize()
        make_table(db)
        with db.connection() as conn:
            conn.execute("INSERT INTO t (id) VALUES (1)")
        assert ids(db) == [1]


def test_relative_sqlite_url_is_relative_to_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with DbService("sqlite:///sub/rel.db") as db:
        db.initialize()
    assert (tmp_path / "sub" / "rel.db").is_file()


def test_sqlite_connection_settings(sqlite_url: str) -> None:
    with DbService(sqlite_url, timeout=7.5) as db, db.connection() as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 7500


# -- transactions ------------------------------------------------------------------------------


def test_connection_commits_on_success(db: DbService) -> None:
    make_table(db)
    with db.connection() as conn:
        conn.execute(f"INSERT INTO t (id) VALUES ({ph(db)})", (1,))
    # Seen from an independent connection, so it really was committed.
    assert ids(db) == [1]
    with DbService(_raw_url(db)) as other:
        assert ids(other) == [1]


def _raw_url(db: DbService) -> str:
    return db.engine.target.url  # the unmasked url, to open a second service


def test_connection_rolls_back_on_error(db: DbService) -> None:
    make_table(db)

    class Boom(Exception):
        pass

    with pytest.raises(Boom), db.connection() as conn:
        conn.execute(f"INSERT INTO t (id) VALUES ({ph(db)})", (1,))
        raise Boom
    assert ids(db) == []


def test_sql_error_rolls_back_the_whole_block(db: DbService) -> None:
    make_table(db)
    with pytest.raises((sqlite3.Error, psycopg.Error)), db.connection() as conn:
        conn.execute("INSERT INTO t (id) VALUES (1)")
        conn.execute("INSERT INTO t (id) VALUES (1)")  # duplicate key
    assert ids(db) == []
    with db.connection() as conn:  # the service is usable afterwards
        conn.execute("INSERT INTO t (id) VALUES (2)")
    assert ids(db) == [2]


def test_transaction_is_a_unit_of_work(db: DbService) -> None:
    make_table(db)
    with db.transaction() as conn:
        conn.execute("INSERT INTO t (id) VALUES (1)")
        conn.execute("INSERT INTO t (id) VALUES (2)")
    with pytest.raises(RuntimeError), db.transaction() as conn:
        conn.execute("INSERT INTO t (id) VALUES (3)")
        raise RuntimeError("undo")
    assert ids(db) == [1, 2]


def test_nested_sqlite_blocks_are_savepoints(sqlite_url: str) -> None:
    with DbService(sqlite_url) as db:
        make_table(db)
        with db.connection() as outer:
            outer.execute("INSERT INTO t (id) VALUES (1)")
            with pytest.raises(KeyError), db.connection() as inner:
                assert inner is outer
                inner.execute("INSERT INTO t (id) VALUES (2)")
                raise KeyError("inner fails")
            with db.transaction() as inner:
                inner.execute("INSERT INTO t (id) VALUES (3)")
        assert ids(db) == [1, 3]
        # A committed inner block is undone with its outer one.
        with pytest.raises(ValueError), db.connection() as outer:
            with db.connection() as inner:
                inner.execute("INSERT INTO t (id) VALUES (4)")
            raise ValueError("outer fails")
        assert ids(db) == [1, 3]


def test_sqlite_threads_share_one_connection_safely(sqlite_url: str) -> None:
    with DbService(sqlite_url) as db:
        with db.connection() as conn:
            conn.execute("CREATE TABLE counter (n integer NOT NULL)")
            conn.execute("INSERT INTO counter VALUES (0)")
        errors: list[BaseException] = []

        def work() -> None:
            try:
                for _ in range(50):
                    # read-modify-write: lost updates if two threads interleaved
                    with db.connection() as conn:
                        n = conn.execute("SELECT n FROM counter").fetchone()[0]
                        conn.execute("UPDATE counter SET n = ?", (n + 1,))
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        with db.connection() as conn:
            assert conn.execute("SELECT n FROM counter").fetchone()[0] == 400


@pytest.mark.postgres
def test_postgres_threads_use_separate_pooled_connections(pg_url: str) -> None:
    with DbService(pg_url, max_size=4) as db:
        with db.connection() as conn:
            conn.execute("CREATE TABLE counter (n integer NOT NULL)")
            conn.execute("INSERT INTO counter VALUES (0)")
        errors: list[BaseException] = []

        def work() -> None:
            try:
                for _ in range(25):
                    with db.connection() as conn:
                        conn.execute("UPDATE counter SET n = n + 1")
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=work) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        with db.connection() as conn:
            assert conn.execute("SELECT n FROM counter").fetchone()[0] == 150


def test_sqlite_write_lock_held_elsewhere_times_out_clearly(
    sqlite_url: str, tmp_path: Path
) -> None:
    with DbService(sqlite_url, timeout=0.3) as db:
        make_table(db)
        blocker = sqlite3.connect(tmp_path / "shareddb.db", isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            with (
                pytest.raises(DatabaseUnavailableError, match="locked") as info,
                db.connection() as conn,
            ):
                conn.execute("INSERT INTO t (id) VALUES (1)")
            assert "0.30 sec" in str(info.value)
            with pytest.raises(MigrationLockTimeout, match="write lock"):
                DbService(
                    sqlite_url, timeout=0.3, schema_dirs={"app": _empty_dir(tmp_path)}
                ).initialize()
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        with db.connection() as conn:
            conn.execute("INSERT INTO t (id) VALUES (1)")
        assert ids(db) == [1]


def test_open_waits_for_a_writer_while_switching_a_fresh_file_to_wal(tmp_path: Path) -> None:
    # SQLite refuses the switch to WAL at once ("database is locked", busy timeout
    # ignored) while another connection holds the write lock: what happens when
    # several processes open a fresh database at the same moment.
    path = tmp_path / "fresh.db"
    setup = sqlite3.connect(path)
    setup.execute("CREATE TABLE t (id integer)")
    setup.commit()
    setup.close()
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, writer.execute, ("ROLLBACK",))
    release.start()
    try:
        with DbService(f"sqlite:///{path}", timeout=10) as db, db.connection() as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        release.join()
        writer.close()


def test_open_gives_up_on_wal_after_the_timeout(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    sqlite3.connect(path).execute("CREATE TABLE t (id integer)").connection.close()
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(DatabaseUnavailableError, match=r"0\.20 sec") as info:
            DbService(f"sqlite:///{path}", timeout=0.2).open()
        assert "locked" in str(info.value)
    finally:
        writer.close()


def _empty_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "empty-app"
    folder.mkdir(exist_ok=True)
    (folder / "0001_x.sql").write_text("CREATE TABLE x (id integer);\n")
    return folder


def test_sqlite_thread_waiting_for_a_long_transaction_times_out(sqlite_url: str) -> None:
    with DbService(sqlite_url, timeout=0.3) as db:
        make_table(db)
        inside, release = threading.Event(), threading.Event()

        def hold() -> None:
            with db.connection():
                inside.set()
                release.wait(10)

        holder = threading.Thread(target=hold)
        holder.start()
        try:
            assert inside.wait(10)
            with (
                pytest.raises(DatabaseUnavailableError, match="another thread"),
                db.connection(),
            ):
                pass
        finally:
            release.set()
            holder.join()
        with db.connection() as conn:
            assert conn.execute("SELECT 1").fetchone()[0] == 1


# -- failures and masking ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "postgresql://alice:{secret}@127.0.0.1:{port}/app",
        "postgres://alice@127.0.0.1:{port}/app?password={secret}",
        "postgresql://alice:{encoded}@127.0.0.1:{port}/app",
    ],
)
def test_unreachable_server_raises_unavailable_with_the_password_masked(
    template: str, caplog: pytest.LogCaptureFixture
) -> None:
    raw_password = f"{SECRET}@/:"
    encoded = "Hunter2-s3cret%40%2F%3A"
    url = template.format(secret=SECRET, encoded=encoded, port=closed_port())
    caplog.set_level(logging.DEBUG)
    db = DbService(url, timeout=1)
    with pytest.raises(DatabaseUnavailableError) as info:
        db.open()
    message = str(info.value)
    assert "127.0.0.1:" in message
    assert "***" in message
    assert "check that the server is running" in message
    with pytest.raises(DatabaseUnavailableError) as info2, db.connection():
        pass
    with pytest.raises(DatabaseUnavailableError) as info3:
        db.initialize()
    texts = [message, str(info2.value), str(info3.value), repr(db)]
    texts += [r.getMessage() for r in caplog.records]
    for text in texts:
        assert SECRET not in text
        assert encoded not in text
        assert raw_password not in text
    assert info.value.__cause__ is None or SECRET not in str(info.value.__cause__)


@pytest.mark.postgres
def test_logs_and_reprs_never_show_the_password(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = pg_url.replace("postgresql://postgres:@", f"postgresql://postgres:{SECRET}@")
    assert SECRET in url  # the embedded server trusts local sockets: any password works
    caplog.set_level(logging.DEBUG)
    with DbService(url) as db:
        db.initialize()
        with db.connection() as conn:
            conn.execute("SELECT 1")
        assert SECRET not in repr(db)
        assert SECRET not in db.url
    assert caplog.records, "shareddb logs what it does at DEBUG"
    for record in caplog.records:
        assert SECRET not in record.getMessage()


def test_sqlite_file_that_cannot_be_created_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    db = DbService(f"sqlite:///{blocker}/sub/x.db")
    with pytest.raises(DatabaseUnavailableError, match="couldn't open SQLite database"):
        db.open()


@pytest.mark.postgres
def test_pool_timeout_when_every_connection_is_held(pg_url: str) -> None:
    with DbService(pg_url, min_size=1, max_size=1, timeout=0.5) as db:
        with (
            db.connection(),
            pytest.raises(DatabaseUnavailableError) as info,
            db.connection(),
        ):
            pass
        message = str(info.value)
        assert "all 1 connections of the pool are in use" in message
        assert "0.50 sec" in message
        with db.connection() as conn:  # released, it works again
            assert conn.execute("SELECT 1").fetchone()[0] == 1


@pytest.mark.postgres
def test_postgres_connection_has_vector_types_and_percent_s_placeholders(pg_url: str) -> None:
    with DbService(pg_url) as db:
        db.initialize()
        with db.connection() as conn:
            assert isinstance(conn, psycopg.Connection)
            value = scalar(conn.execute("SELECT %s::vector", ("[1,2]",)))
            assert type(value).__name__ == "Vector"


# -- pooled PostgreSQL connections -------------------------------------------------------------


@pytest.mark.postgres
def test_pooled_connections_rest_in_autocommit_and_connection_still_rolls_back(
    one_connection: DbService,
) -> None:
    db = one_connection
    with pool_of(db).connection() as raw:
        assert raw.autocommit is True
        raw.execute("CREATE TABLE t (id integer PRIMARY KEY)")

    class Boom(Exception):
        pass

    with pytest.raises(Boom), db.connection() as conn:
        assert conn.autocommit is False
        conn.execute("INSERT INTO t VALUES (1)")
        raise Boom
    with db.connection() as conn:
        conn.execute("INSERT INTO t VALUES (2)")
        conn.commit()  # an explicit commit inside the block still works
        conn.execute("INSERT INTO t VALUES (3)")
    with pool_of(db).connection() as raw:
        assert raw.autocommit is True  # back to how pooled connections rest
        assert [r[0] for r in raw.execute("SELECT id FROM t ORDER BY id")] == [2, 3]


@pytest.mark.postgres
def test_writes_commit_after_a_raw_user_left_the_connection_out_of_autocommit(
    one_connection: DbService, pg_url: str
) -> None:
    db = one_connection
    pool = pool_of(db)
    raw = pool.getconn()
    raw.autocommit = False
    pool.putconn(raw)
    vectors = VectorStorage(db)
    vectors.upsert("md#1", np.array([1.0, 2.0], np.float32))
    with psycopg.connect(pg_url) as other:  # a separate session sees the commit
        row = other.execute(
            "SELECT count(*) FROM task_embeddings WHERE qualified_task_id = 'md#1'"
        ).fetchone()
        assert row is not None and row[0] == 1


# -- fork --------------------------------------------------------------------------------------


def test_use_after_fork_raises_a_clear_error(db: DbService) -> None:
    def child() -> str:
        with db.connection() as conn:
            conn.execute("SELECT 1")
        return "no error"

    result = run_in_child(child)
    assert result.startswith("ShareddbError: ")
    assert "after fork()" in result
    assert "get_shared_db()" in result
    # The parent is unaffected.
    with db.connection() as conn:
        assert conn.execute("SELECT 1").fetchone()[0] == 1


def test_close_in_a_forked_child_leaves_the_parent_working(db: DbService) -> None:
    make_table(db)

    def child() -> str:
        db.close()  # must not close the parent's connections
        db.open()  # the child's own connection
        with db.connection() as conn:
            conn.execute(f"INSERT INTO t (id) VALUES ({ph(db)})", (7,))
        db.close()
        return "ok"

    assert run_in_child(child) == "ok"
    for _ in range(3):
        with db.connection() as conn:
            conn.execute("SELECT 1")
    assert ids(db) == [7]


@pytest.mark.postgres
def test_connections_are_named_and_the_urls_own_settings_win(pg_url: str) -> None:
    with DbService(pg_url, timeout=3) as db, db.connection() as conn:
        assert scalar(conn.execute("SHOW application_name")) == "shareddb"
        assert conn.info.get_parameters()["connect_timeout"] == "3"
    sep = "&" if "?" in pg_url else "?"
    own = f"{pg_url}{sep}application_name=myapp&connect_timeout=11"
    with DbService(own, timeout=3) as db, db.connection() as conn:
        assert scalar(conn.execute("SHOW application_name")) == "myapp"
        assert conn.info.get_parameters()["connect_timeout"] == "11"


@pytest.mark.parametrize(
    "db_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_db_fixture_starts_tests_with_no_background_pool_work(db: DbService) -> None:
    """A pool refilling behind the test draws from `random`, and Hypothesis fails on it."""
    before = random.getstate()
    time.sleep(0.2)
    assert random.getstate() == before


def test_a_single_threaded_user_holds_one_pooled_connection(pg_url: str) -> None:
    with DbService(pg_url) as db:
        db.initialize()  # a new database: creates pgvector and remakes the pooled connections
    with DbService(pg_url) as db:
        pool = db.get_sql()
        assert isinstance(pool, ConnectionPool)
        db.initialize()
        for _ in range(20):
            with db.connection() as conn:
                conn.execute("SELECT 1")
            assert db.migration_status()
        assert pool.get_stats()["pool_size"] == 1
