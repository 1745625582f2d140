"""get_shared_db() / close_shared_dbs(): one DbService per process per target."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import run_in_child

from shareddb import DbConfig, DbService, close_shared_dbs, get_shared_db


@pytest.fixture(autouse=True)
def _close_shared() -> Iterator[None]:
    close_shared_dbs()
    yield
    close_shared_dbs()


def config_for(url: str) -> DbConfig:
    return DbConfig(url=url, source="env")


def test_same_object_for_the_same_target_across_threads(db_url: str) -> None:
    results: list[DbService] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def get() -> None:
        start.wait()
        db = get_shared_db(config_for(db_url))
        with lock:
            results.append(db)

    threads = [threading.Thread(target=get) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8
    assert all(db is results[0] for db in results)


def test_shared_db_is_open_and_initialized(db_url: str) -> None:
    db = get_shared_db(config_for(db_url))
    assert "open" in repr(db)
    status = db.migration_status()
    assert status and all(m.state == "applied" for m in status)


def test_different_targets_get_different_instances(tmp_path: Path) -> None:
    a = get_shared_db(config_for(f"sqlite:///{tmp_path}/a.db"))
    b = get_shared_db(config_for(f"sqlite:///{tmp_path}/b.db"))
    assert a is not b
    assert get_shared_db(config_for(f"sqlite:///{tmp_path}/a.db")) is a


def test_one_sqlite_file_spelled_two_ways_is_one_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    absolute = get_shared_db(config_for(f"sqlite:///{tmp_path}/same.db"))
    relative = get_shared_db(config_for("sqlite:///same.db"))
    dotted = get_shared_db(config_for(f"sqlite:///{tmp_path}/sub/../same.db"))
    assert absolute is relative is dotted


def test_default_config_is_used_without_an_argument(tmp_path: Path) -> None:
    db = get_shared_db()
    assert db.get_backend_type() == "sqlite"
    assert (tmp_path / "xdg-data" / "shareddb" / "shareddb.db").is_file()
    assert get_shared_db() is db


def test_close_then_get_opens_anew(db_url: str) -> None:
    first = get_shared_db(config_for(db_url))
    close_shared_dbs()
    assert repr(first).endswith("closed>")
    second = get_shared_db(config_for(db_url))
    assert second is not first
    with second.connection() as conn:
        assert conn.execute("SELECT 1").fetchone()[0] == 1


def test_failed_initialize_is_not_cached(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/x.db"
    # A file where the folder should be: the SQLite file can't be created.
    (tmp_path / "blocker").write_text("")
    bad = f"sqlite:///{tmp_path}/blocker/x.db"
    with pytest.raises(Exception, match="couldn't open SQLite database"):
        get_shared_db(config_for(bad))
    with pytest.raises(Exception, match="couldn't open SQLite database"):
        get_shared_db(config_for(bad))
    assert get_shared_db(config_for(url)) is get_shared_db(config_for(url))


def test_child_after_fork_gets_its_own_working_instance(db_url: str) -> None:
    parent_db = get_shared_db(config_for(db_url))
    with parent_db.connection() as conn:
        conn.execute("CREATE TABLE pids (pid integer)")

    def child() -> str:
        db = get_shared_db(config_for(db_url))
        if db is parent_db:
            return "same instance as the parent"
        ph = "?" if db.get_backend_type() == "sqlite" else "%s"
        with db.connection() as conn:
            conn.execute(f"INSERT INTO pids VALUES ({ph})", (os.getpid(),))
        again = get_shared_db(config_for(db_url))
        close_shared_dbs()
        return "ok" if again is db else "second call gave another instance"

    assert run_in_child(child) == "ok"
    assert get_shared_db(config_for(db_url)) is parent_db
    with parent_db.connection() as conn:  # the parent's pool or file still works
        rows = conn.execute("SELECT pid FROM pids").fetchall()
    assert len(rows) == 1
    assert rows[0][0] != os.getpid()


def test_tilde_in_a_sqlite_url_means_the_home_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    tilde = get_shared_db(config_for("sqlite:///~/x.db"))
    in_home = get_shared_db(config_for(f"sqlite:///{home}/x.db"))
    assert tilde is in_home
    assert (home / "x.db").is_file()
    assert not (tmp_path / "~").exists()
