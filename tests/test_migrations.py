"""The schema runner on both backends: ledger, transactions, integrity checks, status, and
the cost of an up-to-date initialize() (one statement, no DDL)."""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import psycopg
import pytest
from helpers import (
    AppMigrations,
    builtin_files,
    index_exists,
    ledger,
    pool_of,
    settle,
    table_exists,
)
from psycopg_pool import ConnectionPool

from shareddb import (
    AppliedMigration,
    ChecksumMismatchError,
    DbService,
    MigrationError,
    MigrationInfo,
)
from shareddb._migrations.files import checksum


@pytest.fixture
def app(tmp_path: Path) -> AppMigrations:
    return AppMigrations(tmp_path / "app-migrations")


def backend_of(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else "postgres"


def states(db: DbService, namespace: str = "app") -> list[tuple[int, str, str]]:
    return [(m.version, m.name, m.state) for m in db.migration_status() if m.namespace == namespace]


# -- the ledger -----------------------------------------------------------------------------


def test_ledger_has_the_documented_columns_and_primary_key(db: DbService) -> None:
    expected = ["namespace", "version", "name", "checksum", "applied_at", "execution_ms"]
    with db.connection() as conn:
        if db.get_backend_type() == "sqlite":
            info = conn.execute("PRAGMA table_info(schema_migrations)").fetchall()
            columns = [row[1] for row in info]
            pk = [row[1] for row in sorted(info, key=lambda r: r[5]) if row[5]]
        else:
            columns = [
                r[0]
                for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_name = 'schema_migrations' ORDER BY ordinal_position"
                )
            ]
            pk = [
                r[0]
                for r in conn.execute(
                    "SELECT a.attname FROM pg_index i "
                    "JOIN pg_attribute a ON a.attrelid = i.indrelid "
                    "AND a.attnum = ANY(i.indkey) "
                    "WHERE i.indrelid = 'schema_migrations'::regclass AND i.indisprimary "
                    "ORDER BY array_position(i.indkey, a.attnum)"
                )
            ]
    assert columns == expected
    assert pk == ["namespace", "version"]


def test_builtin_migrations_are_all_recorded_with_their_checksums(db: DbService) -> None:
    backend = db.get_backend_type()
    folder = Path(__file__).resolve().parent.parent / "shareddb" / "schema" / backend
    with db.connection() as conn:
        rows = conn.execute(
            "SELECT name, checksum, applied_at, execution_ms FROM schema_migrations "
            "WHERE namespace = 'shareddb' ORDER BY version"
        ).fetchall()
    assert [r[0] for r in rows] == builtin_files(backend)
    for name, digest, applied_at, execution_ms in rows:
        assert digest == checksum((folder / name).read_text(encoding="utf-8-sig"))
        assert applied_at is not None
        assert execution_ms >= 0
    assert all(m.state == "applied" for m in db.migration_status())


def test_app_migrations_apply_in_version_order_and_are_reported(
    db_url: str, app: AppMigrations
) -> None:
    # Versions sort numerically, not as text: 0010 comes after 0009.
    app.write("0010_third.sql", "INSERT INTO items (id) VALUES (10);\n")
    app.write("0009_second.sql", "INSERT INTO items (id) VALUES (9);\n")
    app.write("0001_first.sql", "CREATE TABLE items (id integer PRIMARY KEY);\n")
    app.write("README.md", "not a migration\n")
    with app.service(db_url) as db:
        report = db.initialize()
        applied = [(m.namespace, m.version, m.name) for m in report.applied]
        assert applied[-3:] == [
            ("app", 1, "0001_first.sql"),
            ("app", 9, "0009_second.sql"),
            ("app", 10, "0010_third.sql"),
        ]
        # shareddb's own files come first, in their order.
        assert [m.name for m in report.applied if m.namespace == "shareddb"] == builtin_files(
            db.get_backend_type()
        )
        assert not report.up_to_date
        assert all(m.execution_ms >= 0 for m in report.applied)
        assert ledger(db) == [(1, "0001_first.sql"), (9, "0009_second.sql"), (10, "0010_third.sql")]


def committed_versions(url: str, namespace: str) -> set[int]:
    """The ledger's versions of `namespace` as a separate connection sees them."""
    query = "SELECT version FROM schema_migrations WHERE namespace = "
    if backend_of(url) == "sqlite":
        with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn:
            return {row[0] for row in conn.execute(query + "?", (namespace,))}
    with psycopg.connect(url) as pg:
        return {row[0] for row in pg.execute(query + "%s", (namespace,))}


