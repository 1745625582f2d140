"""Client faults: a process SIGKILLed in the middle of a migration, and an exhausted pool."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rel_server import WORKER

from shareddb import DatabaseUnavailableError, DbService, SessionRecord, SessionStorage

pytestmark = pytest.mark.reliability

# Slow statements that a test kills long before they end.
SLOW = {
    "postgres": "SELECT pg_sleep(120);",
    "sqlite": (
        "INSERT INTO app_partial (x) WITH RECURSIVE c(x) AS "
        "(SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000) SELECT x FROM c;"
    ),
}
FAST = "INSERT INTO app_partial (x) VALUES (2);"


def write_migrations(folder: Path, slow: str) -> Path:
    folder.mkdir()
    (folder / "0001_first.sql").write_text("CREATE TABLE app_first (x integer);\n")
    second = folder / "0002_slow.sql"
    second.write_text(
        "CREATE TABLE app_partial (x integer);\n"
        "INSERT INTO app_partial (x) VALUES (1);\n"
        f"{slow}\n"
        "CREATE TABLE app_after (x integer);\n"
    )
    return second


def app_state(db: DbService) -> tuple[list[int], list[str]]:
    """The app namespace's applied versions, and which of its tables exist."""
    with db.connection() as conn:
        if db.get_backend_type() == "sqlite":
            versions = conn.execute(
                "SELECT version FROM schema_migrations WHERE namespace = 'app' ORDER BY version"
            ).fetchall()
            tables = conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'app%' "
                "ORDER BY name"
            ).fetchall()
        else:
            versions = conn.execute(
                "SELECT version FROM schema_migrations WHERE namespace = 'app' ORDER BY version"
            ).fetchall()
            tables = conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                "AND tablename LIKE 'app%%' ORDER BY tablename"
            ).fetchall()
    return [int(v) for (v,) in versions], [str(t) for (t,) in tables]


def wait_until_in_slow_statement(child: subprocess.Popen[str], db_url: str) -> None:
    """Read the child's log until it applied 0001; then until the slow statement runs."""
    assert child.stderr is not None
    deadline = time.monotonic() + 60
    for line in child.stderr:
        if "applied migration app/0001_first.sql" in line:
            break
        assert time.monotonic() < deadline, "the child never applied 0001"
    else:
        raise AssertionError(f"the child ended early with status {child.wait()}")
    if db_url.startswith("sqlite"):
        time.sleep(1.0)  # the recursive insert runs for minutes; give it a second
        return
    import psycopg

    while time.monotonic() < deadline:
        with psycopg.connect(db_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(120)%%' "
                "AND state = 'active'"
            ).fetchone()
        if row and row[0]:
            return
        time.sleep(0.05)
    raise AssertionError("the slow statement never started")


def test_process_killed_during_a_slow_migration_leaves_no_trace(
    db_url: str, tmp_path: Path
) -> None:
    backend = "sqlite" if db_url.startswith("sqlite") else "postgres"
    folder = tmp_path / "app"
    second = write_migrations(folder, SLOW[backend])
    child = subprocess.Popen(
        [sys.executable, str(WORKER), "migrate", db_url, str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_in_slow_statement(child, db_url)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        assert child.stderr is not None
        child.stderr.close()

    with DbService(db_url, schema_dirs={"app": folder}, timeout=10) as db:
        # 0001 committed before the kill; nothing of 0002 stayed, not even its first table.
        assert app_state(db) == ([1], ["app_first"])
        assert [(m.version, m.state) for m in db.migration_status() if m.namespace == "app"] == [
            (1, "applied"),
            (2, "pending"),
        ]
        # No stale lock: the next initialize() takes it at once. The pending file may be
        # edited (it never ran), so make it quick.
        second.write_text(second.read_text().replace(SLOW[backend], FAST))
        report = db.initialize(lock_timeout=15)
        assert [(m.namespace, m.version) for m in report.applied] == [("app", 2)]
        assert app_state(db) == ([1, 2], ["app_after", "app_first", "app_partial"])
        with db.connection() as conn:
            rows = conn.execute("SELECT x FROM app_partial ORDER BY x").fetchall()
        assert [r[0] for r in rows] == [1, 2]


HOLDERS = 2
THREADS = 10
POOL_TIMEOUT = 1.5


def test_exhausted_pool_times_out_clearly_and_recovers(db_url: str) -> None:
    """10 threads each want a connection for a while; only max_size=2 (or SQLite's one) can."""
    with DbService(db_url, max_size=HOLDERS, timeout=POOL_TIMEOUT) as db:
        db.initialize()
        sessions = SessionStorage(db)
        sqlite = db.get_backend_type() == "sqlite"
        holders = 1 if sqlite else HOLDERS
        start = threading.Barrier(THREADS)
        release = threading.Event()
        results: list[tuple[str, float, BaseException | None]] = []
        lock = threading.Lock()

        def want(i: int) -> None:
            start.wait()
            began = time.monotonic()
            try:
                with db.connection() as conn:
                    conn.execute("SELECT 1")
                    with lock:
                        results.append(("held", time.monotonic() - began, None))
                    release.wait(POOL_TIMEOUT * 4)
            except BaseException as e:
                with lock:
                    results.append(("failed", time.monotonic() - began, e))

        threads = [threading.Thread(target=want, args=(i,), daemon=True) for i in range(THREADS)]
        for t in threads:
            t.start()
        # Release the holders only after every other thread has given up.
        deadline = time.monotonic() + POOL_TIMEOUT * 4
        while time.monotonic() < deadline:
            with lock:
                if len(results) == THREADS:
                    break
            time.sleep(0.05)
        release.set()
        for t in threads:
            t.join(POOL_TIMEOUT * 4)
        assert not any(t.is_alive() for t in threads), "deadlock: a thread never returned"

        held = [r for r in results if r[0] == "held"]
        failed = [r for r in results if r[0] == "failed"]
        assert len(held) == holders and len(failed) == THREADS - holders
        for _, waited, error in failed:
            assert isinstance(error, DatabaseUnavailableError), repr(error)
            assert waited >= POOL_TIMEOUT * 0.99
            message = str(error)
            assert f"after {POOL_TIMEOUT:.2f} sec" in message
            if sqlite:
                assert "another thread kept it in a transaction" in message
            else:
                assert f"all {HOLDERS} connections of the pool are in use" in message
                assert db.url in message

        # Healthy after: every thread gets its turn, and work commits.
        def work(i: int) -> None:
            sessions.add(SessionRecord(session=f"after-{i}", repo_name="r", repo_url="u"))

        workers = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
        for t in workers:
            t.start()
        for t in workers:
            t.join(30)
        assert len(sessions.list()) == THREADS
