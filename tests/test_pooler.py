"""Behind PgBouncer in transaction mode (Debian's 1.18: no prepared statement support).

A session-scoped PgBouncer listens on 127.0.0.1 in front of the test server: every
database of the server is reached through it by name, and the database ``single``
through one server connection only, so that every client shares it. The tests skip
without pgbouncer installed, and fail instead in CI.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg
import pytest
from helpers import AppMigrations, builtin_files, fresh_database, ledger
from psycopg.conninfo import conninfo_to_dict

from shareddb import (
    ConfigError,
    DbService,
    MigrationThroughPoolerError,
    SessionRecord,
    SessionStorage,
    VectorStorage,
    load_config,
)
from shareddb._core.url import parse_url
from shareddb._engines.postgres.migrate import LOCK_KEY, PostgresMigrationSession
from shareddb._migrations.files import discover_all, migration_folders
from shareddb._migrations.runner import apply_pending

pytestmark = pytest.mark.postgres

PGBOUNCER = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
DIMENSION = 16
ADVISORY_LOCKS = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s AND objid = %s"
)


@dataclass(frozen=True)
class Bouncer:
    """A running PgBouncer: the URLs that reach the test server's databases through it."""

    port: int
    user: str
    single_direct: str  # the database behind ``single``, reached directly

    def url(self, direct_url: str) -> str:
        """`direct_url`'s database, through PgBouncer."""
        dbname = conninfo_to_dict(direct_url)["dbname"]
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    @property
    def single(self) -> str:
        """A database that PgBouncer serves through one server connection."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/single"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as(host: str) -> str | None:
    """The user PgBouncer switches to when started as root (it refuses to run as root).

    It must reach the server's unix socket: the owner of its folder, or anyone for TCP.
    """
    if os.geteuid() != 0:
        return None
    if host.startswith("/"):
        return pwd.getpwuid(os.stat(host).st_uid).pw_name
    return "nobody"


@pytest.fixture(scope="session")
def pgbouncer(pg_server_url: str) -> Iterator[Bouncer]:
    if PGBOUNCER is None:
        message = "pgbouncer is not installed (apt-get install pgbouncer)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    params = conninfo_to_dict(pg_server_url)
    host = str(params.get("host") or "localhost")
    server = f"host={host} port={params.get('port') or 5432}"
    if params.get("password"):
        server += f" password={params['password']}"
    user = str(params.get("user") or "postgres")
    single_db = fresh_database(pg_server_url)
    single_direct = next(single_db)
    folder = Path(tempfile.mkdtemp(prefix="shareddb-pgbouncer-"))
    run_as = _run_as(host)
    if run_as is not None:
        os.chown(folder, pwd.getpwnam(run_as).pw_uid, -1)
    port = _free_port()
    (folder / "users.txt").write_text(f'"{user}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        f"""[databases]
single = {server} dbname={conninfo_to_dict(single_direct)["dbname"]} pool_size=1
* = {server}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {folder}/users.txt
pool_mode = transaction
default_pool_size = 4
max_client_conn = 500
server_connect_timeout = 5
query_wait_timeout = 60
logfile = {folder}/pgbouncer.log
pidfile = {folder}/pgbouncer.pid
"""
    )
    command = [PGBOUNCER, *(["-u", run_as] if run_as else []), str(folder / "pgbouncer.ini")]
    output = (folder / "output.txt").open("wb")
    process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    bouncer = Bouncer(port, user, single_direct)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                psycopg.connect(bouncer.single, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if process.poll() is not None or time.monotonic() > deadline:
                    said = (folder / "output.txt").read_text(errors="replace")
                    pytest.fail(f"pgbouncer did not start: {said}")
                time.sleep(0.1)
        yield bouncer
    finally:
        process.terminate()
        process.wait(timeout=10)
        output.close()
        single_db.close()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def pooled(pg_url: str, pgbouncer: Bouncer) -> str:
    """A fresh, initialized database (migrated directly), through PgBouncer."""
    with DbService(pg_url) as db:
        db.initialize()
    return pgbouncer.url(pg_url)


# -- the mixed workload ----------------------------------------------------------------------


@dataclass
class Tally:
    calls: int = 0
    errors: list[str] | None = None

    def __post_init__(self) -> None:
        self.errors = []


def _workload(db: DbService, seconds: float, threads: int = 8) -> Tally:
    """`threads` threads of sessions and vectors calls, every read checked against its write."""
    tally = Tally()
    lock = threading.Lock()
    stop = threading.Event()

    def check(ok: bool, what: str) -> None:
        if not ok:
            raise AssertionError(f"wrong answer: {what}")

    def worker(index: int) -> None:
        sessions, vectors = SessionStorage(db), VectorStorage(db)
        rng = np.random.default_rng(index)
        n = 0
        while not stop.is_set():
            n += 1
            name, task = f"w{index}-{n}", f"w{index}#{n}"
            vec = rng.random(DIMENSION, dtype=np.float32)
            pair = rng.random((2, DIMENSION), dtype=np.float32)
            many = [f"{task}-a", f"{task}-b"]
            record = SessionRecord(
                session=name, repo_name=f"repo{index}", repo_url=f"https://x/{name}", task_id=task
            )
            steps = [
                lambda: check(sessions.add(record).session == name, "add"),
                lambda: check(
                    getattr(sessions.get(name), "repo_url", None) == record.repo_url, "get"
                ),
                lambda: vectors.upsert(task, vec),
                lambda: check(np.array_equal(vectors.get(task), vec), "vectors.get"),
                lambda: check(
                    [r.qualified_task_id for r in vectors.search(vec, k=1)] == [task], "search"
                ),
                lambda: check(vectors.upsert_many((many, pair)) == 2, "upsert_many"),
                lambda: check(
                    all(np.array_equal(v, pair[i]) for i, v in enumerate(_ordered(vectors, many))),
                    "get_many",
                ),
                lambda: check(sessions.delete(name) is True, "delete"),
                lambda: check(sessions.get(name) is None, "get after delete"),
                lambda: check(vectors.delete_many([task, *many]) == 3, "delete_many"),
            ]
            for step in steps:
                try:
                    step()
                    error = None
                except Exception as e:
                    error = f"{type(e).__name__}: {e}"
                with lock:
                    tally.calls += 1
                    if error is not None:
                        assert tally.errors is not None
                        tally.errors.append(error)

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join(timeout=60)
    return tally


def _ordered(vectors: VectorStorage, ids: list[str]) -> list[np.ndarray]:
    found = vectors.get_many(ids)
    return [found[i] for i in ids] if set(found) == set(ids) else []


@pytest.mark.slow
def test_mixed_workload_through_pgbouncer_has_no_error(pooled: str) -> None:
    with DbService(pooled, pooler="transaction", max_size=8) as db:
        tally = _workload(db, seconds=8)
    print(f"through PgBouncer, pooler='transaction': {tally.calls} calls, 0 errors")
    assert tally.errors == []
    assert tally.calls > 500


@pytest.mark.slow
def test_the_same_workload_fails_without_pooler_transaction(pooled: str) -> None:
    """The workload can fail: with prepared statements on, it does, as in issue 13."""
    with DbService(pooled, max_size=8) as db:
        tally = _workload(db, seconds=4)
    assert tally.errors, f"{tally.calls} calls without an error"
    assert tally.errors is not None
    kinds = Counter(e.split(":")[0] for e in tally.errors)
    print(f"through PgBouncer, no pooler=: {tally.calls} calls, {len(tally.errors)} errors {kinds}")
