"""Where a read goes: which replica, whether to check it first, or the primary. No I/O.

The decisions of `shareddb._engines.postgres.replicas` (which does the I/O),
kept apart so that an async twin can make the same ones. `Routing` holds what
is known of each replica and the service's read-your-writes mark; every method
is short and takes the current time, so it is cheap to call under its lock and
easy to test with made-up clocks.

A replica is used for a read when it was last seen in recovery, at most
`max_lag` seconds behind, and — with read-your-writes — having replayed the
primary's WAL up to the end of this service's last write (`required_lsn`).
What is known goes stale: a replica is checked again (one round trip) every
`HEALTH_INTERVAL` seconds, and one that has not replayed far enough yet is asked
again at most every `LSN_RECHECK` seconds (reads go to the primary meanwhile).
A replica that failed, or was promoted, is skipped until its backoff ends.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

# Seconds between checks of a replica that is in use: its lag and its role.
HEALTH_INTERVAL: Final = 1.0
# Seconds between asking a replica that is behind this service's writes how far it is.
LSN_RECHECK: Final = 0.005
# A failed or promoted replica is tried again after this many seconds, doubling per
# failure up to BACKOFF_MAX.
BACKOFF_START: Final = 0.5
BACKOFF_MAX: Final = 30.0

ReplicaState = Literal["unknown", "healthy", "lagging", "down", "promoted"]


@dataclass
class ReplicaHealth:
    """What is known of one replica (for `shareddb status`, and for routing)."""

    name: str
    state: ReplicaState = "unknown"
    replay_lsn: int = 0
    lag_seconds: float | None = None
    checked_at: float = float("-inf")
    failures: int = 0
    retry_at: float = 0.0
    reason: str | None = None


@dataclass(frozen=True)
class Attempt:
    """Try replica `index`; `check` first when what is known of it is too old."""

    index: int
    check: bool


class Routing:
    """The routing state of one service's replicas; thread-safe."""

    def __init__(
        self, names: Sequence[str], *, max_lag: float, read_your_writes: bool = True
    ) -> None:
        self.replicas = [ReplicaHealth(name) for name in names]
        self.max_lag = max_lag
        self.read_your_writes = read_your_writes
        # The end of this service's last committed write on the primary.
        self.required_lsn = 0
        # Writes whose end could not be learnt (counted): until the primary's WAL end
        # is read again, no replica is known to have them.
        self.lost_writes = 0
        self._next = 0  # round robin among usable replicas
        self._lock = threading.Lock()

    # -- decisions -------------------------------------------------------------------

    def plan(self, now: float) -> list[Attempt]:
        """The replicas to try for a read, in order; the primary after them."""
        with self._lock:
            count = len(self.replicas)
            start = self._next
            self._next = (start + 1) % count if count else 0
            attempts: list[Attempt] = []
            for offset in range(count):
                index = (start + offset) % count
                check = self._needs_check(self.replicas[index], now)
                if check is not None:
                    attempts.append(Attempt(index, check))
            return attempts

    def _needs_check(self, replica: ReplicaHealth, now: float) -> bool | None:
        """None: skip it now; False: use it as known; True: check it, then decide."""
        if replica.state in ("down", "promoted", "unknown"):
            return True if now >= replica.retry_at else None
        if now - replica.checked_at >= HEALTH_INTERVAL:
            return True
        if replica.state == "lagging":
            return None
        if self._behind(replica):
            return True if now - replica.checked_at >= LSN_RECHECK else None
        return False

    def _behind(self, replica: ReplicaHealth) -> bool:
        return self.read_your_writes and (
            self.lost_writes > 0 or replica.replay_lsn < self.required_lsn
        )

    def usable(self, index: int) -> bool:
        """After a check: whether the replica may serve the read now."""
        with self._lock:
            replica = self.replicas[index]
            return replica.state == "healthy" and not self._behind(replica)

    # -- what was learnt -------------------------------------------------------------

    def wrote(self, lsn: int, *, found: int = 0) -> None:
        """This service committed a write that ends at or before `lsn` on the primary.

        `found`: the `lost_writes` seen before `lsn` was read, which it covers; writes
        lost since stay lost.
        """
        with self._lock:
            if lsn > self.required_lsn:
                self.required_lsn = lsn
            if found and found == self.lost_writes:
                self.lost_writes = 0

    def lost_write(self) -> None:
        """This service may have committed a write whose end it could not learn."""
        if self.read_your_writes:
            with self._lock:
                self.lost_writes += 1

    def checked(
        self,
        index: int,
        now: float,
        *,
        in_recovery: bool,
        replay_lsn: int | None,
        lag_seconds: float | None,
    ) -> None:
        """A check of replica `index` answered."""
        with self._lock:
            replica = self.replicas[index]
            replica.checked_at = now
            if not in_recovery:
                self._back_off(replica, now, "promoted", "not in recovery: it was promoted")
                return
            replica.replay_lsn = max(replica.replay_lsn, replay_lsn or 0)
            replica.lag_seconds = lag_seconds
            replica.failures = 0
            replica.reason = None
            too_far = lag_seconds is None or lag_seconds > self.max_lag
            replica.state = "lagging" if too_far else "healthy"
            if too_far:
                replica.reason = (
                    "nothing replayed yet"
                    if lag_seconds is None
                    else f"{lag_seconds:.1f} s behind, more than max_replica_lag={self.max_lag:g}"
                )

    def promoted(self, index: int, now: float) -> None:
        """The replica reported that it left recovery."""
        with self._lock:
            self._back_off(self.replicas[index], now, "promoted", "not in recovery: promoted")

    def failed(self, index: int, now: float, reason: str) -> None:
        """Replica `index` could not be reached or broke during a read."""
        with self._lock:
            self._back_off(self.replicas[index], now, "down", reason)

    def _back_off(
        self, replica: ReplicaHealth, now: float, state: ReplicaState, reason: str
    ) -> None:
        replica.state = state
        replica.reason = reason
        replica.failures += 1
        replica.retry_at = now + min(BACKOFF_START * 2 ** (replica.failures - 1), BACKOFF_MAX)

    def snapshot(self) -> list[ReplicaHealth]:
        """A copy of what is known of each replica."""
        with self._lock:
            return [ReplicaHealth(**vars(r)) for r in self.replicas]
