"""A standby told apart: writes and initialize() raise ReadOnlyDatabaseError; the CLI says so."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest
from helpers import run_cli
from psycopg.pq import TransactionStatus
from standby import Standby

from shareddb import (
    DbService,
    ReadOnlyDatabaseError,
    SessionRecord,
    SessionStorage,
    VectorStorage,
)
from shareddb._engines.postgres.standby import asks_recovery, reports_standby

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


def test_servers_before_14_are_asked_whether_they_are_in_recovery(
    replicated: tuple[str, str],
) -> None:
    """What read_only_error() asks where the server reports no in_hot_standby (before 14)."""
    primary, replica = replicated
    for url, in_recovery in ((primary, False), (replica, True)):
        with psycopg.connect(url, autocommit=True) as conn:
            assert reports_standby(conn)  # this server is 18: the question is never needed
            assert asks_recovery(conn) is in_recovery
        with psycopg.connect(url) as conn:  # out of autocommit: the question leaves no transaction
            assert asks_recovery(conn) is in_recovery
            assert conn.info.transaction_status == TransactionStatus.IDLE
            with pytest.raises(psycopg.errors.DivisionByZero):
                conn.execute("SELECT 1 / 0")
            assert asks_recovery(conn) is False  # an aborted transaction answers nothing
            assert conn.info.transaction_status == TransactionStatus.INERROR
