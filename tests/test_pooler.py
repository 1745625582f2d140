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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg
import pytest
from helpers import (
    AppMigrations,
    builtin_files,
    fresh_database,
    ledger,
    run_bench,
    run_cli,
)
from psycopg.conninfo import conninfo_to_dict

from shareddb import (
    ConfigError,
    DatabaseUnavailableError,
    DbService,
    MigrationThroughPoolerError,
    SessionRecord,
    SessionStorage,
    VectorStorage,
    load_config,
)
from shareddb._admin.doctor import Doctor
from shareddb._core.url import parse_url
from shareddb._engines.postgres.migrate import LOCK_KEY, PostgresMigrationSession
from shareddb._engines.postgres.replicas import ReplicaConnections
from shareddb._migrations.files import discover_all, migration_folders
from shareddb._migrations.runner import apply_pending

pytestmark = pytest.mark.postgres

PGBOUNCER = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
DIMENSION = 16


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


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise AssertionError(f"wrong answer: {what}")


def _round(
    sessions: SessionStorage, vectors: VectorStorage, index: int, n: int, rng: np.random.Generator
) -> list[Callable[[], None]]:
    """One round of a worker's calls: each write, then reads checked against it."""
    name, task = f"w{index}-{n}", f"w{index}#{n}"
    vec = rng.random(DIMENSION, dtype=np.float32)
    pair = rng.random((2, DIMENSION), dtype=np.float32)
    many = [f"{task}-a", f"{task}-b"]
    record = SessionRecord(
        session=name, repo_name=f"repo{index}", repo_url=f"https://x/{name}", task_id=task
    )
    return [
        lambda: _check(sessions.add(record).session == name, "add"),
        lambda: _check(getattr(sessions.get(name), "repo_url", None) == record.repo_url, "get"),
        lambda: vectors.upsert(task, vec),
        lambda: _check(np.array_equal(vectors.get(task), vec), "vectors.get"),
        lambda: _check([r.qualified_task_id for r in vectors.search(vec, k=1)] == [task], "search"),
        lambda: _check(vectors.upsert_many((many, pair)) == 2, "upsert_many"),
        lambda: _check(
            all(np.array_equal(v, pair[i]) for i, v in enumerate(_ordered(vectors, many))),
            "get_many",
        ),
        # Existing ids: through a temporary staging table and MERGE, in one transaction.
        lambda: _check(vectors.upsert_many((many, pair[::-1])) == 2, "upsert_many again"),
        lambda: _check(
            all(np.array_equal(v, pair[1 - i]) for i, v in enumerate(_ordered(vectors, many))),
            "get_many after the update",
        ),
        lambda: _check(sessions.delete(name) is True, "delete"),
        lambda: _check(sessions.get(name) is None, "get after delete"),
        lambda: _check(vectors.delete_many([task, *many]) == 3, "delete_many"),
    ]


def _workload(db: DbService, seconds: float, threads: int = 8) -> Tally:
    """`threads` threads of sessions and vectors calls, every read checked against its write."""
    tally = Tally()
    lock = threading.Lock()
    stop = threading.Event()

    def worker(index: int) -> None:
        sessions, vectors = SessionStorage(db), VectorStorage(db)
        rng = np.random.default_rng(index)
        n = 0
        while not stop.is_set():
            n += 1
            for step in _round(sessions, vectors, index, n, rng):
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


# -- two clients, one statement name ---------------------------------------------------------


