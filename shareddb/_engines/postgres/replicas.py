"""Read replicas: connections to each standby, and reads run where `Routing` decides.

`ReplicaSet.read(work, on_primary)` runs `work(conn)` on a replica connection, or
hands it to `on_primary` when no replica may serve it. A replica that can't be
reached, breaks during the read, conflicts with its recovery (SQLSTATE 40001) or
turns out to be promoted is skipped within the same call: the read runs again on
the next candidate and, in the end, on the primary, so the caller sees no error
while the primary is up. Reads are safe to run twice; writes never come here.

Each replica keeps a small list of idle connections rather than a psycopg pool:
a pool reconnects in the background and makes a caller wait for it, where a
replica that is down should cost one failed connection attempt per backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Final, TypeVar

import psycopg
from psycopg.pq import TransactionStatus

from shareddb._core.types import PgConnection, Pooler
from shareddb._core.url import DbTarget
from shareddb._engines.postgres.connect import connect, register_types
from shareddb._engines.postgres.replica_routing import Attempt, ReplicaHealth, Routing
from shareddb._engines.postgres.standby import left_recovery, standby_state
from shareddb.errors import DatabaseUnavailableError

logger = logging.getLogger("shareddb.replicas")

T = TypeVar("T")

# Seconds a connection attempt to a replica may take: the primary can serve the read.
CONNECT_TIMEOUT: Final = 2.0
# Errors of a standby's recovery (a query cancelled by replay): the primary has no such
# conflict, so the read runs there.
_RECOVERY_CONFLICTS: Final = frozenset({"40001", "40P01"})
# A table, column, type or function the replica has not replayed yet (made by another
# process, or read without read-your-writes): the primary's answer, or error, decides.
_NOT_REPLAYED_YET: Final = frozenset({"42P01", "42703", "42704", "42883"})
# An attribute on replica connections made before pgvector's types existed there.
_NO_VECTOR_TYPES: Final = "_shareddb_no_vector_types"


class ReplicaConnections:
    """The connections of one replica, at most `max_size`, made on demand (no threads)."""

    def __init__(self, target: DbTarget, max_size: int, pooler: Pooler | None = None) -> None:
        self.target = target
        self._pooler = pooler  # replicas behind the same kind of pooler as the primary
        self._idle: list[PgConnection] = []
        self._max_size = max_size
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_size)

    def get(self) -> PgConnection | None:
        """An idle connection, or a new one; None when all are in use.

        DatabaseUnavailableError when the replica can't be reached.
        """
        if not self._slots.acquire(blocking=False):
            return None  # the primary's pool, which waits its turn, serves this read
        try:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is not None and not (conn.closed or conn.broken):
                return conn
            return self._connect()
        except BaseException:
            self._slots.release()
            raise

    def _connect(self) -> PgConnection:
        conn = connect(self.target, CONNECT_TIMEOUT, autocommit=True, pooler=self._pooler)
        try:
            if not register_types(conn):
                setattr(conn, _NO_VECTOR_TYPES, True)  # replaced once it is given back
        except psycopg.Error as e:
            conn.close()
            raise DatabaseUnavailableError(str(e)) from e
        return conn

    def put(self, conn: PgConnection) -> None:
        """Keep `conn` for the next read, or close it (broken, busy, made too early)."""
        try:
            reusable = (
                not conn.broken
                and conn.info.transaction_status == TransactionStatus.IDLE
                and not getattr(conn, _NO_VECTOR_TYPES, False)
            )
            if reusable:
                with self._lock:
                    self._idle.append(conn)
                return
            conn.close()
        finally:
            self._slots.release()

    def clear(self) -> None:
        """Close the idle connections (the replica went away, or the service closes)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def forget(self) -> list[PgConnection]:
        """Let go of the idle connections without closing them (after fork())."""
        idle, self._idle = self._idle, []
        # The parent's threads may have held these at fork(): the child starts afresh.
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self._max_size)
        return idle


class _Skip(Exception):
    """This replica can't serve the read now: try the next candidate."""