def test_on_applied_reports_each_migration_once_it_is_committed(
    db_url: str, app: AppMigrations
) -> None:
    app.write("0001_t.sql", "CREATE TABLE t (id integer PRIMARY KEY);\n")
    app.write("0002_idx.sql", "-- shareddb:no-transaction\nCREATE INDEX t_id_idx ON t (id);\n")
    app.write("0003_row.sql", "INSERT INTO t (id) VALUES (1);\n")
    seen: list[tuple[AppliedMigration, set[int]]] = []
    with app.service(db_url) as db:
        report = db.initialize(
            on_applied=lambda m: seen.append((m, committed_versions(db_url, m.namespace)))
        )
        assert [m for m, _ in seen] == report.applied
        assert [m.version for m, _ in seen if m.namespace == "app"] == [1, 2, 3]
        assert all(m.version in committed for m, committed in seen)
        assert db.initialize(on_applied=lambda m: seen.append((m, set()))).up_to_date
        assert len(seen) == len(report.applied)


def test_initialize_is_idempotent(db_url: str, app: AppMigrations) -> None:
    app.write("0001_t.sql", "CREATE TABLE t (id integer PRIMARY KEY);\nINSERT INTO t VALUES (1);\n")
    with app.service(db_url) as db:
        assert not db.initialize().up_to_date
        for _ in range(3):
            report = db.initialize()
            assert report.up_to_date
            assert report.applied == []
        with db.connection() as conn:
            assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 1
    # A new service on the same database agrees.
    with app.service(db_url) as db:
        assert db.initialize().up_to_date


def test_new_file_is_applied_by_a_later_initialize(db_url: str, app: AppMigrations) -> None:
    app.write("0001_t.sql", "CREATE TABLE t (id integer PRIMARY KEY);\n")
    with app.service(db_url) as db:
        db.initialize()
        app.write("0002_u.sql", "CREATE TABLE u (id integer PRIMARY KEY);\n")
        assert [m.name for m in db.initialize().applied] == ["0002_u.sql"]
        assert table_exists(db, "u")
        assert ledger(db) == [(1, "0001_t.sql"), (2, "0002_u.sql")]


# -- one transaction per file ------------------------------------------------------------------

FAILING_FILE = """\
-- app 0002: a table, a row, then a statement that fails
CREATE TABLE b (id integer PRIMARY KEY);

INSERT INTO b (id) VALUES (1);
/* a comment; with a semicolon */
INSERT INTO no_such_table (id)
VALUES (2);
CREATE TABLE never_created (id integer);
"""


def test_failing_file_leaves_nothing_of_itself_and_no_ledger_row(
    db_url: str, app: AppMigrations
) -> None:
    app.write("0001_a.sql", "CREATE TABLE a (id integer PRIMARY KEY);\n")
    app.write("0002_b.sql", FAILING_FILE)
    app.write("0003_c.sql", "CREATE TABLE c (id integer PRIMARY KEY);\n")
    with app.service(db_url) as db:
        with pytest.raises(MigrationError) as info:
            db.initialize()
        err = info.value
        # The earlier file stays applied; nothing of the failing one, nothing after it.
        assert ledger(db) == [(1, "0001_a.sql")]
        assert table_exists(db, "a")
        assert not table_exists(db, "b")
        assert not table_exists(db, "never_created")
        assert not table_exists(db, "c")
        assert [s for s in states(db)] == [
            (1, "0001_a.sql", "applied"),
            (2, "0002_b.sql", "pending"),
            (3, "0003_c.sql", "pending"),
        ]
    assert (err.namespace, err.filename, err.statement, err.line) == ("app", "0002_b.sql", 3, 6)
    message = str(err)
    assert "app/0002_b.sql" in message
    assert "statement 3" in message
    assert "line 6" in message
    assert "'INSERT INTO no_such_table (id)'" in message
    assert "schema_migrations is unchanged" in message
    if backend_of(db_url) == "postgres":
        assert err.sqlstate == "42P01"
        assert "[42P01]" in message
    else:
        assert err.sqlstate == "SQLITE_ERROR"
        assert "no such table" in message
    assert isinstance(err.__cause__, Exception)


