"""One DbService shared by two domains: atomic units of work, one shared instance, threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from async_twin import both_apis  # noqa: F401 - the `db` fixture: each test on both APIs

from shareddb import (
    DbService,
    InvalidEmbeddingError,
    SessionExistsError,
    SessionRecord,
    SessionStorage,
    VectorStorage,
    close_shared_dbs,
    get_shared_db,
)

DIM = 16
Vector = npt.NDArray[np.float32]


def vector(seed: int) -> Vector:
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)


def record(name: str, **fields: Any) -> SessionRecord:
    values: dict[str, Any] = {"repo_name": "shareddb", "repo_url": "https://x.test/shareddb"}
    values.update(fields)
    return SessionRecord(session=name, **values)


def stored_session_names(db: DbService) -> set[str]:
    with db.connection() as conn:
        return {row[0] for row in conn.execute("SELECT session FROM sessions")}


def stored_embedding_ids(db: DbService) -> set[str]:
    with db.connection() as conn:
        return {row[0] for row in conn.execute("SELECT qualified_task_id FROM task_embeddings")}


# What two separate modules of one application do: each asks for the shared service.


def sessions_code() -> tuple[DbService, SessionStorage]:
    db = get_shared_db()
    return db, SessionStorage(db)


def embeddings_code() -> tuple[DbService, VectorStorage]:
    db = get_shared_db()
    return db, VectorStorage(db)


@pytest.fixture
def shared_url(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """SHAREDDB_URL points get_shared_db() at the test database; shared services closed after."""
    monkeypatch.setenv("SHAREDDB_URL", db_url)
    close_shared_dbs()
    yield db_url
    close_shared_dbs()


# -- one transaction, two domains --------------------------------------------------------


def test_a_transaction_across_sessions_and_embeddings_commits_both(db: DbService) -> None:
    sessions, vectors = SessionStorage(db), VectorStorage(db)
    embedding = vector(253)
    with db.transaction() as conn:
        added = sessions.add(record("fix-253", task_id="md#253"), conn=conn)
        vectors.upsert("md#253", embedding, conn=conn)
        # Both writes are visible inside the transaction that made them.
        assert sessions.get_by_task("md#253", conn=conn) == added
        assert vectors.count(conn=conn) == 1
    assert sessions.get("fix-253") == added
    stored = vectors.get("md#253")
    assert stored is not None
    np.testing.assert_array_equal(stored, embedding)


def test_an_error_inside_a_cross_domain_transaction_lands_neither_write(db: DbService) -> None:
    sessions, vectors = SessionStorage(db), VectorStorage(db)
    before = sessions.add(record("existing", branch="main", task_id="md#1"))
    old = vector(1)
    vectors.upsert("md#1", old)

    with pytest.raises(RuntimeError, match="fail after both writes"), db.transaction() as conn:
        sessions.add(record("fix-253", task_id="md#253"), conn=conn)
        vectors.upsert("md#253", vector(253), conn=conn)
        sessions.update("existing", branch="changed", conn=conn)
        vectors.upsert("md#1", vector(2), conn=conn)
        assert vectors.delete("md#1", conn=conn) is True
        raise RuntimeError("fail after both writes")

    assert sessions.get("fix-253") is None
    assert vectors.get("md#253") is None
    assert sessions.get("existing") == before
    kept = vectors.get("md#1")
    assert kept is not None
    np.testing.assert_array_equal(kept, old)
    assert stored_session_names(db) == {"existing"}
    assert stored_embedding_ids(db) == {"md#1"}
    assert vectors.count() == 1


def test_a_refused_embedding_rolls_back_the_session_added_before_it(db: DbService) -> None:
    sessions, vectors = SessionStorage(db), VectorStorage(db)
    bad = np.full(DIM, np.nan, dtype=np.float32)
    with pytest.raises(InvalidEmbeddingError), db.transaction() as conn:
        sessions.add(record("fix-253", task_id="md#253"), conn=conn)
        vectors.upsert("md#253", bad, conn=conn)
    assert stored_session_names(db) == set()
    assert stored_embedding_ids(db) == set()


def test_a_refused_session_rolls_back_the_embedding_stored_before_it(db: DbService) -> None:
    sessions, vectors = SessionStorage(db), VectorStorage(db)
    sessions.add(record("taken"))
    with pytest.raises(SessionExistsError, match="session 'taken'"), db.transaction() as conn:
        vectors.upsert("md#253", vector(253), conn=conn)
        sessions.add(record("taken", task_id="md#253"), conn=conn)
    assert vectors.get("md#253") is None
    assert vectors.count() == 0
    assert stored_session_names(db) == {"taken"}


# -- one shared service ------------------------------------------------------------------


def wait_until_pool_is_idle(db: DbService) -> dict[str, int]:
    """The pool's stats once every connection is back (or as they are after 10 s)."""
    pool: Any = db.get_sql()
    stats: dict[str, int] = pool.get_stats()
    for _ in range(100):
        if stats["pool_available"] == stats["pool_size"] and not stats["requests_waiting"]:
            break
        time.sleep(0.1)
        stats = pool.get_stats()
    return stats


