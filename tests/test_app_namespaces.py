"""App namespaces are first-class: ``[db.schema_dirs]``, get_shared_db(schema_dirs=), and
``shareddb init / status / doctor`` picking them up, with every table listed by status."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import ledger, run_cli, table_exists

from shareddb import ConfigError, DbConfig, DbService, close_shared_dbs, get_shared_db, load_config
from shareddb._admin import tables as tables_module
from shareddb._admin.tables import list_tables, table_namespaces
from shareddb._migrations.files import MigrationFile, checksum, discover_all, migration_folders

NOTES_SQL = """\
-- the application's notes
CREATE TABLE notes (
    id integer PRIMARY KEY,
    title text NOT NULL,
    body text
);
CREATE INDEX notes_title_idx ON notes (title);
"""


@pytest.fixture(autouse=True)
def _close_shared() -> Iterator[None]:
    close_shared_dbs()
    yield
    close_shared_dbs()


def app_folder(root: Path, name: str = "app", sql: str = NOTES_SQL) -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "0001_init.sql").write_text(sql, encoding="utf-8")
    return folder


def write_config(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body, encoding="utf-8")
    return path


def toml_str(value: str) -> str:
    """A TOML basic string (JSON's escaping is valid TOML)."""
    return json.dumps(value)


def config_file(tmp_path: Path, url: str, dirs: dict[str, str]) -> Path:
    lines = [f"[db]\nurl = {toml_str(url)}\n[db.schema_dirs]"]
    lines += [f"{toml_str(ns)} = {toml_str(folder)}" for ns, folder in dirs.items()]
    return write_config(tmp_path / "conf" / "shareddb.toml", "\n".join(lines) + "\n")


def run_json(*args: str, expect: int = 0) -> Any:
    result = run_cli(*args, "--json")
    assert result.returncode == expect, result.stderr + result.stdout
    return json.loads(result.stdout)


def by_name(tables: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in tables}


# -- configuration -----------------------------------------------------------------------


def test_relative_schema_dir_is_relative_to_the_config_file_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = write_config(
        tmp_path / "conf" / "shareddb.toml",
        '[db.schema_dirs]\nmyapp = "migrations/"\nother = "../common/sql"\n',
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(file)
    assert dict(config.schema_dirs) == {
        "myapp": tmp_path / "conf" / "migrations",
        "other": tmp_path / "conf" / ".." / "common" / "sql",
    }
    assert list(config.schema_dirs) == ["myapp", "other"]  # the file's order


def test_absolute_and_home_schema_dirs_are_kept_and_expanded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    file = write_config(
        tmp_path / "shareddb.toml",
        f'[db.schema_dirs]\nabs = {toml_str(str(tmp_path / "abs"))}\nhome = "~/mig"\n',
    )
    config = load_config(file)
    assert config.schema_dirs == {"abs": tmp_path / "abs", "home": home / "mig"}


def test_schema_dirs_apply_whichever_url_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = write_config(
        tmp_path / "shareddb.toml",
        '[sessiondb.sqlite]\npath = "x.db"\n[db.schema_dirs]\napp = "m"\n',
    )
    from_sessiondb = load_config(file)
    assert from_sessiondb.source == "sessiondb"
    assert from_sessiondb.schema_dirs == {"app": tmp_path / "m"}
    monkeypatch.setenv("SHAREDDB_URL", f"sqlite:///{tmp_path}/env.db")
    from_env = load_config(file)
    assert from_env.source == "env"
    assert from_env.schema_dirs == {"app": tmp_path / "m"}


def test_no_schema_dirs_means_none(tmp_path: Path) -> None:
    assert load_config().schema_dirs == {}
    file = write_config(tmp_path / "shareddb.toml", '[db]\nurl = "sqlite:///x.db"\n')
    assert load_config(file).schema_dirs == {}


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("[db.schema_dirs]\napp = 3\n", r"key db\.schema_dirs\.app in .* must be a string"),
        ('[db.schema_dirs]\napp = ""\n', r"key db\.schema_dirs\.app in .* is empty"),
        (
            '[db.schema_dirs]\nshareddb = "m"\n',
            r"key db\.schema_dirs\.shareddb in .*reserved for shareddb's own",
        ),
        (
            '[db.schema_dirs]\n"my app" = "m"\n',
            r"key db\.schema_dirs\.my app in .* is not a plain name; use letters",
        ),
        ('[db]\nschema_dirs = "m"\n', r"key db\.schema_dirs in .* must be a table"),
        (
            '[db.schema_dirs.app]\npath = "m"\n',
            r"key db\.schema_dirs\.app in .* is a table, not a folder; write app = ",
        ),
        ('[db]\nschema_dir = "m"\n', r"unknown key db\.schema_dir in .*known keys here: .*schema"),
        (
            '[db.schema_dirs]\napp = "~nosuchuser_shareddb/m"\n',
            r"key db\.schema_dirs\.app in .* starts with '~'",
        ),
    ],
)
def test_bad_schema_dirs_raise_config_error_naming_the_key(
    tmp_path: Path, body: str, match: str
) -> None:
    file = write_config(tmp_path / "shareddb.toml", body)
    with pytest.raises(ConfigError, match=match):
        load_config(file)