def test_fixed_file_applies_after_a_failure(db_url: str, app: AppMigrations) -> None:
    app.write("0001_a.sql", "CREATE TABLE a (id integer PRIMARY KEY);\n")
    app.write("0002_b.sql", FAILING_FILE)
    with app.service(db_url) as db:
        with pytest.raises(MigrationError):
            db.initialize()
        app.write("0002_b.sql", FAILING_FILE.replace("no_such_table", "b").replace("(2)", "(2)"))
        assert [m.name for m in db.initialize().applied] == ["0002_b.sql"]
        with db.connection() as conn:
            assert [r[0] for r in conn.execute("SELECT id FROM b ORDER BY id")] == [1, 2]


def test_ledger_row_and_file_commit_together(db_url: str, app: AppMigrations) -> None:
    # The last statement conflicts with the ledger row the runner is about to insert:
    # the file's own work must vanish with the failed ledger insert... except that the
    # runner checks the ledger first. Instead prove atomicity from the other side: a
    # failure in the last statement leaves neither the table nor the row.
    app.write(
        "0001_a.sql",
        "CREATE TABLE a (id integer PRIMARY KEY);\n"
        "INSERT INTO a VALUES (1);\n"
        "INSERT INTO a VALUES (1);\n",
    )
    with app.service(db_url) as db:
        with pytest.raises(MigrationError) as info:
            db.initialize()
        assert info.value.statement == 3
        assert ledger(db) == []
        assert not table_exists(db, "a")


@pytest.mark.parametrize(
    "statement", ["BEGIN;", "COMMIT;", "ROLLBACK;", "begin transaction;", "START TRANSACTION;"]
)
def test_transaction_control_in_a_file_is_refused_before_it_runs(
    db_url: str, app: AppMigrations, statement: str
) -> None:
    app.write("0001_a.sql", f"CREATE TABLE a (id integer);\n{statement}\n")
    with app.service(db_url) as db:
        with pytest.raises(MigrationError, match="remove it") as info:
            db.initialize()
        assert info.value.statement == 2
        assert info.value.line == 2
        assert not table_exists(db, "a")
        assert ledger(db) == []


# -- -- shareddb:no-transaction ----------------------------------------------------------------


def test_no_transaction_file_runs_outside_a_transaction(db_url: str, app: AppMigrations) -> None:
    app.write("0001_t.sql", "CREATE TABLE t (id integer PRIMARY KEY, v integer);\n")
    if backend_of(db_url) == "postgres":
        body = "CREATE INDEX CONCURRENTLY IF NOT EXISTS t_v_idx ON t (v);\n"
    else:
        # VACUUM refuses to run inside a transaction, like CREATE INDEX CONCURRENTLY.
        body = "VACUUM;\nCREATE INDEX IF NOT EXISTS t_v_idx ON t (v);\n"
    app.write(
        "0002_idx.sql",
        f"-- build the index without blocking writers\n-- shareddb:no-transaction\n\n{body}",
    )
    with app.service(db_url) as db:
        report = db.initialize()
        assert [m.name for m in report.applied if m.namespace == "app"] == [
            "0001_t.sql",
            "0002_idx.sql",
        ]
        assert index_exists(db, "t_v_idx")
        assert ledger(db) == [(1, "0001_t.sql"), (2, "0002_idx.sql")]
        assert db.initialize().up_to_date


def test_directive_after_the_first_statement_does_not_count(
    db_url: str, app: AppMigrations
) -> None:
    app.write("0001_t.sql", "CREATE TABLE t (id integer PRIMARY KEY, v integer);\n")
    if backend_of(db_url) == "postgres":
        body = "CREATE INDEX CONCURRENTLY t_v_idx ON t (v);\n"
    else:
        body = "VACUUM;\n"
    app.write("0002_idx.sql", f"SELECT 1;\n-- shareddb:no-transaction\n{body}")
    with app.service(db_url) as db:
        with pytest.raises(MigrationError) as info:
            db.initialize()
        assert info.value.statement == 2
        assert ledger(db) == [(1, "0001_t.sql")]
        if backend_of(db_url) == "postgres":
            assert info.value.sqlstate == "25001"  # active_sql_transaction


