"""The ``shareddb`` command, driven as a user drives it: a subprocess on real databases."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from helpers import run_cli

from shareddb import DbService
from shareddb._migrations.files import builtin_schema_dir, checksum
from shareddb.vectors import VectorStorage

TIMEOUT = 180


def run_json(*args: str, expect: int = 0) -> Any:
    result = run_cli(*args, "--json")
    assert result.returncode == expect, result.stderr + result.stdout
    return json.loads(result.stdout)


def shipped_migrations(backend: str) -> list[str]:
    """``shareddb/NNNN_x.sql`` for every file in the package's schema folder, in order.

    Never empty: a package that ships no migration of its own is broken, and the tests
    comparing the command's output with this list must not pass on nothing.
    """
    names = [f"shareddb/{p.name}" for p in sorted(builtin_schema_dir(backend).glob("*.sql"))]
    assert names, f"the package ships no {backend} migration of its own"
    return names


def sqlite_path(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///"))


# -- init --------------------------------------------------------------------------------


def test_init_on_fresh_sqlite_applies_each_migration_then_says_up_to_date(
    sqlite_url: str,
) -> None:
    expected = shipped_migrations("sqlite")
    first = run_cli("init", "--url", sqlite_url)
    assert first.returncode == 0, first.stderr
    applied = [line.split()[1] for line in first.stdout.splitlines() if line.startswith("applied ")]
    assert applied == expected
    assert f"database: {sqlite_url}" in first.stdout
    with sqlite3.connect(sqlite_path(sqlite_url)) as conn:
        ledger = [
            f"{ns}/{name}"
            for ns, name in conn.execute(
                "SELECT namespace, name FROM schema_migrations ORDER BY version"
            )
        ]
    assert ledger == expected

    second = run_cli("init", "--url", sqlite_url)
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout
    assert not [line for line in second.stdout.splitlines() if line.startswith("applied ")]


def test_init_json_reports_applied_migrations_and_database(sqlite_url: str) -> None:
    data = run_json("init", "--url", sqlite_url)
    assert data["backend"] == "sqlite"
    assert data["database"] == sqlite_url
    names = [f"{m['namespace']}/{m['name']}" for m in data["applied"]]
    assert names == shipped_migrations("sqlite")
    assert data["up_to_date"] is (not names)
    assert all(m["execution_ms"] >= 0 for m in data["applied"])
    assert run_json("init", "--url", sqlite_url)["applied"] == []


def test_init_uses_the_configuration_when_no_url_is_given(tmp_path: Path) -> None:
    config = tmp_path / "shareddb.toml"
    config.write_text('[sessiondb.sqlite]\npath = "data/app.db"\n')
    result = run_cli("init", "--config", str(config))
    assert result.returncode == 0, result.stderr
    # The relative path is relative to the config file, not the working directory.
    assert (tmp_path / "data" / "app.db").is_file()
    assert str(tmp_path / "data" / "app.db") in result.stdout


def test_init_masks_the_password_of_an_unreachable_server() -> None:
    url = "postgresql://alice:s3cr3t-pw@127.0.0.1:9/db"
    result = run_cli("init", "--url", url, "--timeout", "2")
    assert result.returncode == 1
    assert "s3cr3t-pw" not in result.stdout + result.stderr
    assert "alice:***@127.0.0.1:9" in result.stderr


# -- status ------------------------------------------------------------------------------


def test_status_before_init_lists_pending_migrations_and_creates_nothing(
    sqlite_url: str,
) -> None:
    result = run_cli("status", "--url", sqlite_url)
    assert result.returncode == 0, result.stderr
    assert "does not exist yet" in result.stdout
    assert not sqlite_path(sqlite_url).exists()
    data = run_json("status", "--url", sqlite_url)
    assert [f"{m['namespace']}/{m['name']}" for m in data["migrations"]] == shipped_migrations(
        "sqlite"
    )
    assert {m["state"] for m in data["migrations"]} == {"pending"}
    assert not sqlite_path(sqlite_url).exists()


def test_status_after_init_shows_versions_migrations_and_row_counts(sqlite_url: str) -> None:
    assert run_cli("init", "--url", sqlite_url).returncode == 0
    with sqlite3.connect(sqlite_path(sqlite_url)) as conn:
        has_sessions = conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE name = 'sessions'"
        ).fetchone()[0]
        assert has_sessions, "init creates the sessions table"
        for i in range(3):
            conn.execute(
                "INSERT INTO sessions (session, repo_name, repo_url, created_at, updated_at,"
                " seq) VALUES (?, 'r', 'u', '2025-01-01T00:00:00.000000+00:00',"
                " '2025-01-01T00:00:00.000000+00:00', ?)",
                (f"s{i}", i + 1),
            )
    data = run_json("status", "--url", sqlite_url)
    assert data["backend"] == "sqlite"
    assert data["server"] == f"SQLite {sqlite3.sqlite_version}"
    assert data["exists"] is True
    states = {f"{m['namespace']}/{m['name']}": m["state"] for m in data["migrations"]}
    assert states == dict.fromkeys(shipped_migrations("sqlite"), "applied")
    assert data["rows"]["sessions"] == 3
    text = run_cli("status", "--url", sqlite_url)
    assert text.returncode == 0
    for name in shipped_migrations("sqlite"):
        assert f"{name}" in text.stdout
    assert "checksum ok" in text.stdout
    assert "none (SQLite search is exact)" in text.stdout


# -- doctor ------------------------------------------------------------------------------


def test_doctor_on_fresh_sqlite_fails_until_init_then_passes(sqlite_url: str) -> None:
    before = run_cli("doctor", "--url", sqlite_url)
    assert before.returncode == 1
    assert "[FAIL] migrations" in before.stdout
    assert "fix: run: shareddb init" in before.stdout
    assert "[ok]   sqlite folder" in before.stdout
    assert not sqlite_path(sqlite_url).exists()  # doctor creates nothing

    assert run_cli("init", "--url", sqlite_url).returncode == 0
    after = run_cli("doctor", "--url", sqlite_url)
    assert after.returncode == 0, after.stdout
    assert "all checks passed" in after.stdout
    data = run_json("doctor", "--url", sqlite_url)
    assert data["ok"] is True
    assert {c["name"] for c in data["checks"]} >= {"sqlite file", "database", "migrations"}


def test_doctor_fails_when_the_sqlite_folder_is_blocked_by_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    url = f"sqlite:///{blocker}/sub/shareddb.db"
    result = run_cli("doctor", "--url", url)
    assert result.returncode == 1
    assert "[FAIL] sqlite folder" in result.stdout
    assert f"{blocker} is a file" in result.stdout


def test_doctor_explains_an_unreachable_server_in_plain_words() -> None:
    url = "postgresql://bob:hunter2-pw@127.0.0.1:9/db"
    result = run_cli("doctor", "--url", url, "--timeout", "2")
    assert result.returncode == 1
    assert "[FAIL] database" in result.stdout
    assert "nothing accepts connections at that host and port" in result.stdout
    assert "fix: start the server" in result.stdout
    assert "hunter2-pw" not in result.stdout + result.stderr
    assert "bob:***@127.0.0.1:9" in result.stdout


# -- a broken configuration --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[sessiondb\nbackend = 'sqlite'\n", "not valid TOML"),
        ("[sessiondb]\nbackend = 'oracle'\n", "sessiondb.backend"),
        ("[sessiondb]\nbakend = 'sqlite'\n", "unknown key sessiondb.bakend"),
        ("[sessiondb.postgres]\nembedded = 'yes'\n", "sessiondb.postgres.embedded"),
    ],
)
def test_every_command_reports_a_broken_config_file(tmp_path: Path, text: str, named: str) -> None:
    config = tmp_path / "broken.toml"
    config.write_text(text)
    env = {"SHAREDDB_CONFIG": str(config)}
    for command in ("init", "status", "config"):
        result = run_cli(command, env=env)
        assert result.returncode == 1, (command, result.stdout)
        assert str(config) in result.stderr
        assert named in result.stderr
        assert "Traceback" not in result.stderr
    doctor = run_cli("doctor", env=env)
    assert doctor.returncode == 1
    assert "[FAIL] config" in doctor.stdout
    assert named in doctor.stdout
    assert "fix:" in doctor.stdout
    assert "[skip] database" in doctor.stdout


# -- an edited migration -----------------------------------------------------------------


def test_edited_application_migration_is_reported_by_status_doctor_and_init(
    tmp_path: Path, sqlite_url: str
) -> None:
    app = tmp_path / "app-migrations"
    app.mkdir()
    migration = app / "0001_notes.sql"
    migration.write_text("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);\n")
    schema = ["--schema-dir", f"app={app}"]
    applied = run_cli("init", "--url", sqlite_url, *schema)
    assert applied.returncode == 0, applied.stderr
    assert "applied app/0001_notes.sql" in applied.stdout

    migration.write_text("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT, extra TEXT);\n")
    migration_2 = app / "0002_more.sql"
    migration_2.write_text("CREATE TABLE more_notes (id INTEGER PRIMARY KEY);\n")

    status = run_cli("status", "--url", sqlite_url, *schema)
    assert status.returncode == 1
    assert "app/0001_notes.sql" in status.stdout
    assert "CHANGED" in status.stdout
    states = {
        m["name"]: m["state"]
        for m in run_json("status", "--url", sqlite_url, *schema, expect=1)["migrations"]
    }
    assert states["0001_notes.sql"] == "changed"
    assert states["0002_more.sql"] == "pending"

    doctor = run_cli("doctor", "--url", sqlite_url, *schema)
    assert doctor.returncode == 1
    assert "[FAIL] migrations: altered migrations: app/0001_notes.sql (changed)" in doctor.stdout
    assert "fix: restore the applied file" in doctor.stdout

    init = run_cli("init", "--url", sqlite_url, *schema)
    assert init.returncode == 1
    assert "app/0001_notes.sql" in init.stderr
    assert "edited after it was applied" in init.stderr
    with sqlite3.connect(sqlite_path(sqlite_url)) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "more_notes" not in tables  # stopped before any DDL


def test_edited_ledger_checksum_stops_init(sqlite_url: str) -> None:
    assert run_cli("init", "--url", sqlite_url).returncode == 0
    with sqlite3.connect(sqlite_path(sqlite_url)) as conn:
        row = conn.execute(
            "SELECT name FROM schema_migrations WHERE namespace = 'shareddb' ORDER BY version"
        ).fetchone()
        assert row is not None, "init recorded no migration of shareddb's own"
        conn.execute(
            "UPDATE schema_migrations SET checksum = ? WHERE name = ?",
            (checksum("something else"), row[0]),
        )
    result = run_cli("init", "--url", sqlite_url)
    assert result.returncode == 1
    assert f"shareddb/{row[0]}" in result.stderr
    assert "restore the original" in result.stderr
    assert run_cli("status", "--url", sqlite_url).returncode == 1


# -- config ------------------------------------------------------------------------------


def test_config_without_a_file_shows_the_default_and_where_the_file_would_be(
    tmp_path: Path,
) -> None:
    data = run_json("config")
    assert data["source"] == "default"
    assert data["backend"] == "sqlite"
    assert data["config_file"] == str(tmp_path / "xdg-config" / "shareddb" / "config.toml")
    assert data["config_file_exists"] is False
    assert data["sqlite_path"] == str(tmp_path / "xdg-data" / "shareddb" / "shareddb.db")


def test_config_init_writes_a_template_that_loads_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "xdg-config" / "shareddb" / "config.toml"
    created = run_cli("config", "--init")
    assert created.returncode == 0, created.stderr
    assert path.is_file()
    text = path.read_text()
    assert "embedded = true" in text  # documented, commented out
    assert "connection_string" in text
    data = run_json("config")
    assert data["config_file_exists"] is True
    assert data["source"] == "sessiondb"
    assert data["backend"] == "sqlite"

    path.write_text(text + "\n# mine\n")
    again = run_cli("config", "--init")
    assert again.returncode == 1
    assert "already exists" in again.stderr
    assert path.read_text().endswith("# mine\n")
    forced = run_cli("config", "--init", "--force")
    assert forced.returncode == 0
    assert path.read_text() == text


def test_config_names_the_source_that_won(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[db]\nurl = "postgresql://u:pw-in-file@db.example/app"\n')
    from_file = run_json("config", "--config", str(config))
    assert from_file["source"] == "db"
    assert from_file["url"] == "postgresql://u:***@db.example/app"
    env_url = f"sqlite:///{tmp_path}/env.db"
    env = run_cli("config", "--config", str(config), "--json", env={"SHAREDDB_URL": env_url})
    assert json.loads(env.stdout)["source"] == "env"
    text = run_cli("config", "--config", str(config), env={"SHAREDDB_URL": env_url})
    assert "environment variable SHAREDDB_URL" in text.stdout
    assert "pw-in-file" not in text.stdout


# -- usage -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["frobnicate"],
        [],
        ["init", "--url", "mysql://x/y"],
        ["status", "--schema-dir", "no-equals-sign"],
        ["copy", "--from", "sqlite:///a.db"],
        ["pg", "restart"],
        ["init", "--timeout", "soon"],
    ],
)
def test_bad_usage_exits_2(argv: list[str]) -> None:
    result = run_cli(*argv)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "usage:" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_every_command() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("init", "status", "doctor", "config", "pg", "copy"):
        assert command in result.stdout


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "shareddb"
    assert script.exists()
    result = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert result.returncode == 0
    assert "doctor" in result.stdout


# -- PostgreSQL with pgvector (the session's server) -------------------------------------


@pytest.mark.postgres
def test_init_status_doctor_on_postgres(pg_url: str) -> None:
    before = run_cli("doctor", "--url", pg_url)
    assert before.returncode == 1, before.stdout  # shareddb's own migrations are pending
    assert "[ok]   pgvector" in before.stdout

    init = run_json("init", "--url", pg_url)
    assert [f"{m['namespace']}/{m['name']}" for m in init["applied"]] == shipped_migrations(
        "postgres"
    )
    assert init["pgvector"]

    status = run_json("status", "--url", pg_url)
    with psycopg.connect(pg_url) as conn:
        server = conn.execute("SHOW server_version").fetchone()
        pgvector = conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
        ).fetchone()
    assert server is not None and pgvector is not None
    assert status["server"] == f"PostgreSQL {server[0]}"
    assert status["pgvector"] == pgvector[0]
    assert {m["state"] for m in status["migrations"]} == {"applied"}

    after = run_cli("doctor", "--url", pg_url)
    assert after.returncode == 0, after.stdout
    assert "[ok]   maintenance_work_mem" in after.stdout
    assert "[ok]   migrations" in after.stdout


@pytest.mark.postgres
def test_a_slow_migration_shows_progress_with_elapsed_time(pg_url: str, tmp_path: Path) -> None:
    app = tmp_path / "slow"
    app.mkdir()
    (app / "0001_slow.sql").write_text("SELECT pg_sleep(3.5);\n")
    result = run_cli("init", "--url", pg_url, "--schema-dir", f"app={app}")
    assert result.returncode == 0, result.stderr
    progress = [line for line in result.stderr.splitlines() if "app/0001_slow.sql" in line]
    assert progress, result.stderr
    assert progress[0].strip().startswith("applying app/0001_slow.sql ... ")
    assert progress[0].rstrip().endswith(" s")
    assert "applied app/0001_slow.sql" in result.stdout
    quick = run_cli("init", "--url", pg_url, "--schema-dir", f"app={app}")
    assert quick.stderr == ""  # nothing long, nothing printed


# -- PostgreSQL without pgvector ---------------------------------------------------------


@pytest.mark.postgres
def test_doctor_on_a_server_without_pgvector_exits_1_and_prints_the_fix(
    plain_pg_url: str,
) -> None:
    with psycopg.connect(plain_pg_url) as conn:
        major = conn.info.server_version // 10000
    doctor = run_cli("doctor", "--url", plain_pg_url)
    assert doctor.returncode == 1
    assert f"[FAIL] pgvector: pgvector is not installed on the PostgreSQL {major} server" in (
        doctor.stdout
    )
    assert f"apt install postgresql-{major}-pgvector" in doctor.stdout
    assert "pip install 'shareddb[embedded]'" in doctor.stdout
    data = run_json("doctor", "--url", plain_pg_url, expect=1)
    assert {c["name"]: c["state"] for c in data["checks"]}["pgvector"] == "fail"

    init = run_cli("init", "--url", plain_pg_url)
    assert init.returncode == 1
    assert f"postgresql-{major}-pgvector" in init.stderr
    with psycopg.connect(plain_pg_url) as conn:
        created = conn.execute("SELECT to_regclass('sessions')").fetchone()
    assert created == (None,)

    status = run_cli("status", "--url", plain_pg_url)
    assert status.returncode == 0
    assert "not installed on the server" in status.stdout


@pytest.mark.postgres
def test_doctor_warns_when_maintenance_work_mem_is_below_the_largest_build(pg_url: str) -> None:
    assert run_cli("init", "--url", pg_url).returncode == 0
    with psycopg.connect(pg_url, autocommit=True) as conn:
        dbname = conn.info.dbname
        conn.execute(f"ALTER DATABASE \"{dbname}\" SET maintenance_work_mem = '1MB'")
        conn.execute(
            "INSERT INTO task_embeddings (qualified_task_id, backend, dimension, embedding) "
            "SELECT 'md#' || i, 'md', 384, array_fill(i::real, ARRAY[384])::vector "
            "FROM generate_series(1, 2000) AS i"
        )
    result = run_cli("doctor", "--url", pg_url)
    assert result.returncode == 0, result.stdout  # a warning, not a failure
    line = next(x for x in result.stdout.splitlines() if "maintenance_work_mem" in x)
    assert line.startswith("[warn]")
    assert "2,000 rows of dimension 384" in line
    assert "ALTER SYSTEM SET maintenance_work_mem" in result.stdout

    status = run_json("status", "--url", pg_url)
    assert status["rows"]["task_embeddings"] == {"total": 2000, "by_dimension": {"384": 2000}}


def test_status_counts_embeddings_by_dimension_and_lists_indexes(db_url: str) -> None:
    rng = np.random.default_rng(5)
    sizes = {3: 40, 16: 25}
    with DbService(db_url) as db:
        db.initialize()
        vectors = VectorStorage(db)
        for dim, n in sizes.items():
            ids = [f"md#{dim}-{i}" for i in range(n)]
            vectors.upsert_many((ids, rng.standard_normal((n, dim)).astype(np.float32)))
        name = vectors.create_index(16, m=8, ef_construction=32)
        expected = vectors.indexes()
    data = run_json("status", "--url", db_url)
    assert data["rows"]["task_embeddings"] == {
        "total": sum(sizes.values()),
        "by_dimension": {str(d): n for d, n in sizes.items()},
    }
    text = run_cli("status", "--url", db_url).stdout
    assert "task_embeddings  65  (dim 3: 40, dim 16: 25)" in text
    if db_url.startswith("sqlite"):
        assert data["indexes"] == []
        assert "none (SQLite search is exact)" in text
        return
    with psycopg.connect(db_url) as conn:
        size = conn.execute("SELECT pg_relation_size(%s::regclass)", (name,)).fetchone()
    assert size is not None
    [index] = data["indexes"]
    assert index["name"] == name == expected[0].name
    assert (index["dimension"], index["method"], index["metric"]) == (16, "hnsw", "cosine")
    assert index["parameters"] == {"m": 8, "ef_construction": 32}
    assert index["size"] == size[0]
    line = next(x for x in text.splitlines() if name in x)
    assert "hnsw cosine dim 16" in line
    assert "m=8 ef_construction=32" in line


def test_fresh_machine_config_init_then_init_then_status(tmp_path: Path) -> None:
    """The README's first three commands, with nothing configured beforehand."""
    assert run_cli("config", "--init").returncode == 0
    init = run_cli("init")
    assert init.returncode == 0, init.stderr
    database = tmp_path / "xdg-data" / "shareddb" / "shareddb.db"
    assert database.is_file()
    assert str(database) in init.stdout
    status = run_cli("status")
    assert status.returncode == 0, status.stderr
    assert "checksum ok" in status.stdout
    assert "pending" not in status.stdout
    assert run_cli("doctor").returncode == 0