def pg_backends_of_this_database(db: DbService) -> int:
    """Server processes connected to the test database, besides the one asking."""
    with db.connection() as conn:
        count: int = conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'"
        ).fetchone()[0]
    return count + 1  # the asking connection belongs to the pool too


def backends_and_pool_size(db: DbService) -> tuple[int, int]:
    """Server connections to the database and the pool's size, once they agree (10 s at most).

    A connection closed a moment ago (initialize()'s own) may linger in
    pg_stat_activity while its server process exits, hence the wait.
    """
    for _ in range(100):
        size = wait_until_pool_is_idle(db)["pool_size"]
        backends = pg_backends_of_this_database(db)
        if backends == size:
            break
        time.sleep(0.1)
    return backends, size


def test_sessions_and_embeddings_code_get_one_shared_service_and_one_pool(
    shared_url: str,
) -> None:
    callers = 8
    barrier = threading.Barrier(callers)
    services: list[DbService] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def call(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            if index % 2:
                db, sessions = sessions_code()
                sessions.add(record(f"from-thread-{index}"))
            else:
                db, vectors = embeddings_code()
                vectors.upsert(f"md#{index}", vector(index))
            with lock:
                services.append(db)
        except BaseException as e:  # reported below
            with lock:
                errors.append(e)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert len(services) == callers
    shared = services[0]
    assert all(db is shared for db in services)
    assert sessions_code()[0] is shared and embeddings_code()[0] is shared
    assert shared.get_sql() is get_shared_db().get_sql()  # one pool / one sqlite3 connection

    # Both domains' writes went to the one database.
    assert len(stored_session_names(shared)) == callers // 2
    assert len(stored_embedding_ids(shared)) == callers // 2

    if shared.get_backend_type() == "postgres":
        # Every server connection to the database is one of this pool's: no second pool.
        backends, pool_size = backends_and_pool_size(shared)
        assert backends == pool_size
        assert 1 <= pool_size <= shared.get_sql().max_size  # type: ignore[union-attr]


def test_closing_shared_services_makes_the_next_call_open_a_new_one(shared_url: str) -> None:
    first, sessions = sessions_code()
    sessions.add(record("before-close"))
    close_shared_dbs()
    second, sessions_again = sessions_code()
    assert second is not first
    assert embeddings_code()[0] is second
    assert sessions_again.get("before-close") is not None


# -- many threads, one service -----------------------------------------------------------


class Abort(Exception):
    """Raised inside a transaction to roll it back on purpose."""


@dataclass
class Ledger:
    """What one worker thread wrote, as it believes it stands now."""

    sessions: dict[str, str | None] = field(default_factory=dict)  # name -> branch
    vectors: dict[str, Vector] = field(default_factory=dict)  # task id -> embedding
    rolled_back: set[str] = field(default_factory=set)  # session names == task ids' stems
    session_adds: int = 0
    session_deletes: int = 0
    vector_inserts: int = 0
    vector_deletes: int = 0
    operations: int = 0


def mixed_work(index: int, deadline: float, ledger: Ledger) -> None:
    """Sessions and embeddings through one shared service, alone and in joint transactions."""
    db, sessions = sessions_code()
    same_db, vectors = embeddings_code()
    assert same_db is db
    rng = np.random.default_rng(index)
    live: list[str] = []  # this thread's committed session names, oldest first
    i = 0
    while time.monotonic() < deadline or i < 10:
        name, task = f"w{index}-{i}", f"w{index}#{i}"
        embedding = rng.standard_normal(DIM).astype(np.float32)
        step = i % 5
        if step == 0:  # a unit of work across both domains
            with db.transaction() as conn:
                sessions.add(record(name, repo_name=f"repo{index}", task_id=task), conn=conn)
                vectors.upsert(task, embedding, conn=conn)
            ledger.sessions[name] = None
            ledger.vectors[task] = embedding
            ledger.session_adds += 1
            ledger.vector_inserts += 1
            live.append(name)
        elif step == 1:  # the same, rolled back on purpose
            try:
                with db.transaction() as conn:
                    sessions.add(record(name, repo_name=f"repo{index}", task_id=task), conn=conn)
                    vectors.upsert(task, embedding, conn=conn)
                    raise Abort
            except Abort:
                ledger.rolled_back.add(name)
        elif step == 2 and live:  # each domain on its own: change the newest pair
            target = live[-1]
            target_task = target.replace("-", "#")
            branch = f"b{i}"
            assert sessions.update(target, branch=branch).branch == branch
            vectors.upsert(target_task, embedding)
            ledger.sessions[target] = branch
            ledger.vectors[target_task] = embedding
        elif step == 3 and live:  # reads see this thread's own writes
            target = live[-1]
            got = sessions.get(target)
            assert got is not None and got.branch == ledger.sessions[target]
            newest = sessions.list(repo_name=f"repo{index}", limit=1)
            assert [r.session for r in newest] == [live[-1]]
            stored = vectors.get(target.replace("-", "#"))
            assert stored is not None
            np.testing.assert_array_equal(stored, ledger.vectors[target.replace("-", "#")])
            assert vectors.count() >= len(live)
        elif step == 4 and len(live) > 2:  # delete the oldest pair, in one transaction
            target = live.pop(0)
            target_task = target.replace("-", "#")
            with db.transaction() as conn:
                assert sessions.delete(target, conn=conn) is True
                assert vectors.delete(target_task, conn=conn) is True
            del ledger.sessions[target]
            del ledger.vectors[target_task]
            ledger.session_deletes += 1
            ledger.vector_deletes += 1
        i += 1
    ledger.operations = i


def sqlite_lock_is_free(db: DbService) -> bool:
    """Whether a thread that never used the service could take the connection lock now."""
    free: list[bool] = []

    def probe() -> None:
        # The connection is held for the length of a transaction: a leak blocks here.
        with db.transaction():
            free.append(True)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout=5)
    return free == [True]