def _two_clients(url: str, direct: str, pooler: str | None) -> list[str]:
    """What went wrong when two clients' statements could meet on one server connection.

    Each client first runs its statements six times inside a transaction, both
    transactions open at once: each holds a server connection of its own, where
    psycopg (with prepared statements on) prepares them under the same names
    (``_pg3_0``, ``_pg3_1``). Later autocommitted calls land on either server
    connection, where a name may be the other client's statement.
    """
    problems: list[str] = []
    vec = np.arange(DIMENSION, dtype=np.float32)
    record = SessionRecord(session="victim", repo_name="r", repo_url="https://x/victim")
    with (
        DbService(url, pooler=pooler, max_size=1) as a,  # type: ignore[arg-type]
        DbService(url, pooler=pooler, max_size=1) as b,  # type: ignore[arg-type]
    ):
        sessions, vectors = SessionStorage(a), VectorStorage(b)
        sessions.add(record)
        vectors.upsert("md#victim", vec)
        with a.transaction() as ca, b.transaction() as cb:
            for _ in range(6):
                sessions.get("victim", conn=ca)
                sessions.delete("nobody", conn=ca)
                vectors.get("md#victim", conn=cb)
                vectors.delete("md#nobody", conn=cb)
        calls = [
            ("sessions.get", lambda: getattr(sessions.get("victim"), "session", None) == "victim"),
            ("vectors.get", lambda: np.array_equal(vectors.get("md#victim"), vec)),
        ] * 4 + [("sessions.delete", lambda: sessions.delete("victim") is True)]
        for what, call in calls:
            try:
                if not call():
                    problems.append(f"{what}: wrong answer")
            except Exception as e:
                problems.append(f"{what}: {type(e).__name__}: {e}")
    with DbService(direct) as d:
        if SessionStorage(d).get("victim") is not None:
            problems.append("session 'victim' still there after its delete")
        if not np.array_equal(VectorStorage(d).get("md#victim"), vec):
            problems.append("embedding md#victim changed or gone")
    return problems


def test_two_clients_get_their_own_statements_under_pooler_transaction(
    pooled: str, pg_url: str
) -> None:
    assert _two_clients(pooled, pg_url, "transaction") == []


def test_two_clients_run_each_others_statements_without_it(pooled: str, pg_url: str) -> None:
    """The case above can fail: with prepared statements, a call runs the other client's."""
    problems = _two_clients(pooled, pg_url, None)
    print(problems)
    assert problems


def test_a_replica_behind_a_pooler_the_primary_lacks_prepares_no_statements(
    pooled: str, pg_url: str
) -> None:
    """The primary is direct (no pooler=): each replica connection finds its own pooler.

    5 is psycopg's default threshold, kept on a replica reached directly.
    """
    for url, threshold in ((pooled, None), (pg_url, 5)):
        replica = ReplicaConnections(parse_url(url), max_size=1)
        conn = replica.get()
        assert conn is not None
        try:
            assert conn.prepare_threshold == threshold, url
            for _ in range(8):  # past psycopg's threshold of 5: would be prepared if allowed
                assert conn.execute("SELECT count(*) FROM sessions").fetchone() == (0,)
        finally:
            replica.put(conn)
            replica.clear()


# -- migrations ------------------------------------------------------------------------------

RACER = """\
import json, os, sys, time
from shareddb import DbService

app_dir, run_dir, *pairs = sys.argv[1:]
rounds = [pairs[i:i + 2] for i in range(0, len(pairs), 2)]
open(os.path.join(run_dir, f"ready-{os.getpid()}"), "w").close()
for number, (url, direct_url) in enumerate(rounds):
    go = os.path.join(run_dir, f"go-{number}")
    while not os.path.exists(go):
        time.sleep(0.002)
    db = DbService(url, schema_dirs={"app": app_dir}, pooler="transaction", direct_url=direct_url)
    with db:
        report = db.initialize()
    print(json.dumps([[m.namespace, m.name] for m in report.applied]), flush=True)
    open(os.path.join(run_dir, f"done-{number}-{os.getpid()}"), "w").close()
while not os.path.exists(os.path.join(run_dir, f"go-{len(rounds)}")):
    time.sleep(0.002)  # alive until told: a lock a worker kept would still be held
"""
PROCESSES = 4
ROUNDS = 5