def test_failing_no_transaction_file_keeps_earlier_statements_and_no_ledger_row(
    db_url: str, app: AppMigrations
) -> None:
    app.write(
        "0001_nt.sql",
        "-- shareddb:no-transaction\n"
        "CREATE TABLE kept (id integer);\n"
        "SELECT * FROM missing_table;\n",
    )
    with app.service(db_url) as db:
        with pytest.raises(MigrationError, match="stay applied") as info:
            db.initialize()
        assert info.value.statement == 2
        assert table_exists(db, "kept")
        assert ledger(db) == []
        # Made idempotent and fixed, it applies.
        app.write(
            "0001_nt.sql",
            "-- shareddb:no-transaction\nCREATE TABLE IF NOT EXISTS kept (id integer);\n",
        )
        assert [m.name for m in db.initialize().applied] == ["0001_nt.sql"]
        assert ledger(db) == [(1, "0001_nt.sql")]


# -- checksums and integrity -------------------------------------------------------------------


def test_checksum_ignores_line_endings_and_a_bom() -> None:
    text = "CREATE TABLE t (id integer);\nINSERT INTO t VALUES (1);\n"
    assert checksum(text) == checksum(text.replace("\n", "\r\n"))
    assert checksum(text) == checksum("\ufeff" + text.replace("\n", "\r\n"))
    assert checksum(text) == checksum(text.replace("\n", "\r"))
    assert checksum(text) != checksum(text.replace("VALUES (1)", "VALUES (2)"))
    assert checksum(text) != checksum(text + "\n")


def test_applied_file_saved_with_crlf_and_bom_still_matches(
    db_url: str, app: AppMigrations
) -> None:
    app.write("0001_t.sql", "CREATE TABLE t (id integer);\n")
    with app.service(db_url) as db:
        db.initialize()
        app.write("0001_t.sql", "CREATE TABLE t (id integer);\n", newline="\r\n", bom=True)
        assert db.initialize().up_to_date
        assert states(db) == [(1, "0001_t.sql", "applied")]


def test_bom_and_crlf_file_applies(db_url: str, app: AppMigrations) -> None:
    app.write(
        "0001_t.sql",
        "CREATE TABLE t (id integer);\nINSERT INTO t VALUES (7);\n",
        newline="\r\n",
        bom=True,
    )
    with app.service(db_url) as db:
        db.initialize()
        with db.connection() as conn:
            assert conn.execute("SELECT id FROM t").fetchone()[0] == 7


PENDING_TABLE = "CREATE TABLE pending_must_not_run (id integer);\n"


def test_edited_applied_file_stops_initialize_before_any_ddl(
    db_url: str, app: AppMigrations
) -> None:
    app.write("0001_t.sql", "CREATE TABLE t (id integer);\n")
    with app.service(db_url) as db:
        db.initialize()
        app.write("0001_t.sql", "CREATE TABLE t (id integer, extra text);\n")
        app.write("0002_pending.sql", PENDING_TABLE)
        with pytest.raises(ChecksumMismatchError, match="was edited") as info:
            db.initialize()
        assert "app/0001_t.sql" in str(info.value)
        assert info.value.filename == "0001_t.sql"
        assert not table_exists(db, "pending_must_not_run")
        assert ledger(db) == [(1, "0001_t.sql")]
        assert states(db) == [(1, "0001_t.sql", "changed"), (2, "0002_pending.sql", "pending")]


def test_missing_applied_file_stops_initialize_before_any_ddl(
    db_url: str, app: AppMigrations
) -> None:
    first = app.write("0001_t.sql", "CREATE TABLE t (id integer);\n")
    with app.service(db_url) as db:
        db.initialize()
        first.unlink()
        app.write("0002_pending.sql", PENDING_TABLE)
        with pytest.raises(MigrationError, match="missing") as info:
            db.initialize()
        assert "app/0001_t.sql" in str(info.value)
        assert not table_exists(db, "pending_must_not_run")
        assert states(db) == [(1, "0001_t.sql", "missing"), (2, "0002_pending.sql", "pending")]


def test_renamed_applied_file_stops_initialize(db_url: str, app: AppMigrations) -> None:
    first = app.write("0001_t.sql", "CREATE TABLE t (id integer);\n")
    with app.service(db_url) as db:
        db.initialize()
        first.rename(app.folder / "0001_renamed.sql")
        app.write("0002_pending.sql", PENDING_TABLE)
        with pytest.raises(ChecksumMismatchError, match="renamed") as info:
            db.initialize()
        assert "0001_t.sql" in str(info.value)
        assert "0001_renamed.sql" in str(info.value)
        assert not table_exists(db, "pending_must_not_run")


