"""Where reads go, decided without I/O: `Routing` with made-up times and LSNs."""

from __future__ import annotations

import pytest

from shareddb._engines.postgres.replica_routing import (
    BACKOFF_MAX,
    BACKOFF_START,
    HEALTH_INTERVAL,
    LSN_RECHECK,
    Attempt,
    Routing,
)
from shareddb._engines.postgres.standby import parse_lsn


def healthy(routing: Routing, index: int, now: float, lsn: int = 100, lag: float = 0.0) -> None:
    routing.checked(index, now, in_recovery=True, replay_lsn=lsn, lag_seconds=lag)


def test_a_new_replica_is_checked_first_then_used_as_known() -> None:
    routing = Routing(["r0"], max_lag=5)
    assert routing.plan(0.0) == [Attempt(0, check=True)]
    healthy(routing, 0, 0.0)
    assert routing.usable(0)
    assert routing.plan(0.5) == [Attempt(0, check=False)]
    assert routing.plan(HEALTH_INTERVAL) == [Attempt(0, check=True)]  # what is known ages


def test_read_your_writes_skips_a_replica_behind_the_last_write() -> None:
    routing = Routing(["r0"], max_lag=5)
    healthy(routing, 0, 0.0, lsn=100)
    routing.wrote(150)
    assert routing.plan(LSN_RECHECK / 2) == []  # the primary serves it; no round trip
    assert routing.plan(LSN_RECHECK) == [Attempt(0, check=True)]  # asked again, sparingly
    healthy(routing, 0, LSN_RECHECK, lsn=149)
    assert not routing.usable(0)
    healthy(routing, 0, 2 * LSN_RECHECK, lsn=150)
    assert routing.usable(0)
    assert routing.plan(3 * LSN_RECHECK) == [Attempt(0, check=False)]


def test_without_read_your_writes_a_replica_behind_is_used() -> None:
    routing = Routing(["r0"], max_lag=5, read_your_writes=False)
    healthy(routing, 0, 0.0, lsn=100)
    routing.wrote(150)
    routing.lost_write()
    assert routing.usable(0)
    assert routing.plan(0.1) == [Attempt(0, check=False)]


def test_a_write_of_unknown_end_keeps_reads_off_replicas_until_found() -> None:
    routing = Routing(["r0"], max_lag=5)
    healthy(routing, 0, 0.0, lsn=100)
    routing.lost_write()
    lost = routing.lost_writes
    assert not routing.usable(0)
    routing.lost_write()  # another, after the primary's WAL end was read: still lost
    routing.wrote(100, found=lost)
    assert routing.lost_writes == 2 and not routing.usable(0)
    routing.wrote(100, found=routing.lost_writes)
    assert routing.lost_writes == 0 and routing.usable(0)


def test_a_lagging_replica_is_skipped_until_its_next_check() -> None:
    routing = Routing(["r0"], max_lag=5)
    healthy(routing, 0, 0.0, lag=6.0)
    assert not routing.usable(0)
    assert routing.snapshot()[0].state == "lagging"
    assert "max_replica_lag=5" in (routing.snapshot()[0].reason or "")
    assert routing.plan(0.5) == []
    assert routing.plan(HEALTH_INTERVAL) == [Attempt(0, check=True)]


@pytest.mark.parametrize("event", ["failed", "promoted"])
def test_a_failed_or_promoted_replica_backs_off_doubling(event: str) -> None:
    routing = Routing(["r0", "r1"], max_lag=5)
    healthy(routing, 0, 0.0)
    healthy(routing, 1, 0.0)
    now = 0.0
    waits = []
    for _ in range(12):
        if event == "failed":
            routing.failed(0, now, "connection refused")
        else:
            routing.promoted(0, now)
        retry = routing.snapshot()[0].retry_at
        waits.append(retry - now)
        assert [a.index for a in routing.plan(retry - 0.01)] == [1]  # skipped meanwhile
        assert Attempt(0, check=True) in routing.plan(retry)  # then tried, with a check
        now = retry
    assert waits[0] == BACKOFF_START and waits[1] == 2 * BACKOFF_START
    assert max(waits) == BACKOFF_MAX
    assert routing.snapshot()[0].state == ("down" if event == "failed" else "promoted")
    healthy(routing, 0, now)
    assert routing.snapshot()[0].failures == 0 and routing.usable(0)


def test_a_check_that_finds_the_server_out_of_recovery_marks_it_promoted() -> None:
    routing = Routing(["r0"], max_lag=5)
    routing.checked(0, 0.0, in_recovery=False, replay_lsn=None, lag_seconds=None)
    assert routing.snapshot()[0].state == "promoted"
    assert not routing.usable(0)


def test_reads_take_turns_among_usable_replicas() -> None:
    routing = Routing(["r0", "r1", "r2"], max_lag=5)
    for index in range(3):
        healthy(routing, index, 0.0)
    firsts = [routing.plan(0.1)[0].index for _ in range(6)]
    assert firsts == [0, 1, 2, 0, 1, 2]


def test_lsn_text_compares_as_a_number() -> None:
    assert parse_lsn("0/0") == 0
    assert parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert parse_lsn("1/0") > parse_lsn("0/FFFFFFFF")
