"""``shareddb copy``: SQLite -> PostgreSQL -> SQLite keeps every row bit for bit, idempotently."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector

from shareddb import DbService
from shareddb.sessions import SessionRecord, SessionStorage
from shareddb.vectors import VectorStorage

TIMEOUT = 180
SPECIAL = np.array(
    [0.0, -0.0, 1e-45, -1e-45, 1.1754942e-38, 3.4028235e38, -3.4028235e38, 0.1, -1 / 3],
    dtype=np.float32,
)


def run_copy(source: str, dest: str, *extra: str) -> dict[str, Any]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "shareddb",
            "copy",
            "--from",
            source,
            "--to",
            dest,
            "--json",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=dict(os.environ),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return {t["table"]: t for t in data["tables"]}


def fill_source(url: str, sessions: int = 23, embeddings: int = 31) -> None:
    """Sessions through SessionStorage; embeddings as raw float32 rows of several sizes."""
    rng = np.random.default_rng(20250131)
    tie = datetime(2025, 1, 31, 9, 30, 0, 123456, tzinfo=UTC)
    with DbService(url) as db:
        db.initialize()
        store = SessionStorage(db)
        for i in range(sessions):
            store.add(
                SessionRecord(
                    session=f"session-{i:03d}" if i % 5 else f"sé'ssion; DROP TABLE x;-- {i}",
                    repo_name=f"repo-{i % 4}",
                    repo_url=f"https://example.com/r/{i % 4}.git",
                    branch=None if i % 3 else f"feature/{i}",
                    task_id=None if i % 2 else f"md#{i}",
                    # Several sessions share one microsecond: their order must survive.
                    created_at=tie if i < 6 else tie + timedelta(seconds=i, microseconds=i),
                    updated_at=tie + timedelta(days=1, microseconds=7 * i),
                )
            )
        stamp = tie.isoformat(timespec="microseconds")
        with db.connection() as conn:
            for i in range(embeddings):
                dim = (1, 3, 9, 384)[i % 4]
                vector = rng.standard_normal(dim).astype(np.float32) * np.float32(
                    10.0 ** (i % 7 - 3)
                )
                if i == 0:
                    vector = SPECIAL
                    dim = len(SPECIAL)
                conn.execute(
                    "INSERT INTO task_embeddings (qualified_task_id, backend, dimension, "
                    "embedding, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        f"{('md', 'gh')[i % 2]}#{i}",
                        ("md", "gh", "custom")[i % 3],
                        dim,
                        vector.astype("<f4").tobytes(),
                        stamp,
                        stamp,
                    ),
                )


def sqlite_rows(url: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every copied column, exactly as SQLite stores it (text timestamps, float32 blobs)."""
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        sessions = conn.execute(
            "SELECT session, repo_name, repo_url, branch, task_id, created_at, updated_at "
            "FROM sessions ORDER BY session"
        ).fetchall()
        embeddings = conn.execute(
            "SELECT qualified_task_id, backend, dimension, embedding, created_at, updated_at "
            "FROM task_embeddings ORDER BY qualified_task_id"
        ).fetchall()
    return sessions, embeddings


def pg_embeddings(url: str) -> dict[str, tuple[str, int, bytes, datetime, datetime]]:
    """task_embeddings on PostgreSQL, vectors read in binary and turned into float32 LE bytes."""
    with psycopg.connect(url) as conn:
        register_vector(conn)
        cur = conn.cursor(binary=True)
        cur.execute(
            "SELECT qualified_task_id, backend, dimension, embedding, created_at, updated_at "
            "FROM task_embeddings"
        )
        return {
            qid: (backend, dim, vec.to_numpy().astype("<f4").tobytes(), created, updated)
            for qid, backend, dim, vec, created, updated in cur
        }


def listed(url: str) -> list[SessionRecord]:
    with DbService(url) as db:
        return SessionStorage(db).list()