@pytest.mark.reliability
def test_four_threads_mixing_sessions_and_embeddings_lose_nothing_and_leak_nothing(
    shared_url: str,
) -> None:
    threads = 4
    ledgers = [Ledger() for _ in range(threads)]
    errors: list[BaseException] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 3.0

    def run(index: int) -> None:
        try:
            mixed_work(index, deadline, ledgers[index])
        except BaseException as e:  # reported below
            with lock:
                errors.append(e)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not any(w.is_alive() for w in workers)
    assert not errors, errors

    db = get_shared_db()
    expected_sessions = {k: v for ledger in ledgers for k, v in ledger.sessions.items()}
    expected_vectors = {k: v for ledger in ledgers for k, v in ledger.vectors.items()}
    rolled_back = set().union(*(ledger.rolled_back for ledger in ledgers))
    assert all(ledger.operations >= 10 for ledger in ledgers)

    # No lost write: every committed write is there, and nothing else.
    with db.connection() as conn:
        rows = dict(conn.execute("SELECT session, branch FROM sessions").fetchall())
    assert rows == expected_sessions
    adds = sum(ledger.session_adds for ledger in ledgers)
    deletes = sum(ledger.session_deletes for ledger in ledgers)
    assert len(rows) == adds - deletes
    inserts = sum(ledger.vector_inserts for ledger in ledgers)
    removed = sum(ledger.vector_deletes for ledger in ledgers)
    vectors = VectorStorage(db)
    assert stored_embedding_ids(db) == set(expected_vectors)
    assert vectors.count() == inserts - removed == len(expected_vectors)
    for task, embedding in expected_vectors.items():
        stored = vectors.get(task)
        assert stored is not None
        np.testing.assert_array_equal(stored, embedding)
    # Rolled-back units of work left nothing in either domain.
    assert rolled_back and not rolled_back & set(rows)
    assert not {name.replace("-", "#") for name in rolled_back} & stored_embedding_ids(db)

    # No leaked connection.
    if db.get_backend_type() == "postgres":
        stats = wait_until_pool_is_idle(db)
        assert stats["pool_available"] == stats["pool_size"]
        assert stats["requests_waiting"] == 0
        backends, pool_size = backends_and_pool_size(db)
        assert backends == pool_size
    else:
        connection: Any = db.get_sql()
        assert connection.in_transaction is False
        assert sqlite_lock_is_free(db)