def test_dbconfig_schema_dirs_is_a_read_only_copy() -> None:
    dirs = {"app": Path("migrations")}
    config = DbConfig(url="sqlite:///x.db", schema_dirs=dirs)
    dirs["other"] = Path("x")
    assert config.schema_dirs == {"app": Path("migrations")}
    with pytest.raises(TypeError):
        config.schema_dirs["other"] = Path("x")  # type: ignore[index]
    # An untyped caller's str folder becomes a Path: the same configuration.
    from_str = DbConfig(url="sqlite:///x.db", schema_dirs={"app": "migrations"})  # type: ignore[dict-item]
    assert from_str == config
    assert hash(from_str) == hash(config)
    assert config != DbConfig(url="sqlite:///x.db")
    assert "schema_dirs={'app': PosixPath('migrations')}" in repr(config)


def test_from_config_merges_schema_dirs_and_the_argument_wins(
    tmp_path: Path, sqlite_url: str
) -> None:
    configured = app_folder(tmp_path / "configured", sql="CREATE TABLE from_config (x int);\n")
    argument = app_folder(tmp_path / "argument", sql="CREATE TABLE from_argument (x int);\n")
    extra = app_folder(tmp_path / "extra", "extra", sql="CREATE TABLE extra_t (x int);\n")
    config = DbConfig(url=sqlite_url, schema_dirs={"app": configured})
    with DbService.from_config(config, schema_dirs={"app": argument, "extra": extra}) as db:
        db.initialize()
        assert table_exists(db, "from_argument")
        assert table_exists(db, "extra_t")
        assert not table_exists(db, "from_config")
    with DbService.from_config(config) as db:
        assert [m.state for m in db.migration_status() if m.namespace == "app"] == ["changed"]


# -- get_shared_db -----------------------------------------------------------------------


def test_first_call_applies_the_configured_namespaces(db_url: str, tmp_path: Path) -> None:
    config = DbConfig(url=db_url, schema_dirs={"app": app_folder(tmp_path)})
    db = get_shared_db(config)
    assert ledger(db) == [(1, "0001_init.sql")]
    assert table_exists(db, "notes")


