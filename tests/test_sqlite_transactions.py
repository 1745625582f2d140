"""SQLite transaction edge cases: failed commits, and reads beside another writer."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from shareddb import DbService, SessionRecord, SessionStorage, VectorStorage


def test_a_failed_commit_rolls_back_and_leaves_the_shared_connection_usable(
    sqlite_url: str,
) -> None:
    with DbService(sqlite_url) as db:
        with db.connection() as conn:
            conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
            conn.execute(
                "CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER "
                "REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)"
            )
        # The deferred foreign key is checked at COMMIT, which therefore fails.
        with pytest.raises(sqlite3.IntegrityError), db.connection() as conn:
            conn.execute("INSERT INTO child VALUES (1, 42)")
        with db.connection() as conn:
            assert conn.execute("SELECT count(*) FROM child").fetchone()[0] == 0
            conn.execute("INSERT INTO parent VALUES (1)")
        with db.connection() as conn:
            assert conn.execute("SELECT count(*) FROM parent").fetchone()[0] == 1


def test_reads_do_not_wait_for_another_connections_write_transaction(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    with DbService(f"sqlite:///{path}", timeout=0.5) as db:
        db.initialize()
        sessions, vectors = SessionStorage(db), VectorStorage(db)
        sessions.add(SessionRecord(session="s1", repo_name="r", repo_url="u", task_id="md#1"))
        vectors.upsert("md#1", np.ones(4, dtype=np.float32))
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            other.execute("UPDATE sessions SET repo_name = 'changed' WHERE session = 's1'")
            # Every read sees the last committed snapshot instead of timing out.
            assert sessions.get("s1") is not None
            assert sessions.get("s1").repo_name == "r"  # type: ignore[union-attr]
            assert [r.session for r in sessions.list()] == ["s1"]
            assert sessions.get_by_task("md#1") is not None
            assert vectors.count() == 1
            assert np.array_equal(vectors.get("md#1"), np.ones(4, dtype=np.float32))
            assert [r.qualified_task_id for r in vectors.search(np.ones(4), k=1)] == ["md#1"]
            other.execute("COMMIT")
        finally:
            other.close()
        assert sessions.get("s1").repo_name == "changed"  # type: ignore[union-attr]
