"""Replicas configured: DbService(replicas=...), ``[db] replicas`` and what `status` shows."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_cli

from shareddb import ConfigError, DbService, load_config

PRIMARY = "postgresql://alice:s3cret@db.example.com:5432/app"
REPLICA = "postgresql://alice:s3cret@replica.example.com:5432/app"


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_db_replicas_in_the_file_reach_the_service(tmp_path: Path) -> None:
    file = write_config(
        tmp_path,
        f'[db]\nurl = "{PRIMARY}"\nreplicas = ["{REPLICA}"]\nmax_replica_lag = 2.5\n'
        "read_your_writes = false\n",
    )
    config = load_config(file)
    assert dict(config.replication) == {
        "replicas": (REPLICA,),
        "max_replica_lag": 2.5,
        "read_your_writes": False,
    }
    assert "s3cret" not in repr(config)
    db = DbService.from_config(config)  # no I/O
    routing = db.engine._replicas.routing  # type: ignore[attr-defined]
    assert [r.name for r in routing.replicas] == [
        "postgresql://alice:***@replica.example.com:5432/app"
    ]
    assert routing.max_lag == 2.5 and routing.read_your_writes is False
    # An argument wins over the file.
    db = DbService.from_config(config, read_your_writes=True)
    assert db.engine._replicas.routing.read_your_writes is True  # type: ignore[attr-defined]


def test_shareddb_url_replaces_the_primary_and_its_replicas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = write_config(tmp_path, f'[db]\nurl = "{PRIMARY}"\nreplicas = ["{REPLICA}"]\n')
    monkeypatch.setenv("SHAREDDB_URL", "postgresql://bob@other.example.com/db")
    assert dict(load_config(file).replication) == {}


@pytest.mark.parametrize(
    ("db_table", "words"),
    [
        (f'replicas = ["{REPLICA}"]\n', "needs db.url"),
        (f'url = "{PRIMARY}"\nreplicas = "{REPLICA}"\n', "must be a list of url strings"),
        (f'url = "{PRIMARY}"\nreplicas = [1]\n', "must be a list of url strings"),
        (f'url = "{PRIMARY}"\nreplicas = ["mysql://x/y"]\n', "replica url"),
        (f'url = "{PRIMARY}"\nreplicas = ["{PRIMARY}"]\n', "the primary's own url"),
        (f'url = "sqlite:///x.db"\nreplicas = ["{REPLICA}"]\n', "replicas are for PostgreSQL"),
        (f'url = "{PRIMARY}"\nmax_replica_lag = 0\n', "max_replica_lag=0 must be"),
        (f'url = "{PRIMARY}"\nread_your_writes = "yes"\n', "read_your_writes='yes' must be"),
    ],
)
def test_bad_replica_settings_name_the_key_and_the_fix(
    tmp_path: Path, db_table: str, words: str
) -> None:
    file = write_config(tmp_path, "[db]\n" + db_table)
    with pytest.raises(ConfigError, match=words) as error:
        load_config(file)
    assert str(file) in str(error.value)
    assert "s3cret" not in str(error.value)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"replicas": REPLICA}, "must be a list of PostgreSQL urls"),
        ({"replicas": ["postgresql+embedded:///x"]}, "is not a PostgreSQL server url"),
        ({"replicas": [None]}, "is a NoneType, not a url"),
        ({"max_replica_lag": -1}, "max_replica_lag=-1"),
        ({"read_your_writes": 1}, "read_your_writes=1"),
    ],
)
def test_bad_replica_arguments(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        DbService(PRIMARY, **kwargs)  # type: ignore[arg-type]


def test_sqlite_takes_no_replicas(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="replicas are for PostgreSQL"):
        DbService(f"sqlite:///{tmp_path}/x.db", replicas=[REPLICA])


@pytest.mark.postgres
def test_status_shows_each_replica_with_its_state_and_lag(
    tmp_path: Path, replicated: tuple[str, str]
) -> None:
    primary, replica = replicated
    down = "postgresql://postgres@127.0.0.1:9/nowhere?connect_timeout=2"
    file = write_config(tmp_path, f'[db]\nurl = "{primary}"\nreplicas = ["{replica}", "{down}"]\n')
    status = run_cli("status", "--config", str(file))
    assert "Traceback" not in status.stderr, status.stderr
    assert "role        primary (read-write)" in status.stdout
    lines = [line for line in status.stdout.splitlines() if line.startswith("replica ")]
    assert len(lines) == 2, status.stdout
    assert "healthy, replay lag " in lines[0] and " ms" in lines[0]
    assert lines[1].split()[1] == "postgresql://postgres@127.0.0.1:9/nowhere?connect_timeout=2"
    assert " down (" in lines[1]
    doctor = run_cli("doctor", "--config", str(file))
    assert "Traceback" not in doctor.stderr, doctor.stderr
    assert "healthy, replay lag" in doctor.stdout and ": down (" in doctor.stdout


@pytest.mark.postgres
def test_a_replica_that_is_down_costs_no_error_and_shows_no_password(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    down = "postgresql://alice:s3cret@127.0.0.1:9/app"
    with DbService(pg_url, replicas=[down]) as db:
        db.initialize()
        assert db.query_value("SELECT 41 + 1", read_only=True) == 42  # served by the primary
        health = db.engine.replica_health()
    assert health[0].state == "down"
    assert "s3cret" not in (health[0].reason or "") and "s3cret" not in health[0].name
    assert "skipped" in caplog.text and "s3cret" not in caplog.text


def test_shareddb_config_lists_the_replicas_masked(tmp_path: Path) -> None:
    file = write_config(tmp_path, f'[db]\nurl = "{PRIMARY}"\nreplicas = ["{REPLICA}"]\n')
    shown = run_cli("config", "--config", str(file))
    assert shown.returncode == 0, shown.stderr
    assert "replica      postgresql://alice:***@replica.example.com:5432/app" in shown.stdout
    assert "s3cret" not in shown.stdout
