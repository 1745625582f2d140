"""Dot products that never wake BLAS's threads, parallel only while cores are free.

numpy hands ``matrix @ vector`` to OpenBLAS, which splits a large product across its
own threads and has the caller wait for them. On a busy machine (other processes, or
several threads searching at once) those workers are not scheduled when needed, and
every search waits for them: searches ran 25-30 times slower than idle. BLAS's thread
limit is process-wide, so setting it around each product would race between threads and
change the application's own numpy. Instead, products here compute one BLAS *level-1*
dot per row (numpy's ``vecdot``), which OpenBLAS never threads for rows this short, or
``einsum``, which calls no BLAS at all, for longer rows.

The parallelism comes from shareddb's own helper threads: a large product is cut into
parts that the caller and the helpers claim one at a time until none is left, so whoever
runs does the work. On an idle machine the helpers take their share at once; on a busy
one a helper that is not scheduled claims nothing, and the caller waits at most for the
part a helper is computing, never for a helper that has not started.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Final

import numpy as np

# OpenBLAS threads a single dot product from 10,001 elements on: rows longer than this
# go through einsum.
BLAS_DOT_MAX: Final = 8192
# Below this many elements per part, a part is done before a helper could start it.
PART_MIN: Final = 1 << 20
# Parts per product at most: small enough that a preempted helper's part is a short wait.
PARTS_MAX: Final = 16
HELPER_PREFIX: Final = "shareddb-ranking"

Array = np.ndarray[Any, Any]

_vecdot = getattr(np, "vecdot", None)  # numpy 2; on numpy 1.x every product uses einsum


def _cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class _Helpers:
    """The process's helper threads, started on first use (a forked child starts its own)."""

    def __init__(self) -> None:
        self.cpus = _cpus()
        self.lock = threading.Lock()
        self.pool: ThreadPoolExecutor | None = None

    def offer(self, product: _Product) -> Future[None] | None:
        """A helper's future for working on `product`; None once Python is shutting down."""
        with self.lock:
            if self.pool is None:
                # One per CPU, not one less: the caller itself may be waiting for a core.
                self.pool = ThreadPoolExecutor(self.cpus, thread_name_prefix=HELPER_PREFIX)
            pool = self.pool
        try:
            return pool.submit(product.work)
        except RuntimeError:  # "cannot schedule new futures after interpreter shutdown"
            return None


_helpers = _Helpers()


def _forget_helpers() -> None:
    global _helpers  # the parent's threads don't exist in a forked child
    _helpers = _Helpers()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_helpers)


def dot(a: Array, b: Array) -> float:
    """``a · b`` of two 1-D arrays, on the calling thread."""
    if a.shape[0] <= BLAS_DOT_MAX:
        return float(np.dot(a, b))
    return float(np.einsum("i,i->", a, b))


def _row_dots_here(rows: Array, vector: Array, out: Array) -> None:
    if _vecdot is not None and rows.shape[1] <= BLAS_DOT_MAX:
        _vecdot(rows, vector, out=out)
    else:
        np.einsum("ij,j->i", rows, vector, out=out)


class _Product:
    """``out[:] = rows · vector``, cut into parts claimed one at a time by whoever is free."""

    def __init__(self, rows: Array, vector: Array, out: Array, parts: int) -> None:
        self.rows, self.vector, self.out = rows, vector, out
        step = -(-rows.shape[0] // parts)
        self.spans = [slice(start, start + step) for start in range(0, rows.shape[0], step)]
        self.claimed = 0
        self.lock = threading.Lock()

    def work(self) -> None:
        """Compute unclaimed parts until none is left."""
        while True:
            with self.lock:
                if self.claimed == len(self.spans):
                    return
                span = self.spans[self.claimed]
                self.claimed += 1
            _row_dots_here(self.rows[span], self.vector, self.out[span])


def row_dots(rows: Array, vector: Array) -> Array:
    """``rows @ vector`` (one dot per row) without BLAS threads, shared with idle helpers."""
    out = np.empty(rows.shape[0], dtype=np.result_type(rows, vector))
    parts = min(PARTS_MAX, rows.size // PART_MIN, rows.shape[0])
    if parts < 2 or _helpers.cpus < 2:
        _row_dots_here(rows, vector, out)
        return out
    product = _Product(rows, vector, out, parts)
    offered = [_helpers.offer(product) for _ in range(min(_helpers.cpus, parts - 1))]
    product.work()
    for future in offered:
        # A helper that started finishes its last part; one that didn't is not waited for.
        if future is not None and not future.cancel():
            future.result()
    return out
