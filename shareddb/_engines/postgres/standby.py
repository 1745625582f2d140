"""Telling a hot standby (or a read-only server) apart, and saying so in our errors.

PostgreSQL 14+ reports ``in_hot_standby`` and ``default_transaction_read_only`` to
every client and updates them on promotion, so a connection knows what it is
connected to without a round trip. A write there fails with SQLSTATE 25006
(read_only_sql_transaction): `read_only_error()` turns that into
ReadOnlyDatabaseError naming the server and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import psycopg

from shareddb._core.types import PgConnection
from shareddb._core.url import DbTarget
from shareddb.errors import ReadOnlyDatabaseError

# What a standby knows of its replay, in one round trip. The lag is 0 while everything
# received is replayed (an idle primary sends nothing, and the last replayed commit's
# age would grow for ever), else the age of the last replayed commit.
STANDBY_STATE: Final = (
    b"SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn(), "
    b"CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 "
    b"ELSE EXTRACT(epoch FROM now() - pg_last_xact_replay_timestamp()) END"
)

WRITES_FIX: Final = "point writes (and initialize()) at the primary's url"


@dataclass(frozen=True)
class StandbyState:
    """What `standby_state()` found: in recovery or not, the replayed LSN and the lag."""

    in_recovery: bool
    replay_lsn: int | None
    lag_seconds: float | None

    def describe(self) -> str:
        """``standby (read-only), replay lag 12 ms`` or ``primary (read-write)``."""
        if not self.in_recovery:
            return "primary (read-write)"
        return f"standby (read-only), replay lag {describe_lag(self.lag_seconds)}"


def describe_lag(seconds: float | None) -> str:
    if seconds is None:
        return "unknown (nothing replayed yet)"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.1f} s"


def parse_lsn(text: str) -> int:
    """``16/B374D848`` as a number that compares like the LSN."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def standby_state(conn: PgConnection) -> StandbyState:
    """Whether `conn`'s server is in recovery, and its replay position and lag."""
    row = conn.execute(STANDBY_STATE).fetchone()
    assert row is not None
    in_recovery, lsn, lag = row
    return StandbyState(
        in_recovery=bool(in_recovery),
        replay_lsn=None if lsn is None else parse_lsn(str(lsn)),
        lag_seconds=None if lag is None else max(float(lag), 0.0),
    )


def is_hot_standby(conn: PgConnection) -> bool:
    """Whether the server said it is a hot standby (free: a reported parameter)."""
    return conn.info.parameter_status("in_hot_standby") == "on"


def left_recovery(conn: PgConnection) -> bool:
    """Whether the server said it is not (or no longer) a hot standby; free, as above.

    False on servers before PostgreSQL 14, which don't report it: checks tell there.
    """
    return conn.info.parameter_status("in_hot_standby") == "off"


def read_only_error(
    target: DbTarget, conn: PgConnection, error: BaseException
) -> ReadOnlyDatabaseError | None:
    """ReadOnlyDatabaseError for a write a standby or read-only server refused, else None.

    A transaction the caller made READ ONLY on a read-write server is the caller's
    business: its error passes through unchanged.
    """
    if not isinstance(error, psycopg.errors.ReadOnlySqlTransaction):
        return None
    reason = " ".join(str(error).split())
    if is_hot_standby(conn):
        return standby_refuses(target, f"it refused a write ({reason})")
    if conn.info.parameter_status("default_transaction_read_only") == "on":
        return ReadOnlyDatabaseError(
            f"database {target.masked} is read-only (default_transaction_read_only is on): "
            f"it refused a write ({reason})",
            fix=f"{WRITES_FIX}, or turn default_transaction_read_only off there",
        )
    return None


def standby_refuses(target: DbTarget, what: str) -> ReadOnlyDatabaseError:
    return ReadOnlyDatabaseError(
        f"database {target.masked} is a standby (read-only, in recovery): {what}",
        fix=WRITES_FIX,
    )