class ReplicaSet:
    """One service's replicas: their connections and the routing of its reads."""

    def __init__(
        self,
        targets: Sequence[DbTarget],
        *,
        max_size: int,
        max_lag: float,
        read_your_writes: bool,
        pooler: Pooler | None = None,
    ) -> None:
        self.routing = Routing(
            [t.masked for t in targets], max_lag=max_lag, read_your_writes=read_your_writes
        )
        self._connections = [ReplicaConnections(t, max_size, pooler) for t in targets]

    def read(self, work: Callable[[PgConnection], T], on_primary: Callable[[], T]) -> T:
        """`work` on a replica that may serve it, else `on_primary()`."""
        for attempt in self.routing.plan(time.monotonic()):
            try:
                return self._run(attempt, work)
            except _Skip:
                continue
        return on_primary()

    @contextmanager
    def held(self) -> Iterator[PgConnection | None]:
        """A replica connection that may serve reads now, held for a stream; None: none may.

        Only the choice fails over: a replica lost while the stream runs raises.
        """
        for attempt in self.routing.plan(time.monotonic()):
            try:
                conn = self._ready(attempt)
            except _Skip:
                continue
            replica = self._connections[attempt.index]
            try:
                yield conn
            except psycopg.OperationalError as e:
                if conn.broken:
                    self._failed(attempt.index, " ".join(str(e).split()))
                raise
            finally:
                replica.put(conn)
            return
        yield None

    def _ready(self, attempt: Attempt) -> PgConnection:
        """A connection to the attempt's replica once it is known to serve reads, or _Skip."""
        index = attempt.index
        replica = self._connections[index]
        try:
            conn = replica.get()
        except DatabaseUnavailableError as e:
            self._failed(index, str(e))
            raise _Skip from None
        if conn is None:
            raise _Skip
        try:
            if left_recovery(conn):
                self._promoted(index)
            if attempt.check:
                self._check(index, conn)
        except psycopg.Error as e:  # the check itself failed: the replica can't serve now
            replica.put(conn)
            self._failed(index, " ".join(str(e).split()))
            raise _Skip from None
        except BaseException:
            replica.put(conn)
            raise
        return conn

    def _run(self, attempt: Attempt, work: Callable[[PgConnection], T]) -> T:
        index = attempt.index
        replica = self._connections[index]
        conn = self._ready(attempt)
        try:
            result = work(conn)
            if left_recovery(conn):  # promoted while it answered: the primary answers
                self._promoted(index)
            return result
        except psycopg.OperationalError as e:
            if conn.broken:
                self._failed(index, " ".join(str(e).split()))
                raise _Skip from None
            if e.sqlstate in _RECOVERY_CONFLICTS:
                logger.info("read on replica %s cancelled by its recovery", replica.target.masked)
                raise _Skip from None
            raise
        except psycopg.ProgrammingError as e:
            if e.sqlstate in _NOT_REPLAYED_YET:
                raise _Skip from None
            raise
        finally:
            replica.put(conn)

    def _check(self, index: int, conn: PgConnection) -> None:
        state = standby_state(conn)
        self.routing.checked(
            index,
            time.monotonic(),
            in_recovery=state.in_recovery,
            replay_lsn=state.replay_lsn,
            lag_seconds=state.lag_seconds,
        )
        if not self.routing.usable(index):
            raise _Skip

    def _failed(self, index: int, reason: str) -> None:
        replica = self._connections[index]
        reason = replica.target.scrub(reason)
        logger.warning("replica %s skipped: %s", replica.target.masked, reason)
        self.routing.failed(index, time.monotonic(), reason)
        replica.clear()

    def _promoted(self, index: int) -> None:
        replica = self._connections[index]
        logger.warning("replica %s is no longer a standby: skipped", replica.target.masked)
        self.routing.promoted(index, time.monotonic())
        raise _Skip

    def health(self) -> list[ReplicaHealth]:
        """Check every replica now (one round trip each) and say what is known of it."""
        for index, replica in enumerate(self._connections):
            try:
                conn = replica.get()
            except DatabaseUnavailableError as e:
                self._failed(index, str(e))
                continue
            if conn is None:
                continue  # busy serving reads: what is known stands
            try:
                self._check(index, conn)
            except _Skip:
                pass
            except psycopg.Error as e:
                self._failed(index, " ".join(str(e).split()))
            finally:
                replica.put(conn)
        return self.routing.snapshot()

    def close(self) -> None:
        for replica in self._connections:
            replica.clear()

    def forget(self) -> list[PgConnection]:
        return [conn for replica in self._connections for conn in replica.forget()]