def test_new_file_numbered_below_the_newest_applied_stops_initialize(
    db_url: str, app: AppMigrations
) -> None:
    app.write("0001_t.sql", "CREATE TABLE t (id integer);\n")
    app.write("0003_u.sql", "CREATE TABLE u (id integer);\n")
    with app.service(db_url) as db:
        db.initialize()
        app.write("0002_late.sql", PENDING_TABLE)
        app.write("0004_next.sql", "CREATE TABLE next_must_not_run (id integer);\n")
        with pytest.raises(MigrationError, match="numbered below") as info:
            db.initialize()
        assert "app/0002_late.sql" in str(info.value)
        assert "0003_u.sql" in str(info.value)
        assert not table_exists(db, "pending_must_not_run")
        assert not table_exists(db, "next_must_not_run")
        assert states(db) == [
            (1, "0001_t.sql", "applied"),
            (2, "0002_late.sql", "out of order"),
            (3, "0003_u.sql", "applied"),
            (4, "0004_next.sql", "pending"),
        ]


def test_ledger_rows_of_unknown_namespaces_are_left_alone(
    db_url: str, app: AppMigrations, tmp_path: Path
) -> None:
    other = AppMigrations(tmp_path / "other")
    other.write("0001_o.sql", "CREATE TABLE o (id integer);\n")
    with DbService(db_url, schema_dirs={"other": other.folder}) as db:
        db.initialize()
    app.write("0001_t.sql", "CREATE TABLE t (id integer);\n")
    with app.service(db_url) as db:  # this process knows only "app"
        db.initialize()
        assert table_exists(db, "t")
        assert ledger(db, "other") == [(1, "0001_o.sql")]
        assert all(m.namespace != "other" for m in db.migration_status())


# -- discovery and namespaces ------------------------------------------------------------------


def test_two_namespaces_number_independently(db_url: str, tmp_path: Path) -> None:
    one, two = AppMigrations(tmp_path / "one"), AppMigrations(tmp_path / "two")
    one.write("0001_a.sql", "CREATE TABLE one_a (id integer);\n")
    two.write("0001_a.sql", "CREATE TABLE two_a (id integer);\n")
    two.write("0002_b.sql", "CREATE TABLE two_b (id integer);\n")
    with DbService(db_url, schema_dirs={"one": one.folder, "two": two.folder}) as db:
        applied = [(m.namespace, m.name) for m in db.initialize().applied]
        assert applied[-3:] == [("one", "0001_a.sql"), ("two", "0001_a.sql"), ("two", "0002_b.sql")]
        assert ledger(db, "one") == [(1, "0001_a.sql")]
        assert ledger(db, "two") == [(1, "0001_a.sql"), (2, "0002_b.sql")]
        namespaces = [m.namespace for m in db.migration_status()]
        assert namespaces == sorted(namespaces, key=["shareddb", "one", "two"].index)


def test_backend_subfolders_of_an_application_folder_are_used(db_url: str, tmp_path: Path) -> None:
    root = tmp_path / "appschema"
    AppMigrations(root / "sqlite").write(
        "0001_t.sql", "CREATE TABLE from_sqlite_dir (id integer);\n"
    )
    AppMigrations(root / "postgres").write("0001_t.sql", "CREATE TABLE from_pg_dir (id integer);\n")
    with DbService(db_url, schema_dirs={"app": root}) as db:
        db.initialize()
        if db.get_backend_type() == "sqlite":
            assert table_exists(db, "from_sqlite_dir") and not table_exists(db, "from_pg_dir")
        else:
            assert table_exists(db, "from_pg_dir") and not table_exists(db, "from_sqlite_dir")


@pytest.mark.parametrize(
    ("schema_dirs", "match"),
    [
        ({"shareddb": "."}, "reserved"),
        ({"my app": "."}, "not a plain name"),
        ({"": "."}, "not a plain name"),
        ({"x" * 64: "."}, "not a plain name"),
    ],
)
def test_bad_namespaces_are_refused(
    sqlite_url: str, schema_dirs: dict[str, str], match: str
) -> None:
    with (
        DbService(sqlite_url, schema_dirs=schema_dirs) as db,
        pytest.raises(MigrationError, match=match),
    ):
        db.initialize()


def test_missing_application_folder_is_an_error(sqlite_url: str, tmp_path: Path) -> None:
    with DbService(sqlite_url, schema_dirs={"app": tmp_path / "nope"}) as db:
        with pytest.raises(MigrationError, match="does not exist") as info:
            db.initialize()
        assert str(tmp_path / "nope") in str(info.value)


