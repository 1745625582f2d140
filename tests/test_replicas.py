"""Read replicas on a real streaming standby: routing, read-your-writes, failover, promotion.

Reads are proven to run on the standby by the standby's own table statistics
(``pg_stat_user_tables`` counts scans where they ran; backends flush them when they
exit, so each count is read after the service is closed).
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
from standby import Standby

from shareddb import DbService, SessionRecord, SessionStorage, VectorStorage
from shareddb.errors import InvalidArgumentError

pytestmark = pytest.mark.postgres

DIM = 8


def vector(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.standard_normal(DIM).astype(np.float32)


def scans(url: str, table: str = "task_embeddings") -> int:
    """Sequential and index scans of `table` counted by the server at `url`."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables "
            "WHERE relname = %s",
            (table,),
        ).fetchone()
    return int(row[0]) if row else 0


def settled_scans(url: str, at_least: int = 0) -> int:
    """`scans()` once the backends of a closed service have flushed their statistics."""
    deadline = time.monotonic() + 10
    last = scans(url)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = scans(url)
        if now == last and now >= at_least:
            return now
        last = now
    return last


def test_reads_go_to_the_replica_and_writes_to_the_primary(
    replicated: tuple[str, str], standby_server: Standby
) -> None:
    primary, replica = replicated
    with DbService(primary, replicas=[replica]) as db:
        db.initialize()
        vectors = VectorStorage(db)
        vectors.upsert_many((f"md#{i}", vector(i)) for i in range(50))
    standby_server.wait_for(primary)
    primary_before, replica_before = settled_scans(primary), settled_scans(replica)

    reads = 300
    with DbService(primary, replicas=[replica]) as db:
        vectors = VectorStorage(db)
        for i in range(reads // 3):
            assert np.array_equal(vectors.get(f"md#{i % 50}"), vector(i % 50))
            assert vectors.search(vector(i % 50), k=1)[0].qualified_task_id == f"md#{i % 50}"
            assert vectors.count() == 50
        assert db.query_value("SELECT count(*) FROM task_embeddings", read_only=True) == 50
        health = db.engine.replica_health()
    primary_reads = settled_scans(primary) - primary_before
    replica_reads = settled_scans(replica, replica_before + reads) - replica_before
    print(f"scans: replica {replica_reads}, primary {primary_reads} for {reads} reads")
    assert replica_reads >= reads
    assert primary_reads == 0
    assert [h.state for h in health] == ["healthy"]


def test_writes_stay_on_the_primary_and_are_read_back_at_once(
    replicated: tuple[str, str],
) -> None:
    """Read-your-writes: every read right after a write sees it (200 of 200)."""
    primary, replica = replicated
    with DbService(primary, replicas=[replica]) as db:
        db.initialize()
        vectors = VectorStorage(db)
        sessions = SessionStorage(db)
        seen = 0
        for i in range(200):
            vectors.upsert(f"md#{i}", vector(i))
            got = vectors.get(f"md#{i}")
            seen += got is not None and np.array_equal(got, vector(i))
        assert seen == 200
        for i in range(20):
            sessions.add(SessionRecord(session=f"s{i}", repo_name="r", repo_url="u"))
            assert sessions.get(f"s{i}") is not None
            assert sessions.get_by_task("md#1") is None
        vectors.upsert_many((f"bulk#{i}", vector(i)) for i in range(2000))
        assert vectors.count(backend="bulk") == 2000
        assert len(vectors.get_many([f"bulk#{i}" for i in range(0, 2000, 7)])) == 286
        assert sum(1 for _ in vectors.ids(backend="bulk")) == 2000


def test_a_standby_stopped_mid_workload_costs_no_failed_call(
    replicated: tuple[str, str], standby_server: Standby
) -> None:
    primary, replica = replicated
    errors: list[BaseException] = []
    calls = [0]
    stop = threading.Event()
    with DbService(primary, replicas=[replica], timeout=10) as db:
        db.initialize()
        vectors = VectorStorage(db)

        def worker(n: int) -> None:
            i = 0
            while not stop.is_set():
                key = f"w{n}#{i % 40}"
                try:
                    vectors.upsert(key, vector(i))
                    got = vectors.get(key)
                    assert got is not None and np.array_equal(got, vector(i)), key
                    assert vectors.search(vector(i), k=1)
                    vectors.count()
                except BaseException as e:
                    errors.append(e)
                calls[0] += 4
                i += 1

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        try:
            time.sleep(1.0)
            standby_server.stop("fast")
            time.sleep(1.5)
        finally:
            stop.set()
            for t in threads:
                t.join()
            if not standby_server.running():
                standby_server.start()
        assert errors == [], errors[:3]
        assert calls[0] > 100
        # Back after its backoff: the replica serves reads again.
        deadline = time.monotonic() + 30
        while db.engine.replica_health()[0].state != "healthy":
            assert time.monotonic() < deadline, db.engine.replica_health()
            time.sleep(0.2)


def test_a_promoted_standby_is_no_longer_used(pg_url: str, pg_server_url: str) -> None:
    # A second standby of its own, as promotion ends its life as a replica.
    folder = Path(tempfile.mkdtemp(prefix="shareddb-promoted-")) / "pg"
    standby = Standby.create(pg_server_url, folder, port=5434)
    try:
        with DbService(pg_url) as db:
            db.initialize()
        standby.wait_for(pg_url)
        with DbService(pg_url, replicas=[standby.replica_of(pg_url)]) as db:
            vectors = VectorStorage(db)
            assert vectors.count() == 0
            assert db.engine.replica_health()[0].state == "healthy"
            standby.promote()
            # The new primary takes a write that the old one never sees: were the
            # promoted server still read, the count would say so.
            with psycopg.connect(standby.replica_of(pg_url), autocommit=True) as conn:
                conn.execute(
                    "INSERT INTO task_embeddings (qualified_task_id, backend, dimension, "
                    "embedding) VALUES ('x#1', 'x', 2, '[1,2]')"
                )
            for _ in range(50):
                assert vectors.count() == 0
            health = db.engine.replica_health()
            assert health[0].state == "promoted", health
            assert "promoted" in (health[0].reason or "")
    finally:
        standby.remove()


def test_read_only_query_must_only_read(replicated: tuple[str, str]) -> None:
    primary, replica = replicated
    with DbService(primary, replicas=[replica]) as db:
        with pytest.raises(InvalidArgumentError, match="read_only=True is for statements"):
            db.query("CREATE TABLE t (x int)", read_only=True)
        assert db.query_value("SELECT to_regclass('t') IS NULL") is True


@pytest.fixture
def paused(replicated: tuple[str, str], standby_server: Standby) -> Iterator[tuple[str, str]]:
    """An initialized database with md#1 and session s1, whose standby then stops replaying."""
    primary, replica = replicated
    with DbService(primary) as db:
        db.initialize()
        VectorStorage(db).upsert("md#1", vector(1))
        SessionStorage(db).add(SessionRecord(session="s1", repo_name="r", repo_url="u"))
    standby_server.wait_for(primary)
    with psycopg.connect(replica, autocommit=True) as conn:
        conn.execute("SELECT pg_wal_replay_pause()")
        try:
            yield primary, replica
        finally:
            conn.execute("SELECT pg_wal_replay_resume()")


def test_every_replica_read_runs_on_the_replica(paused: tuple[str, str]) -> None:
    """What the paused standby answers differs from the primary: each read shows where it ran."""
    primary, replica = paused
    with DbService(primary) as db:  # another writer: no read-your-writes mark on the reader
        VectorStorage(db).upsert("md#2", vector(2), metadata={"task": "md#9"})
        # Enough rows for the primary's planner to search through the index.
        VectorStorage(db).upsert_many((f"more#{i}", vector(i)) for i in range(2000))
        index = VectorStorage(db).create_index(dimension=DIM)
        late = VectorStorage(db, table="late")
        late.create_table()
        late.upsert("md#1", vector(1))
        SessionStorage(db).add(
            SessionRecord(session="s2", repo_name="r", repo_url="u", task_id="md#9")
        )
    with DbService(primary, replicas=[replica], max_replica_lag=3600) as db:
        vectors, sessions = VectorStorage(db), SessionStorage(db)
        assert vectors.count() == 1
        assert vectors.get("md#2") is None and vectors.get_record("md#2") is None
        assert not vectors.exists("md#2")
        assert list(vectors.get_many(["md#1", "md#2"])) == ["md#1"]
        assert list(vectors.ids()) == ["md#1"]
        assert [r.qualified_task_id for r in vectors.search(vector(2), k=5)] == ["md#1"]
        assert [r.qualified_task_id for r in vectors.search_by_id("md#1", k=5)] == []
        assert vectors.stale({"md#2": "h"}) == ["md#2"]
        assert vectors.indexes() == []
        assert index not in vectors.explain(vector(2), k=5)
        assert [s.session for s in sessions.list()] == ["s1"]
        assert sessions.get("s2") is None and sessions.get_by_task("md#9") is None
        assert db.query_value("SELECT count(*) FROM sessions", read_only=True) == 1
        # A table the standby has not replayed: the primary answers.
        assert VectorStorage(db, table="late").count() == 1
        assert db.query_value("SELECT count(*) FROM late", read_only=True) == 1
        # Without read_only, and with conn=, the primary answers.
        assert db.query_value("SELECT count(*) FROM sessions") == 2
        with db.transaction() as conn:
            assert vectors.count(conn=conn) == 2002 and sessions.get("s2", conn=conn) is not None
            assert index in vectors.explain(vector(2), k=5, conn=conn)
        # Its own write: from now on this service reads it back, from the primary.
        vectors.upsert("md#3", vector(3))
        assert vectors.count() == 2003 and vectors.get("md#2") is not None


def test_a_replica_past_max_replica_lag_is_skipped(paused: tuple[str, str]) -> None:
    primary, replica = paused
    with DbService(primary) as db:
        VectorStorage(db).upsert("md#2", vector(2))  # the standby receives it, and waits
    time.sleep(0.6)
    with DbService(primary, replicas=[replica], max_replica_lag=0.5, read_your_writes=False) as db:
        vectors = VectorStorage(db)
        assert vectors.get("md#2") is not None  # the primary answered
        health = db.engine.replica_health()
        assert health[0].state == "lagging", health
        assert "max_replica_lag=0.5" in (health[0].reason or "")
