"""A standby told apart: writes and initialize() raise ReadOnlyDatabaseError; the CLI says so."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import run_cli
from standby import Standby

from shareddb import (
    DbService,
    ReadOnlyDatabaseError,
    SessionRecord,
    SessionStorage,
    VectorStorage,
)

pytestmark = pytest.mark.postgres

STANDBY_WORDS = ("is a standby (read-only, in recovery)", "point writes")


def assert_standby_error(error: pytest.ExceptionInfo[ReadOnlyDatabaseError]) -> None:
    message = str(error.value)
    for words in STANDBY_WORDS:
        assert words in message, message
    assert "primary" in message


def test_writes_on_a_standby_raise_read_only_database_error(
    replicated: tuple[str, str], standby_server: Standby
) -> None:
    primary, replica = replicated
    with DbService(primary) as db:
        db.initialize()
        VectorStorage(db).upsert("md#1", np.ones(4))
    standby_server.wait_for(primary)
    with DbService(replica) as db:
        assert db.initialize().up_to_date  # nothing to do: one read, fine on a standby
        vectors = VectorStorage(db)
        sessions = SessionStorage(db)
        assert vectors.count() == 1 and vectors.get("md#1") is not None
        with pytest.raises(ReadOnlyDatabaseError) as error:
            vectors.upsert("md#2", np.ones(4))
        assert_standby_error(error)
        with pytest.raises(ReadOnlyDatabaseError):
            vectors.upsert_many([("md#3", np.ones(4))])
        with pytest.raises(ReadOnlyDatabaseError):
            vectors.delete("md#1")
        with pytest.raises(ReadOnlyDatabaseError):
            sessions.add(SessionRecord(session="s", repo_name="r", repo_url="u"))
        with pytest.raises(ReadOnlyDatabaseError):
            db.execute("DELETE FROM sessions")
        with pytest.raises(ReadOnlyDatabaseError), db.transaction() as conn:
            conn.execute("CREATE TABLE t (x int)")
        assert vectors.count() == 1  # nothing changed, and the service still reads


def test_initialize_with_pending_work_on_a_standby(replicated: tuple[str, str]) -> None:
    _, replica = replicated
    with DbService(replica) as db, pytest.raises(ReadOnlyDatabaseError) as error:
        db.initialize()
    assert_standby_error(error)
    assert "initialize()" in str(error.value)


def test_cli_on_a_standby_says_standby(replicated: tuple[str, str]) -> None:
    _, replica = replicated
    init = run_cli("init", "--url", replica)
    assert init.returncode == 1
    assert "Traceback" not in init.stderr
    assert "standby" in init.stderr and "primary" in init.stderr

    status = run_cli("status", "--url", replica)
    assert "Traceback" not in status.stderr, status.stderr
    assert "role        standby (read-only), replay lag " in status.stdout, status.stdout
    assert "run: shareddb init against the primary" in status.stdout

    doctor = run_cli("doctor", "--url", replica)
    assert "Traceback" not in doctor.stderr, doctor.stderr
    assert "standby (read-only), replay lag " in doctor.stdout, doctor.stdout
    assert "run: shareddb init" not in doctor.stdout
    assert "`shareddb init` against the primary" in doctor.stdout