@pytest.mark.postgres
def test_copy_sqlite_to_postgres_and_back_is_bit_exact_and_idempotent(
    tmp_path: Path, pg_url: str
) -> None:
    source = f"sqlite:///{tmp_path}/source.db"
    back = f"sqlite:///{tmp_path}/back.db"
    fill_source(source)
    src_sessions, src_embeddings = sqlite_rows(source)

    first = run_copy(source, pg_url, "--batch-size", "7")  # several batches and a remainder
    assert first["sessions"]["inserted"] == len(src_sessions)
    assert first["task_embeddings"]["inserted"] == len(src_embeddings)
    on_pg = pg_embeddings(pg_url)
    assert len(on_pg) == len(src_embeddings)
    for qid, backend, dim, blob, created, updated in src_embeddings:
        pg_backend, pg_dim, pg_blob, pg_created, pg_updated = on_pg[qid]
        assert (pg_backend, pg_dim) == (backend, dim)
        assert pg_blob == blob, qid  # every bit, -0.0 and subnormals included
        assert pg_created == datetime.fromisoformat(created)
        assert pg_updated == datetime.fromisoformat(updated)
    assert listed(pg_url) == listed(source)  # same records in the same order (ties too)
    with DbService(pg_url) as db:  # the copied rows work through the domain API
        vectors = VectorStorage(db)
        for qid, _, _, blob, _, _ in src_embeddings[:5]:
            stored = vectors.get(qid)
            assert stored is not None
            assert stored.astype("<f4").tobytes() == blob
        query = np.frombuffer(src_embeddings[1][3], dtype="<f4")
        nearest = vectors.search(query, k=1, metric="l2", exact=True)
        assert nearest[0].qualified_task_id == src_embeddings[1][0]
        assert nearest[0].distance == 0.0

    again = run_copy(source, pg_url, "--batch-size", "7")
    for table in ("sessions", "task_embeddings"):
        assert again[table]["written"] == 0
        assert again[table]["inserted"] == again[table]["updated"] == 0
        assert again[table]["unchanged"] == again[table]["read"]
    assert pg_embeddings(pg_url) == on_pg

    home = run_copy(pg_url, back, "--batch-size", "5")
    assert home["task_embeddings"]["inserted"] == len(src_embeddings)
    assert sqlite_rows(back) == (src_sessions, src_embeddings)
    assert listed(back) == listed(source)
    repeat = run_copy(pg_url, back)
    assert repeat["sessions"]["unchanged"] == len(src_sessions)
    assert repeat["task_embeddings"]["unchanged"] == len(src_embeddings)
    assert sqlite_rows(back) == (src_sessions, src_embeddings)


def test_copy_updates_what_changed_and_keeps_rows_only_the_target_has(tmp_path: Path) -> None:
    source = f"sqlite:///{tmp_path}/a.db"
    dest = f"sqlite:///{tmp_path}/b.db"
    fill_source(source, sessions=5, embeddings=6)
    run_copy(source, dest)
    with DbService(source) as db:
        SessionStorage(db).update("session-001", branch="moved")
        with db.connection() as conn:
            conn.execute(
                "UPDATE task_embeddings SET embedding = ? WHERE qualified_task_id = 'gh#1'",
                (np.array([9.5, -0.0, 1e-45], dtype="<f4").tobytes(),),
            )
    with DbService(dest) as db:
        SessionStorage(db).add(SessionRecord(session="only-here", repo_name="r", repo_url="u"))

    result = run_copy(source, dest)
    assert (result["sessions"]["inserted"], result["sessions"]["updated"]) == (0, 1)
    assert (result["task_embeddings"]["inserted"], result["task_embeddings"]["updated"]) == (0, 1)
    dest_sessions, dest_embeddings = sqlite_rows(dest)
    src_sessions, src_embeddings = sqlite_rows(source)
    assert [r for r in dest_sessions if r[0] != "only-here"] == src_sessions
    assert dest_embeddings == src_embeddings
    assert any(r[0] == "only-here" for r in dest_sessions)


def test_copy_only_one_table(tmp_path: Path) -> None:
    source = f"sqlite:///{tmp_path}/a.db"
    dest = f"sqlite:///{tmp_path}/b.db"
    fill_source(source, sessions=3, embeddings=4)
    result = run_copy(source, dest, "--only", "task_embeddings")
    assert set(result) == {"task_embeddings"}
    sessions, embeddings = sqlite_rows(dest)
    assert sessions == []
    assert len(embeddings) == 4


def test_copy_refuses_one_database_twice_and_a_missing_source(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/a.db"
    fill_source(url, sessions=1, embeddings=1)
    same = subprocess.run(
        [
            sys.executable,
            "-m",
            "shareddb",
            "copy",
            "--from",
            url,
            "--to",
            f"sqlite:///{tmp_path}/./a.db",
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert same.returncode == 1
    assert "two different databases" in same.stderr
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "shareddb",
            "copy",
            "--from",
            f"sqlite:///{tmp_path}/nope.db",
            "--to",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr
    assert not (tmp_path / "nope.db").exists()
