"""Eight processes calling initialize() on one fresh database at the same moment."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers import AppMigrations, builtin_files, ledger

from shareddb import DbService

PROCESSES = 8

WORKER = """\
import json, os, sys, time
from shareddb import DbService

url, app_dir, run_dir = sys.argv[1:4]
db = DbService(url, schema_dirs={"app": app_dir})
open(os.path.join(run_dir, f"ready-{os.getpid()}"), "w").close()
go = os.path.join(run_dir, "go")
while not os.path.exists(go):
    time.sleep(0.002)
with db:
    report = db.initialize()
print(json.dumps([[m.namespace, m.name] for m in report.applied]))
"""


@pytest.mark.slow
@pytest.mark.reliability
def test_eight_processes_initialize_one_fresh_database(db_url: str, tmp_path: Path) -> None:
    postgres = db_url.startswith("postgres")
    app = AppMigrations(tmp_path / "app")
    # Run twice, any of these fails: CREATE TABLE (exists) and the primary key (duplicate).
    app.write(
        "0001_once.sql",
        "CREATE TABLE once (id integer PRIMARY KEY);\nINSERT INTO once VALUES (1);\n",
    )
    if postgres:
        app.write("0002_slow.sql", "SELECT pg_sleep(0.2);\n")
    else:
        app.write(
            "0002_slow.sql",
            "CREATE TABLE slow AS WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL "
            "SELECT i + 1 FROM n WHERE i < 200000) SELECT count(*) AS c FROM n;\n",
        )
    app.write("0003_again.sql", "INSERT INTO once VALUES (3);\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)

    procs = [
        subprocess.Popen(
            [sys.executable, str(script), db_url, str(app.folder), str(run_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        for _ in range(PROCESSES)
    ]
    try:
        deadline = time.monotonic() + 120
        while len(list(run_dir.glob("ready-*"))) < PROCESSES:
            assert time.monotonic() < deadline, "workers did not start"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.01)
        (run_dir / "go").touch()
        results = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    failures = [
        (p.returncode, err) for p, (_, err) in zip(procs, results, strict=True) if p.returncode
    ]
    assert failures == []
    applied = Counter(
        (ns, name) for out, _ in results for ns, name in json.loads(out.strip().splitlines()[-1])
    )
    backend = "postgres" if postgres else "sqlite"
    expected = {("shareddb", name) for name in builtin_files(backend)} | {
        ("app", "0001_once.sql"),
        ("app", "0002_slow.sql"),
        ("app", "0003_again.sql"),
    }
    assert set(applied) == expected
    assert all(count == 1 for count in applied.values()), applied
    with DbService(db_url, schema_dirs={"app": app.folder}) as db:
        assert ledger(db) == [(1, "0001_once.sql"), (2, "0002_slow.sql"), (3, "0003_again.sql")]
        with db.connection() as conn:
            assert [r[0] for r in conn.execute("SELECT id FROM once ORDER BY id")] == [1, 3]
        assert [name for _, name in ledger(db, "shareddb")] == builtin_files(backend)
        assert db.initialize().up_to_date
