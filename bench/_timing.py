"""Timing: per-call latencies, the clients taking turns, percentiles and medians."""

from __future__ import annotations

import itertools
import math
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Latency:
    """Per-call latency percentiles (milliseconds) and single-client throughput."""

    p50_ms: float
    p95_ms: float
    p99_ms: float
    qps: float
    calls: int
    cpu_us: float | None = None  # median CPU time of the calling thread per call

    @classmethod
    def of(cls, seconds: Sequence[float], cpu: Sequence[float] | None = None) -> Latency:
        ordered = sorted(seconds)
        total = sum(ordered)
        return cls(
            p50_ms=percentile(ordered, 50) * 1000,
            p95_ms=percentile(ordered, 95) * 1000,
            p99_ms=percentile(ordered, 99) * 1000,
            qps=len(ordered) / total if total > 0 else math.inf,
            calls=len(ordered),
            cpu_us=statistics.median(cpu) * 1e6 if cpu else None,
        )


def percentile(ordered: Sequence[float], pct: float) -> float:
    """The `pct`-th percentile of sorted values, by linear interpolation (numpy's default)."""
    return float(np.percentile(np.asarray(ordered), pct))


def time_each(call: Callable[[Any], Any], items: Sequence[Any]) -> tuple[list[float], list[Any]]:
    """Run ``call(item)`` for each item; each call's seconds and result."""
    seconds: list[float] = []
    results: list[Any] = []
    clock = time.perf_counter
    for item in items:
        start = clock()
        result = call(item)
        seconds.append(clock() - start)
        results.append(result)
    return seconds, results


def time_round_robin(
    calls: dict[str, Callable[[Any], Any]],
    items: dict[str, Sequence[Any]],
    repeat: int,
) -> dict[str, Latency]:
    """Latency of every call on every item, the clients taking turns item by item.

    Each item is run by every client back to back, in an order that cycles through
    every permutation of the clients: each one runs first, last and right after
    each other one equally often, so drift in machine load, cache warmth and the
    garbage a heavy client leaves for the next one's collector hit all clients
    alike (a rotation keeps the cyclic order, so one client would always follow
    the same neighbour). `items[name]` holds the same items in each client's own form.
    Besides wall time, each call's CPU time in this thread is kept: what a client
    library costs over another shows there without the noise of a busy machine.
    """
    names = list(calls)
    orders = list(itertools.permutations(names))
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    count = min(len(items[name]) for name in names)
    clock, cpu_clock = time.perf_counter, time.thread_time
    turn = 0
    for _ in range(repeat):
        for i in range(count):
            turn += 1
            for name in orders[turn % len(orders)]:
                call, item = calls[name], items[name][i]
                start_cpu = cpu_clock()
                start = clock()
                call(item)
                wall[name].append(clock() - start)
                cpu[name].append(cpu_clock() - start_cpu)
    return {name: Latency.of(wall[name], cpu[name]) for name in names}


def median_of(repeat: int, work: Callable[[], float]) -> float:
    """The median of `repeat` runs of `work`, which returns the seconds it measured."""
    return statistics.median(work() for _ in range(repeat))


def time_threads(
    call: Callable[[Any], Any], items: Sequence[Any], threads: int, calls: int
) -> list[float]:
    """Seconds of every call, `threads` threads calling at once, `calls` calls each.

    The threads start together (a barrier); thread t takes items t * calls onwards
    (wrapping around), so they are not all on the same item at the same time.
    """
    start_line = threading.Barrier(threads)
    clock = time.perf_counter

    def caller(first: int) -> list[float]:
        seconds: list[float] = []
        start_line.wait()
        for i in range(calls):
            item = items[(first + i) % len(items)]
            start = clock()
            call(item)
            seconds.append(clock() - start)
        return seconds

    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(caller, t * calls) for t in range(threads)]
        return [s for future in futures for s in future.result()]
