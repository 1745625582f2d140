"""Server faults: SIGKILL the PostgreSQL postmaster under load, then restart it.

Calls made while the server is down must fail within the configured timeout with
DatabaseUnavailableError saying the database is unreachable (never hang, never a raw
driver error); after the restart the same DbService serves again; every write that
returned success is there; an upsert_many cut by the crash is all there or not at all.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from rel_server import KillablePostgres

from shareddb import (
    DatabaseUnavailableError,
    DbService,
    SessionRecord,
    SessionStorage,
    VectorStorage,
)

pytestmark = [pytest.mark.reliability, pytest.mark.postgres]

TIMEOUT = 2.0  # the DbService's timeout in these tests, seconds
# A failing call may take the timeout plus one last connection attempt that reports
# the reason; anything much longer is a hang.
SLACK = 3.0
OUTAGE = 2 * TIMEOUT + 1.0  # how long the server stays down
DIMENSION = 16
BATCH = 2000  # rows per upsert_many


@dataclass
class Journal:
    """What one worker saw: acknowledged writes, attempted batches, failures and their time."""

    acked: dict[str, Any] = field(default_factory=dict)
    batches: dict[str, list[str]] = field(default_factory=dict)  # name -> ids, all attempted
    acked_batches: set[str] = field(default_factory=set)
    failures: list[tuple[float, float, BaseException]] = field(default_factory=list)
    successes: list[float] = field(default_factory=list)  # when each call returned


def loop(journal: Journal, stop: threading.Event, step: Callable[[int], None]) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        started = time.monotonic()
        try:
            step(n)
        except Exception as e:
            journal.failures.append((started, time.monotonic(), e))
            time.sleep(0.05)
        else:
            journal.successes.append(time.monotonic())


def vector(seed: int) -> np.ndarray[Any, Any]:
    return np.random.default_rng(seed).standard_normal(DIMENSION).astype(np.float32)


def test_killed_postmaster_fails_calls_clearly_then_the_same_service_serves_again(
    killable_pg: KillablePostgres,
) -> None:
    url = killable_pg.fresh_database()
    db = DbService(url, timeout=TIMEOUT, max_size=6)
    db.initialize()
    sessions, vectors = SessionStorage(db), VectorStorage(db)
    stop = threading.Event()
    journals = {name: Journal() for name in ("sessions", "vectors", "batches", "reads")}

    def add_session(n: int) -> None:
        record = sessions.add(SessionRecord(session=f"s{n}", repo_name="r", repo_url="u"))
        journals["sessions"].acked[record.session] = record

    def upsert(n: int) -> None:
        vectors.upsert(f"md#{n}", vector(n))
        journals["vectors"].acked[f"md#{n}"] = vector(n)

    def upsert_many(n: int) -> None:
        ids = [f"gh#{n}-{i}" for i in range(BATCH)]
        journals["batches"].batches[f"b{n}"] = ids
        matrix = np.random.default_rng(n).standard_normal((BATCH, DIMENSION)).astype(np.float32)
        vectors.upsert_many((ids, matrix))
        journals["batches"].acked_batches.add(f"b{n}")

    def read(n: int) -> None:
        sessions.list(limit=5)
        vectors.count()

    steps = {"sessions": add_session, "vectors": upsert, "batches": upsert_many, "reads": read}
    threads = [
        threading.Thread(target=loop, args=(journals[name], stop, step), daemon=True)
        for name, step in steps.items()
    ]
    try:
        for t in threads:
            t.start()
        time.sleep(1.5)
        killed_at = time.monotonic()
        killable_pg.kill()
        time.sleep(OUTAGE)
        killable_pg.restart()
        restarted_at = time.monotonic()
        # Let every worker succeed again, on the same DbService, then stop.
        deadline = restarted_at + 30
        while time.monotonic() < deadline and not all(
            j.successes and j.successes[-1] > restarted_at for j in journals.values()
        ):
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(TIMEOUT + SLACK + 5)
    assert not any(t.is_alive() for t in threads), "a worker hung"

    for name, journal in journals.items():
        assert journal.successes and journal.successes[0] < killed_at, f"{name} never ran"
        assert journal.successes[-1] > restarted_at, f"{name} did not recover after the restart"
        during = [(s, e, err) for s, e, err in journal.failures if s > killed_at]
        assert during, f"{name} saw no failure while the server was down"
        for started, ended, error in journal.failures:
            assert isinstance(error, DatabaseUnavailableError), f"{name}: {error!r}"
            assert "is unreachable" in str(error), f"{name}: {error}"
            assert ended - started <= TIMEOUT + SLACK, f"{name} took {ended - started:.1f} s"
            # Nothing fails once the server is back and the pool has reconnected.
            assert started < restarted_at, f"{name} failed after the restart: {error}"

    # Every acknowledged write is there, exactly as written.
    for name, record in journals["sessions"].acked.items():
        assert sessions.get(name) == record
    for task_id, expected in journals["vectors"].acked.items():
        got = vectors.get(task_id)
        assert got is not None and np.array_equal(got, expected), task_id
    # Each upsert_many is all or nothing, and all when it returned success.
    with db.connection() as conn:
        for batch, ids in journals["batches"].batches.items():
            row = conn.execute(
                "SELECT count(*) FROM task_embeddings WHERE qualified_task_id = ANY(%s)", (ids,)
            ).fetchone()
            present = row[0]
            assert present in (0, BATCH), f"{batch}: {present} of {BATCH} rows"
            if batch in journals["batches"].acked_batches:
                assert present == BATCH, batch
    db.close()
    failures = [f for j in journals.values() for f in j.failures]
    recovered = max(
        min(t for t in j.successes if t > restarted_at) - restarted_at for j in journals.values()
    )
    print(
        f"\nserver kill: outage {restarted_at - killed_at:.1f} s, "
        f"{len(journals['sessions'].acked)} sessions, {len(journals['vectors'].acked)} vectors "
        f"and {len(journals['batches'].acked_batches)} batches of {BATCH} acknowledged and "
        f"found; {len(failures)} calls failed, slowest after "
        f"{max(e - s for s, e, _ in failures):.2f} s (timeout {TIMEOUT} s); "
        f"{len(journals['batches'].batches) - len(journals['batches'].acked_batches)} batches "
        f"cut, none partial; every worker served again {recovered:.2f} s after the restart"
    )


def slow_pairs(
    n: int, started: threading.Event, release: threading.Event
) -> Iterator[tuple[str, np.ndarray[Any, Any]]]:
    """`n` pairs; halfway through it waits, so the transaction is open when the server dies."""
    for i in range(n):
        if i == n // 2:
            started.set()
            release.wait(60)
        yield f"cut#{i}", vector(i)


def test_upsert_many_cut_by_a_crash_leaves_nothing_behind(killable_pg: KillablePostgres) -> None:
    url = killable_pg.fresh_database()
    with DbService(url, timeout=TIMEOUT) as db:
        db.initialize()
        vectors = VectorStorage(db)
        vectors.upsert_many([(f"kept#{i}", vector(i)) for i in range(100)])
        started, release = threading.Event(), threading.Event()
        outcome: list[BaseException | int] = []

        def load() -> None:
            try:
                outcome.append(vectors.upsert_many(slow_pairs(40_000, started, release)))
            except BaseException as e:
                outcome.append(e)

        worker = threading.Thread(target=load, daemon=True)
        worker.start()
        assert started.wait(30)
        time.sleep(0.3)  # the first batches are in the open transaction by now
        killable_pg.kill()
        release.set()
        worker.join(TIMEOUT + SLACK + 5)
        assert not worker.is_alive()
        killable_pg.restart()
        assert len(outcome) == 1 and isinstance(outcome[0], DatabaseUnavailableError), outcome
        # The same service serves again; none of the cut call's rows exist.
        assert vectors.count() == 100
        with db.connection() as conn:
            row = conn.execute(
                "SELECT count(*) FROM task_embeddings WHERE qualified_task_id LIKE 'cut#%%'"
            ).fetchone()
        assert row[0] == 0


def test_calls_during_an_outage_fail_within_the_timeout_and_name_the_target(
    killable_pg: KillablePostgres,
) -> None:
    url = killable_pg.fresh_database()
    with DbService(url, timeout=TIMEOUT) as db:
        db.initialize()
        sessions = SessionStorage(db)
        sessions.add(SessionRecord(session="before", repo_name="r", repo_url="u"))
        killable_pg.kill()
        try:
            for call in (
                lambda: sessions.get("before"),
                lambda: db.initialize(),
                lambda: db.migration_status(),
                lambda: VectorStorage(db).search(vector(1), k=3),
            ):
                started = time.monotonic()
                with pytest.raises(DatabaseUnavailableError) as caught:
                    call()
                assert time.monotonic() - started <= TIMEOUT + SLACK
                message = str(caught.value)
                assert "is unreachable" in message and db.url in message
        finally:
            killable_pg.restart()
        assert sessions.get("before") is not None