def migration_locks(url: str) -> int:
    """Sessions holding or awaiting the migration lock of `url`'s database."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s "
            "AND objid = %s AND database = (SELECT oid FROM pg_database "
            "WHERE datname = current_database())",
            (LOCK_KEY >> 32, LOCK_KEY & 0xFFFFFFFF),
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.slow
@pytest.mark.reliability
def test_racing_initialize_through_pgbouncer_with_direct_url(
    pg_server_url: str, pgbouncer: Bouncer, tmp_path: Path
) -> None:
    app = AppMigrations(tmp_path / "app")
    app.write(
        "0001_once.sql",
        "CREATE TABLE once (id integer PRIMARY KEY);\nINSERT INTO once VALUES (1);\n",
    )
    app.write("0002_slow.sql", "SELECT pg_sleep(0.2);\n")
    app.write("0003_again.sql", "INSERT INTO once VALUES (3);\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    databases = [fresh_database(pg_server_url) for _ in range(ROUNDS)]
    directs = [next(d) for d in databases]
    pairs = [u for direct in directs for u in (pgbouncer.url(direct), direct)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(app.folder), str(run_dir), *pairs],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        for _ in range(PROCESSES)
    ]
    try:
        deadline = time.monotonic() + 120
        for number in range(ROUNDS + 1):
            wanted = "ready-*" if number == 0 else f"done-{number - 1}-*"
            while len(list(run_dir.glob(wanted))) < PROCESSES:
                assert time.monotonic() < deadline, "workers stalled"
                assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
                time.sleep(0.01)
            if number:  # the round is over and its workers still run: none holds the lock
                assert migration_locks(directs[number - 1]) == 0, number
            (run_dir / f"go-{number}").touch()
        results = [p.communicate(timeout=180) for p in procs]
        failures = [
            (p.returncode, err) for p, (_, err) in zip(procs, results, strict=True) if p.returncode
        ]
        assert failures == []
        expected = {("shareddb", name) for name in builtin_files("postgres")} | {
            ("app", "0001_once.sql"),
            ("app", "0002_slow.sql"),
            ("app", "0003_again.sql"),
        }
        for number, direct in enumerate(directs):
            applied = Counter(
                (ns, name)
                for out, _ in results
                for ns, name in json.loads(out.strip().splitlines()[number])
            )
            assert set(applied) == expected, number
            assert all(count == 1 for count in applied.values()), (number, applied)
            with DbService(direct, schema_dirs={"app": app.folder}) as db:
                assert ledger(db) == [
                    (1, "0001_once.sql"),
                    (2, "0002_slow.sql"),
                    (3, "0003_again.sql"),
                ]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for d in databases:
            d.close()


def test_initialize_refuses_to_migrate_through_the_pooler(pg_url: str, pgbouncer: Bouncer) -> None:
    through = pgbouncer.url(pg_url)
    for pooler in ("transaction", None):
        with (
            DbService(through, pooler=pooler) as db,  # type: ignore[arg-type]
            pytest.raises(MigrationThroughPoolerError, match="direct_url") as refused,
        ):
            db.initialize()
        assert "[db]" in str(refused.value)
        # Configured, it is a transaction pooler; found, it may be a session pooler.
        assert ('pooler="session"' in str(refused.value)) is (pooler is None)
    # Nothing was changed: no ledger, no extension work.
    with DbService(pg_url) as direct:
        assert direct.query_value("SELECT to_regclass('schema_migrations')::text") is None
        direct.initialize()
    # Up to date: one read of the ledger, through the pooler.
    with DbService(through, pooler="transaction") as db:
        assert db.initialize().up_to_date
        assert db.migration_status()


def test_shareddb_init_names_direct_url_then_migrates_over_it(
    pg_url: str, pgbouncer: Bouncer, tmp_path: Path
) -> None:
    file = tmp_path / "config.toml"
    settings = f'[db]\nurl = "{pgbouncer.url(pg_url)}"\npooler = "transaction"\n'
    file.write_text(settings)
    refused = run_cli("init", "--config", str(file))
    assert refused.returncode != 0
    assert "direct_url" in refused.stdout + refused.stderr
    assert "Traceback" not in refused.stdout + refused.stderr
    file.write_text(settings + f'direct_url = "{pg_url}"\n')
    done = run_cli("init", "--config", str(file))
    assert done.returncode == 0, done.stdout + done.stderr
    again = run_cli("init", "--config", str(file))
    assert again.returncode == 0, again.stdout + again.stderr
    with DbService(pg_url) as db:
        assert db.initialize().up_to_date


def test_shareddb_copy_into_the_pooler_migrates_over_the_configured_direct_url(
    pg_url: str, pgbouncer: Bouncer, tmp_path: Path
) -> None:
    source = f"sqlite:///{tmp_path / 'source.db'}"
    with DbService(source) as db:
        db.initialize()
        VectorStorage(db).upsert("md#1", [1.0, 2.0], metadata={"status": "open"})
    through = pgbouncer.url(pg_url)
    file = tmp_path / "config.toml"
    file.write_text(f'[db]\nurl = "{through}"\npooler = "transaction"\ndirect_url = "{pg_url}"\n')
    # The destination is the configuration's url: its pooler and direct_url apply.
    copied = run_cli("copy", "--from", source, "--to", through, env={"SHAREDDB_CONFIG": str(file)})
    assert copied.returncode == 0, copied.stdout + copied.stderr
    with DbService(pg_url) as db:
        record = VectorStorage(db).get_record("md#1")
        assert record is not None and record.metadata == {"status": "open"}


def test_direct_url_that_reaches_the_pooler_is_refused(pg_url: str, pgbouncer: Bouncer) -> None:
    through = pgbouncer.url(pg_url)
    with (
        DbService(through, pooler="transaction", direct_url=through) as db,
        pytest.raises(MigrationThroughPoolerError, match="direct_url reaches the server"),
    ):
        db.initialize()


def test_a_declared_session_pooler_may_migrate(pg_url: str) -> None:
    """pooler="session" lifts the check for the url; on a direct server it changes nothing."""
    with DbService(pg_url, pooler="session") as db:
        assert not db.initialize().up_to_date
        assert db.initialize().up_to_date


def test_the_runner_leaves_no_session_setting_behind(pgbouncer: Bouncer, tmp_path: Path) -> None:
    """Through a pooler's one server connection, the next client finds the server's defaults.

    The runner asks the server to look for its client every second while a file runs:
    for the file's transaction only, and around each statement of a no-transaction
    file. It used to be a session setting, which the pooler's next client inherited.
    """
    namespace = f"leak{uuid.uuid4().hex[:8]}"
    app = AppMigrations(tmp_path / namespace)
    app.write("0001_table.sql", f"CREATE TABLE {namespace} (id integer);\n")
    app.write(
        "0002_index.sql",
        f"-- shareddb:no-transaction\nCREATE INDEX CONCURRENTLY ON {namespace} (id);\n",
    )
    files = discover_all(migration_folders("postgres", {namespace: app.folder}))
    target = parse_url(pgbouncer.single)
    with PostgresMigrationSession.locked(target, 10.0, 10.0) as session:
        applied = apply_pending(session, files)
    assert [m.name for m in applied if m.namespace == namespace] == [
        "0001_table.sql",
        "0002_index.sql",
    ]
    with psycopg.connect(pgbouncer.single, autocommit=True) as conn:
        row = conn.execute("SHOW client_connection_check_interval").fetchone()
    assert row == ("0",)


# -- settings, without PgBouncer -------------------------------------------------------------


@pytest.mark.parametrize(("pooler", "prepared"), [("transaction", False), (None, True)])
def test_pooler_transaction_prepares_no_statement(
    pg_url: str, pooler: str | None, prepared: bool
) -> None:
    """On one pooled connection, repeated calls leave the server no prepared statement."""
    with DbService(pg_url) as db:
        db.initialize()
    with DbService(pg_url, pooler=pooler, max_size=1) as db:  # type: ignore[arg-type]
        vectors, sessions = VectorStorage(db), SessionStorage(db)
        vectors.upsert("md#1", np.ones(DIMENSION, dtype=np.float32))
        for _ in range(8):
            vectors.get("md#1")
            vectors.search(np.ones(DIMENSION, dtype=np.float32), k=1)
            sessions.get("nobody")
        with db.connection() as conn:
            row = conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
    assert row is not None
    assert (row[0] > 0) is prepared


def test_pooler_and_direct_url_from_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "config.toml"
    file.write_text(
        '[db]\nurl = "postgresql://app:pooled-secret@pooler:6432/app"\n'
        'pooler = "transaction"\n'
        'direct_url = "postgresql://app:direct-secret@server:5432/app"\n'
    )
    config = load_config(file)
    assert (config.pooler, config.direct_url) == (
        "transaction",
        "postgresql://app:direct-secret@server:5432/app",
    )
    db = DbService.from_config(config)
    assert (db.pooler, db.direct_url) == ("transaction", "postgresql://app:***@server:5432/app")
    for shown in (repr(config), repr(db)):
        assert "secret" not in shown
        assert "transaction" in shown
    # An overriding SHAREDDB_URL names another database: the file's direct_url is dropped.
    monkeypatch.setenv("SHAREDDB_URL", "postgresql://other@elsewhere/app")
    config = load_config(file)
    assert (config.pooler, config.direct_url) == ("transaction", None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[db]\nurl = "postgresql://h/db"\npooler = "tx"\n', "db.pooler .* is 'tx'"),
        ('[db]\nurl = "postgresql://h/db"\npooler = true\n', "db.pooler .* is True"),
        ('[db]\ndirect_url = "postgresql://h/db"\n', "direct_url .* without db.url"),
        ('[db]\nurl = "postgresql://h/db"\ndirect_url = "sqlite:///x.db"\n', "not a postgresql"),
        ('[db]\nurl = "postgresql://h/db"\ndirect_url = 5\n', "db.direct_url .* must be a string"),
    ],
)
def test_bad_pooler_settings_in_the_file(tmp_path: Path, text: str, message: str) -> None:
    file = tmp_path / "config.toml"
    file.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(file)


@pytest.mark.parametrize(
    ("url", "kwargs", "message"),
    [
        ("postgresql://h/db", {"pooler": "tx"}, "pooler is 'tx'; use 'session', 'transaction'"),
        ("sqlite:///x.db", {"pooler": "transaction"}, "pooler= applies to PostgreSQL only"),
        ("sqlite:///x.db", {"direct_url": "postgresql://h/db"}, "direct_url= applies to Postgre"),
        ("postgresql://h/db", {"direct_url": "sqlite:///x.db"}, "not a postgresql:// url"),
        ("postgresql://h/db", {"direct_url": "mysql://u:pw@h/db"}, "direct_url: .*'mysql://u:\\*"),
    ],
)
def test_bad_pooler_arguments(url: str, kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DbService(url, **kwargs)  # type: ignore[arg-type]


def test_an_unreachable_direct_url_is_named_with_its_password_masked(pg_url: str) -> None:
    direct = "postgresql://app:direct-secret@127.0.0.1:1/app"
    with (
        DbService(pg_url, pooler="transaction", direct_url=direct, timeout=2) as db,
        pytest.raises(DatabaseUnavailableError) as caught,
    ):
        db.initialize()
    assert "127.0.0.1:1" in str(caught.value)
    assert "direct-secret" not in str(caught.value)


# -- shareddb doctor -------------------------------------------------------------------------


def _doctor_pooler_lines(tmp_path: Path, db_lines: str) -> list[tuple[str, str]]:
    file = tmp_path / "config.toml"
    file.write_text(f"[db]\n{db_lines}")
    doctor = Doctor(config_path=str(file), timeout=10)
    doctor.run()
    return [(c.state, c.detail) for c in doctor.checks if c.name == "pooler"]


def test_doctor_tells_a_transaction_pooler_and_checks_the_configuration(
    pooled: str, pg_url: str, tmp_path: Path
) -> None:
    configured = _doctor_pooler_lines(
        tmp_path, f'url = "{pooled}"\npooler = "transaction"\ndirect_url = "{pg_url}"\n'
    )
    assert [state for state, _ in configured] == ["ok", "ok"]
    assert "transaction mode" in configured[0][1]
    assert "reaches the server; migrations run there" in configured[1][1]
    unconfigured = _doctor_pooler_lines(tmp_path, f'url = "{pooled}"\n')
    assert unconfigured[0][0] == "fail"
    assert "transaction mode but no pooler configured" in unconfigured[0][1]
    assert unconfigured[1][0] == "warn"  # no direct_url


def test_doctor_on_a_direct_server_finds_no_pooler(pg_url: str, tmp_path: Path) -> None:
    with DbService(pg_url) as db:
        db.initialize()
    assert _doctor_pooler_lines(tmp_path, f'url = "{pg_url}"\n') == [
        ("ok", "the url reaches the server directly (no pooler configured)")
    ]
    declared = _doctor_pooler_lines(tmp_path, f'url = "{pg_url}"\npooler = "transaction"\n')
    assert [state for state, _ in declared] == ["warn", "warn"]


# -- bench/pooler.py -------------------------------------------------------------------------


@pytest.mark.slow
def test_pooler_bench_runs_every_client_on_the_same_index(
    pg_server_url: str, pgbouncer: Bouncer, tmp_path: Path
) -> None:
    """The bench starts its own PgBouncer; every client answers the same on the same index."""
    options = ["--dataset", "synthetic", "--n", "2000", "--dim", "16", "--queries", "10"]
    run_bench(
        "pooler.py", "--dsn", pg_server_url, *options, "--repeat", "1", "--out", str(tmp_path)
    )
    data = json.loads((tmp_path / "pooler-synthetic-2000x16.json").read_text())
    recall = {r["client"]: r["recall"] for r in data["records"]}
    assert set(recall) == {
        "shareddb via pgbouncer",
        "shareddb direct",
        "shareddb direct, unprepared",
        "direct SQL",
    }
    assert len(set(recall.values())) == 1, recall
    assert all(r["p50_ms"] > 0 for r in data["records"])