@pytest.mark.parametrize(
    ("names", "match"),
    [
        (["1_short.sql"], "not named NNNN_slug.sql"),
        (["0001-dash.sql"], "not named NNNN_slug.sql"),
        (["0001_.sql"], "not named NNNN_slug.sql"),
        (["0001_a.sql", "0001_b.sql"], "share version 1"),
        (["0001_a.sql", "00001_b.sql"], "share version 1"),
    ],
)
def test_badly_named_files_are_refused(
    sqlite_url: str, app: AppMigrations, names: list[str], match: str
) -> None:
    for name in names:
        app.write(name, "SELECT 1;\n")
    with app.service(sqlite_url) as db:
        with pytest.raises(MigrationError, match=match):
            db.initialize()
        assert not table_exists(db, "schema_migrations")


def test_file_that_is_not_utf8_is_refused(sqlite_url: str, app: AppMigrations) -> None:
    (app.folder / "0001_latin1.sql").write_bytes("SELECT 'caf\xe9';\n".encode("latin-1"))
    with app.service(sqlite_url) as db, pytest.raises(MigrationError, match="not UTF-8"):
        db.initialize()


# -- statement splitting, end to end -----------------------------------------------------------

PG_TRICKY = """\
-- semicolons everywhere; none of these end a statement early
CREATE TABLE "semi;colon" (id integer PRIMARY KEY, note text DEFAULT 'a;b');
CREATE FUNCTION bump(x integer) RETURNS integer LANGUAGE plpgsql AS $$
BEGIN
    RETURN x + 1; -- inside a dollar quote
END;
$$;
CREATE FUNCTION tagged() RETURNS text LANGUAGE sql AS $body$ SELECT 'x;$$;y' $body$;
/* block comment; /* nested; */ still comment; */
DO $do$ BEGIN INSERT INTO "semi;colon" (id) VALUES (bump(0)); END $do$;
INSERT INTO "semi;colon" (id, note) VALUES (5, E'it\\'s; fine'), (6, 'it''s; fine');
INSERT INTO "semi;colon" (id, note) VALUES (7, '50%')
"""

SQLITE_TRICKY = """\
-- semicolons everywhere; none of these end a statement early
CREATE TABLE "semi;colon" (id INTEGER PRIMARY KEY, note TEXT DEFAULT 'a;b');
CREATE TABLE audit (msg TEXT);
CREATE TRIGGER log_insert AFTER INSERT ON "semi;colon"
BEGIN
    INSERT INTO audit (msg) VALUES ('inserted; ' || NEW.id);
    INSERT INTO audit (msg) VALUES ('second; statement');
END;
/* block comment; still comment */
INSERT INTO "semi;colon" (id) VALUES (1);
INSERT INTO "semi;colon" (id, note) VALUES (6, 'it''s; fine');
INSERT INTO "semi;colon" (id, note) VALUES (7, '50%')
"""


def test_tricky_statements_split_correctly(db_url: str, app: AppMigrations) -> None:
    postgres = backend_of(db_url) == "postgres"
    app.write("0001_tricky.sql", PG_TRICKY if postgres else SQLITE_TRICKY)
    with app.service(db_url) as db:
        db.initialize()
        with db.connection() as conn:
            rows = conn.execute('SELECT id, note FROM "semi;colon" ORDER BY id').fetchall()
            if postgres:
                assert [tuple(r) for r in rows] == [
                    (1, "a;b"),
                    (5, "it's; fine"),
                    (6, "it's; fine"),
                    (7, "50%"),
                ]
                assert conn.execute("SELECT tagged()").fetchone()[0] == "x;$$;y"
            else:
                assert [tuple(r) for r in rows] == [(1, "a;b"), (6, "it's; fine"), (7, "50%")]
                audit = [r[0] for r in conn.execute("SELECT msg FROM audit ORDER BY rowid")]
                assert audit[:2] == ["inserted; 1", "second; statement"]
                assert len(audit) == 6  # the trigger ran for each of the three rows


def test_error_line_numbers_count_from_the_file_start(db_url: str, app: AppMigrations) -> None:
    postgres = backend_of(db_url) == "postgres"
    text = (PG_TRICKY if postgres else SQLITE_TRICKY) + ";\n\n-- trailing\nSELECT * FROM nope;\n"
    app.write("0001_tricky.sql", text)
    expected_line = text.count("\n", 0, text.index("SELECT * FROM nope")) + 1
    with app.service(db_url) as db, pytest.raises(MigrationError) as info:
        db.initialize()
    assert info.value.line == expected_line
    assert f"line {expected_line}" in str(info.value)
    assert "'SELECT * FROM nope;'" in str(info.value)
    assert info.value.statement == 7