def test_later_calls_share_the_service_with_the_same_or_fewer_namespaces(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = app_folder(tmp_path)
    other = app_folder(tmp_path, "other", sql="CREATE TABLE other_t (x int);\n")
    config = DbConfig(url=db_url, schema_dirs={"app": app})
    db = get_shared_db(config, schema_dirs={"other": other})
    assert table_exists(db, "other_t")
    monkeypatch.chdir(tmp_path)
    assert get_shared_db(DbConfig(url=db_url)) is db  # none asked for
    assert get_shared_db(DbConfig(url=db_url), schema_dirs={"other": "other"}) is db  # relative
    assert get_shared_db(config) is db  # the same
    linked = tmp_path / "linked"
    linked.symlink_to(app)
    assert get_shared_db(DbConfig(url=db_url), schema_dirs={"app": linked}) is db


def test_asking_for_a_namespace_the_shared_service_lacks_is_a_clear_error(
    db_url: str, tmp_path: Path
) -> None:
    db = get_shared_db(DbConfig(url=db_url, schema_dirs={"app": app_folder(tmp_path)}))
    late = app_folder(tmp_path, "late", sql="CREATE TABLE late_t (x int);\n")
    with pytest.raises(ConfigError) as caught:
        get_shared_db(DbConfig(url=db_url), schema_dirs={"late": late})
    message = str(caught.value)
    assert "opened with namespaces shareddb, app" in message
    assert f"namespace 'late' ({late}) is not among them" in message
    assert "never opens a second pool" in message
    assert caught.value.fix is not None
    assert "first get_shared_db(schema_dirs=...)" in caught.value.fix
    assert "[db.schema_dirs]" in caught.value.fix
    # Nothing ran the late namespace, and the shared service is still the one.
    assert not table_exists(db, "late_t")
    assert get_shared_db(DbConfig(url=db_url)) is db


def test_another_folder_for_a_shared_namespace_is_an_error(db_url: str, tmp_path: Path) -> None:
    first = app_folder(tmp_path / "one")
    db = get_shared_db(DbConfig(url=db_url, schema_dirs={"app": first}))
    second = app_folder(tmp_path / "two")
    with pytest.raises(ConfigError, match=rf"namespace 'app' is {first} there, not {second}"):
        get_shared_db(DbConfig(url=db_url, schema_dirs={"app": second}))
    assert get_shared_db(DbConfig(url=db_url)) is db


@pytest.mark.parametrize(
    ("dirs", "match"),
    [
        ({"shareddb": "m"}, "reserved for shareddb's own migrations"),
        ({"my app": "m"}, "is not a plain name"),
        ({"app": ""}, "schema_dirs folder of namespace 'app' is ''"),
        ({"app": 3}, "schema_dirs folder of namespace 'app' is 3"),
    ],
)
def test_bad_schema_dirs_argument_is_refused_before_anything_opens(
    tmp_path: Path, dirs: dict[str, Any], match: str
) -> None:
    url = f"sqlite:///{tmp_path}/never.db"
    with pytest.raises(ConfigError, match=match):
        get_shared_db(DbConfig(url=url), schema_dirs=dirs)
    assert not (tmp_path / "never.db").exists()


def test_default_configuration_namespaces_reach_get_shared_db(tmp_path: Path) -> None:
    app = app_folder(tmp_path / "conf")
    write_config(
        tmp_path / "xdg-config" / "shareddb" / "config.toml",
        f"[db]\nurl = {toml_str(f'sqlite:///{tmp_path}/d.db')}\n"
        f"[db.schema_dirs]\napp = {toml_str(str(app))}\n",
    )
    db = get_shared_db()
    assert table_exists(db, "notes")


# -- which namespace created which table ------------------------------------------------


def migration(namespace: str, text: str, version: int = 1) -> MigrationFile:
    name = f"{version:04d}_x.sql"
    return MigrationFile(namespace, version, name, Path(name), text, checksum(text), True)


def test_table_namespaces_follow_create_drop_and_rename() -> None:
    files = [
        migration("shareddb", "CREATE TABLE sessions (x int);"),
        migration(
            "app",
            'CREATE TABLE IF NOT EXISTS "Mixed ""Case""" (x int);\n'
            "-- a comment; with a semicolon\n"
            "create table Folded(x int);\n"
            "CREATE TABLE public.qualified (x int);\n"
            "CREATE TABLE elsewhere.other_schema (x int);\n"
            "CREATE TEMP TABLE scratch (x int);\n"
            "CREATE UNLOGGED TABLE fast (x int);\n"
            "CREATE TABLE IF NOT EXISTS sessions (x int);\n"
            "CREATE TABLE doomed (x int); CREATE TABLE doomed_too (x int);\n"
            "CREATE TABLE old_name (x int);\n"
            "CREATE FUNCTION f() RETURNS int AS $$ CREATE TABLE in_body (x int); $$ "
            "LANGUAGE sql;",
        ),
        migration(
            "app",
            "ALTER TABLE old_name RENAME TO new_name;\nDROP TABLE IF EXISTS doomed, doomed_too;",
            2,
        ),
    ]
    owners = table_namespaces(files, "postgres", schema="public")
    assert owners == {
        "sessions": "shareddb",  # IF NOT EXISTS of another namespace's table leaves it theirs
        'Mixed "Case"': "app",
        "folded": "app",
        "qualified": "app",
        "fast": "app",
        "new_name": "app",
        "schema_migrations": "shareddb",
    }


def test_table_namespaces_on_sqlite_ignore_case_and_know_its_quotes() -> None:
    files = [
        migration(
            "app",
            "CREATE TABLE [Bracketed] (x);\nCREATE TABLE `back``tick` (x);\n"
            "CREATE TABLE main.Notes (x);\nCREATE TABLE temp.t (x);\n"
            "CREATE VIRTUAL TABLE search USING fts5(body);\n"
            "CREATE TRIGGER trg AFTER INSERT ON notes BEGIN DELETE FROM search; END;",
        )
    ]
    owners = table_namespaces(files, "sqlite")
    assert owners == {
        "bracketed": "app",
        "back`tick": "app",
        "notes": "app",
        "search": "app",
        "schema_migrations": "shareddb",
    }


# -- status lists every table ----------------------------------------------------------


HOSTILE = 'odd "name"; DROP TABLE notes; --'


def _make_app_tables(db: DbService) -> None:
    """Rows in the app's table, and a table no migration created, with a hostile name."""
    sqlite = db.get_backend_type() == "sqlite"
    ph = "?" if sqlite else "%s"
    quoted = '"' + HOSTILE.replace('"', '""') + '"'
    with db.connection() as conn:
        for i in range(3):
            conn.execute(f"INSERT INTO notes (id, title) VALUES ({ph}, {ph})", (i, f"t{i}"))
        conn.execute(f"CREATE TABLE {quoted} (k text PRIMARY KEY)")
        conn.execute(f"INSERT INTO {quoted} VALUES ('a'), ('b')")


def test_list_tables_gives_rows_indexes_and_namespaces(db_url: str, tmp_path: Path) -> None:
    dirs = {"app": app_folder(tmp_path)}
    with DbService(db_url, schema_dirs=dirs) as db:
        db.initialize()
        _make_app_tables(db)
        kind = db.get_backend_type()
        files = discover_all(migration_folders(kind, dirs))
        found = {t.name: t for t in list_tables(db.engine, files)}
    assert {"notes", "sessions", "task_embeddings", "schema_migrations", HOSTILE} <= set(found)
    notes = found["notes"]
    assert (notes.namespace, notes.rows, notes.rows_estimated) == ("app", 3, False)
    title_idx = next(i for i in notes.indexes if i.name == "notes_title_idx")
    assert title_idx.columns == ("title",)
    assert not title_idx.unique
    assert title_idx.method == ("btree" if kind == "postgres" else None)
    assert title_idx.definition is not None and "notes_title_idx" in title_idx.definition
    if kind == "postgres":  # SQLite's INTEGER PRIMARY KEY is the rowid: no index
        assert any(i.primary and i.columns == ("id",) for i in notes.indexes)
    assert found[HOSTILE].rows == 2
    assert found[HOSTILE].namespace is None
    assert any(i.primary and i.columns == ("k",) for i in found[HOSTILE].indexes)
    assert found["sessions"].namespace == "shareddb"
    assert found["schema_migrations"].namespace == "shareddb"
    assert found["schema_migrations"].rows == len(files)
    assert {"sessions_task_id_idx", "sessions_created_at_idx"} <= {
        i.name for i in found["sessions"].indexes
    }


@pytest.mark.postgres
def test_postgres_lists_only_the_current_schema_and_estimates_huge_tables(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with DbService(pg_url) as db:
        db.initialize()
        with db.connection() as conn:
            conn.execute("CREATE SCHEMA side")
            conn.execute("CREATE TABLE side.hidden (x int)")
            conn.execute("CREATE TABLE big (x int)")
            conn.execute("INSERT INTO big SELECT generate_series(1, 500)")
            conn.execute("ANALYZE big")
        monkeypatch.setattr(tables_module, "ESTIMATE_ABOVE", 100)
        found = {t.name: t for t in list_tables(db.engine, [])}
    assert "hidden" not in found
    assert found["big"].rows_estimated is True
    assert found["big"].rows == 500  # what ANALYZE counted
    assert found["big"].namespace is None
    assert found["sessions"].rows_estimated is False  # never analyzed: counted exactly


def test_status_doctor_and_init_pick_up_the_configured_namespaces(
    db_url: str, tmp_path: Path
) -> None:
    app_folder(tmp_path / "conf")
    file = str(config_file(tmp_path, db_url, {"app": "app"}))  # relative to the file

    init = run_cli("init", "--config", file)
    assert init.returncode == 0, init.stderr
    assert "applied app/0001_init.sql" in init.stdout

    with DbService(db_url) as db:
        _make_app_tables(db)

    status = run_json("status", "--config", file)
    assert status["schema_dirs"] == {"app": str(tmp_path / "conf" / "app")}
    assert {(m["namespace"], m["state"]) for m in status["migrations"]} == {
        ("shareddb", "applied"),
        ("app", "applied"),
    }
    tables = by_name(status["tables"])
    assert tables["notes"]["namespace"] == "app"
    assert tables["notes"]["rows"] == 3
    assert "notes_title_idx" in {i["name"] for i in tables["notes"]["indexes"]}
    assert tables[HOSTILE]["namespace"] is None
    assert tables[HOSTILE]["rows"] == 2
    assert tables["sessions"]["namespace"] == "shareddb"

    text = run_cli("status", "--config", file)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    notes_line = next(line for line in lines if line.strip().startswith("notes "))
    assert notes_line.split()[1:] == ["3", "rows", "app"]
    assert any(line.strip().startswith("notes_title_idx") for line in lines)
    hostile_line = next(line for line in lines if line.strip().startswith(HOSTILE))
    assert hostile_line.rstrip().endswith("2 rows  unknown namespace")

    doctor = run_cli("doctor", "--config", file)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert f"[ok]   namespaces: app: {tmp_path / 'conf' / 'app'} (1 migration file)" in (
        doctor.stdout
    )
    assert "[ok]   migrations: all" in doctor.stdout


def test_schema_dir_option_adds_to_the_configured_namespaces(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app_folder(tmp_path / "conf")
    app_folder(tmp_path, "extra", sql="CREATE TABLE extra_t (x int);\n")
    file = str(config_file(tmp_path, sqlite_url, {"app": "app"}))
    monkeypatch.chdir(tmp_path)  # --schema-dir folders are relative to the cwd
    data = run_json("init", "--config", file, "--schema-dir", "extra=extra")
    assert [f"{m['namespace']}/{m['name']}" for m in data["applied"]][-2:] == [
        "app/0001_init.sql",
        "extra/0001_init.sql",
    ]
    status = run_json("status", "--config", file, "--schema-dir", "extra=extra")
    assert by_name(status["tables"])["extra_t"]["namespace"] == "extra"
    # Without the option, the extra namespace's table is there but of no known namespace.
    assert by_name(run_json("status", "--config", file)["tables"])["extra_t"]["namespace"] is None


def test_url_with_config_takes_the_namespaces_from_the_file(
    sqlite_url: str, tmp_path: Path
) -> None:
    app_folder(tmp_path / "conf")
    file = str(config_file(tmp_path, f"sqlite:///{tmp_path}/not-this.db", {"app": "app"}))
    data = run_json("init", "--url", sqlite_url, "--config", file)
    assert "app/0001_init.sql" in [f"{m['namespace']}/{m['name']}" for m in data["applied"]]
    assert not (tmp_path / "not-this.db").exists()
    # --url alone reads no configuration, so knows no namespace.
    alone = run_json("status", "--url", sqlite_url)
    assert alone["schema_dirs"] == {}
    assert by_name(alone["tables"])["notes"]["namespace"] is None


def test_status_before_init_lists_the_configured_namespace_as_pending(
    sqlite_url: str, tmp_path: Path
) -> None:
    app_folder(tmp_path / "conf")
    file = str(config_file(tmp_path, sqlite_url, {"app": "app"}))
    data = run_json("status", "--config", file)
    assert data["exists"] is False
    assert ("app", "0001_init.sql", "pending") in {
        (m["namespace"], m["name"], m["state"]) for m in data["migrations"]
    }
    assert data["tables"] == []
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()


def test_doctor_fails_on_a_configured_folder_that_does_not_exist(
    sqlite_url: str, tmp_path: Path
) -> None:
    file = str(config_file(tmp_path, sqlite_url, {"app": "nope"}))
    doctor = run_cli("doctor", "--config", file)
    assert doctor.returncode == 1
    assert "[FAIL] namespaces: migration folder" in doctor.stdout
    assert str(tmp_path / "conf" / "nope") in doctor.stdout
    assert "[db.schema_dirs]" in doctor.stdout
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()


def test_config_command_shows_the_namespaces(sqlite_url: str, tmp_path: Path) -> None:
    app_folder(tmp_path / "conf")
    file = str(config_file(tmp_path, sqlite_url, {"app": "app", "later": "later"}))
    data = run_json("config", "--config", file)
    assert data["schema_dirs"] == {
        "app": str(tmp_path / "conf" / "app"),
        "later": str(tmp_path / "conf" / "later"),
    }
    text = run_cli("config", "--config", file).stdout
    assert f"namespace    app -> {tmp_path / 'conf' / 'app'}\n" in text
    assert f"namespace    later -> {tmp_path / 'conf' / 'later'}  (folder does not exist)" in text


def test_config_template_documents_schema_dirs(tmp_path: Path) -> None:
    file = tmp_path / "new.toml"
    assert run_cli("config", "--init", "--config", str(file)).returncode == 0
    text = file.read_text()
    assert "# [db.schema_dirs]" in text
    # Uncommented, the example is a valid configuration.
    uncommented = text.replace("# [db.schema_dirs]", "[db.schema_dirs]").replace(
        '# myapp = "migrations/"', 'myapp = "migrations/"'
    )
    file.write_text(uncommented)
    assert load_config(file).schema_dirs == {"myapp": tmp_path / "migrations"}


def test_status_counts_tables_on_sqlite_without_touching_them(sqlite_url: str) -> None:
    """A SQLite virtual table whose module is not loaded can't be counted: rows None."""
    path = sqlite_url.removeprefix("sqlite:///")
    assert run_cli("init", "--url", sqlite_url).returncode == 0
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute(
            "INSERT INTO sqlite_master (type, name, tbl_name, rootpage, sql) VALUES "
            "('table', 'ghost', 'ghost', 0, 'CREATE VIRTUAL TABLE ghost USING nosuchmodule()')"
        )
    data = run_json("status", "--url", sqlite_url)
    assert by_name(data["tables"])["ghost"]["rows"] is None
    text = run_cli("status", "--url", sqlite_url).stdout
    assert next(line for line in text.splitlines() if "ghost" in line).split()[1:3] == ["?", "rows"]
