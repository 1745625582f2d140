"""Many callers at once: N threads or N asyncio tasks calling one function as fast as they can.

Every caller loops over the items (each from its own offset) until the window closes.
A run has a warm-up (pools fill, statements get prepared) and then a timed window; the
calls that *end* inside the window are counted, which estimates the steady rate without
the edges' bias, and their latencies give the percentiles. Latency is what the caller
sees, waiting for a pooled connection included.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Span = tuple[float, float]  # (start, end) of one call, time.perf_counter seconds


@dataclass(frozen=True)
class Throughput:
    """Completed calls per second and per-call latency percentiles, at `callers` at once."""

    callers: int
    qps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    calls: int
    cpu_us: float | None  # this process's CPU time per call: the client library's cost

    @classmethod
    def of(
        cls,
        callers: int,
        spans: Sequence[Span],
        window: Span,
        cpu_seconds: float | None = None,
    ) -> Throughput:
        lo, hi = window
        latency = np.array([end - start for start, end in spans if lo <= end <= hi])
        if latency.size == 0:
            raise RuntimeError(f"no call ended inside the {hi - lo:.2f} s window")
        p50, p95, p99 = np.percentile(latency, [50, 95, 99]) * 1000
        return cls(
            callers=callers,
            qps=latency.size / (hi - lo),
            p50_ms=float(p50),
            p95_ms=float(p95),
            p99_ms=float(p99),
            calls=int(latency.size),
            cpu_us=None if cpu_seconds is None else cpu_seconds / latency.size * 1e6,
        )


def in_threads(
    call: Callable[[Any], Any],
    items: Sequence[Any],
    callers: int,
    *,
    warmup: float,
    seconds: float,
) -> Throughput:
    """`callers` threads calling ``call(item)`` in a loop for `warmup` + `seconds`."""
    spans: list[list[Span]] = [[] for _ in range(callers)]
    errors: list[BaseException] = []
    window: list[float] = []
    ready = threading.Barrier(callers + 1)

    def caller(index: int) -> None:
        mine, clock, n = spans[index], time.perf_counter, len(items)
        ready.wait()
        stop = window[1]
        turn = index
        try:
            while (start := clock()) < stop:
                call(items[turn % n])
                mine.append((start, clock()))
                turn += 1
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(callers)]
    for thread in threads:
        thread.start()
    begin = time.perf_counter() + warmup
    window.extend((begin, begin + seconds))
    ready.wait()
    cpu = _cpu_over_window(window)
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return Throughput.of(callers, [s for mine in spans for s in mine], (window[0], window[1]), cpu)


def _cpu_over_window(window: Sequence[float]) -> float:
    """This process's CPU seconds between the window's two instants (the caller sleeps)."""
    time.sleep(max(0.0, window[0] - time.perf_counter()))
    start = time.process_time()
    time.sleep(max(0.0, window[1] - time.perf_counter()))
    return time.process_time() - start


async def in_tasks(
    call: Callable[[Any], Awaitable[Any]],
    items: Sequence[Any],
    callers: int,
    *,
    warmup: float,
    seconds: float,
) -> Throughput:
    """`callers` asyncio tasks awaiting ``call(item)`` in a loop for `warmup` + `seconds`."""
    begin = time.perf_counter() + warmup
    window = (begin, begin + seconds)
    clock, n = time.perf_counter, len(items)

    async def caller(index: int) -> list[Span]:
        mine: list[Span] = []
        turn = index
        while (start := clock()) < window[1]:
            await call(items[turn % n])
            mine.append((start, clock()))
            turn += 1
        return mine

    async def cpu_meter() -> float:
        await asyncio.sleep(max(0.0, window[0] - clock()))
        start = time.process_time()
        await asyncio.sleep(max(0.0, window[1] - clock()))
        return time.process_time() - start

    *found, cpu = await asyncio.gather(*(caller(i) for i in range(callers)), cpu_meter())
    return Throughput.of(callers, [s for mine in found for s in mine], window, cpu)