# -- migration_status() ------------------------------------------------------------------------


def test_migration_status_on_a_fresh_database_is_all_pending_and_read_only(
    db_url: str, app: AppMigrations
) -> None:
    app.write("0001_t.sql", "CREATE TABLE t (id integer);\n")
    with app.service(db_url) as db:
        status = db.migration_status()
        assert status, "shareddb's own migrations are listed"
        assert all(isinstance(m, MigrationInfo) for m in status)
        assert {m.state for m in status} == {"pending"}
        assert not any(m.applied for m in status)
        assert status[-1].name == "0001_t.sql"
        assert [m.name for m in status if m.namespace == "shareddb"] == builtin_files(
            db.get_backend_type()
        )
        assert not table_exists(db, "schema_migrations")


def test_migration_status_after_initialize(db_url: str, app: AppMigrations) -> None:
    app.write("0001_t.sql", "CREATE TABLE t (id integer);\n")
    with app.service(db_url) as db:
        db.initialize()
        app.write("0002_u.sql", "CREATE TABLE u (id integer);\n")
        status = [m for m in db.migration_status() if m.namespace == "app"]
        assert [(m.name, m.state, m.applied) for m in status] == [
            ("0001_t.sql", "applied", True),
            ("0002_u.sql", "pending", False),
        ]
        assert status[0].applied_at is not None
        assert status[0].execution_ms is not None
        assert status[1].applied_at is None


def test_initialize_inside_a_sqlite_transaction_is_refused(
    sqlite_url: str, app: AppMigrations
) -> None:
    app.write("0001_t.sql", "CREATE TABLE t (id integer);\n")
    with (
        app.service(sqlite_url) as db,
        db.connection(),
        pytest.raises(MigrationError, match="inside connection"),
    ):
        db.initialize()


def test_up_to_date_sqlite_initialize_is_one_statement(sqlite_url: str, app: AppMigrations) -> None:
    app.write("0001_t.sql", "CREATE TABLE t (id integer);\n")
    with app.service(sqlite_url) as db:
        db.initialize()
        conn = db.get_sql()
        assert isinstance(conn, sqlite3.Connection)
        statements: list[str] = []
        conn.set_trace_callback(statements.append)
        try:
            assert db.initialize().up_to_date
        finally:
            conn.set_trace_callback(None)
    assert len(statements) == 1, statements
    assert statements[0].lstrip().upper().startswith("SELECT")


def test_pending_sqlite_initialize_takes_the_write_lock(
    sqlite_url: str, app: AppMigrations
) -> None:
    # The counterpart of the test above: with work to do, the trace shows it.
    app.write("0001_t.sql", "CREATE TABLE t (id integer);\n")
    with app.service(sqlite_url) as db:
        db.initialize()
        app.write("0002_u.sql", "CREATE TABLE u (id integer);\n")
        conn = db.get_sql()
        assert isinstance(conn, sqlite3.Connection)
        statements: list[str] = []
        conn.set_trace_callback(statements.append)
        try:
            db.initialize()
        finally:
            conn.set_trace_callback(None)
    assert "BEGIN IMMEDIATE" in statements
    assert any(s.startswith("CREATE TABLE u") for s in statements)


# -- the up-to-date check on PostgreSQL: one query, no DDL, no new connection ----------------


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


@pytest.mark.postgres
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


@pytest.mark.postgres
def test_initialize_with_pending_work_runs_ddl(pg_url: str, app: AppMigrations) -> None:
    # The counterpart of the test above: the DDL log does see the runner's work.
    app.write("0001_t.sql", "CREATE TABLE t (id integer);\n")
    with app.service(pg_url) as db:
        db.initialize()
        settle(pool_of(db))  # the pool's refill after creating pgvector is not the runner's
        logins = install_login_log(pg_url)
        install_ddl_log(pg_url)
        app.write("0002_u.sql", "CREATE TABLE u (id integer);\n")
        db.initialize()
    assert ddl_log(pg_url) == ["CREATE TABLE"]
    if logins:
        assert len(login_log(pg_url)) == 1  # the dedicated migration connection


@pytest.mark.postgres
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
