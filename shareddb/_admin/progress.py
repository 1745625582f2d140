"""The one progress display of the ``shareddb`` command and of `copy_rows()`.

A step is a label (``applying app/0001_x.sql``), optionally with a count of rows to
go through (``sessions``, 2,000 rows). On a terminal a counted step draws a bar that
each `advance()` redraws; otherwise a step that runs longer than `after` seconds
gets a line every `every` seconds, from a background thread::

      applying app/0001_x.sql ... 4.0 s (index x: building index, 700 of 2,000 rows (35%))
      sessions: 700 of 2,000 rows (35%) ... 4.0 s

Without a stream it is silent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final, TextIO

PROGRESS_AFTER: Final = 2.0  # seconds a step runs before its first line
PROGRESS_EVERY: Final = 2.0  # seconds between lines
BAR_WIDTH: Final = 30
_TICK: Final = 0.2


class Progress:
    """Progress of one step at a time on `stream` (see the module's docstring).

    `step(label, total=n)` starts a step; `advance(done)` says how many of its
    `total` rows are done. `detail()`, if given, is asked for more words on each line
    of an uncounted step (for example an index build's phase); None adds nothing.
    Use it as a context manager: the lines come from a thread that runs inside it.
    """

    def __init__(
        self,
        stream: TextIO | None,
        *,
        after: float = PROGRESS_AFTER,
        every: float = PROGRESS_EVERY,
        detail: Callable[[], str | None] | None = None,
    ) -> None:
        self._stream = stream
        self._tty = bool(stream is not None and stream.isatty())
        self._after = after
        self._every = every
        self._detail = detail
        self._lock = threading.Lock()
        self._label: str | None = None
        self._total: int | None = None
        self._done = 0
        self._started = self._printed = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Progress:
        if self._stream is not None:
            self._thread = threading.Thread(target=self._run, name="shareddb-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            self._end_bar()

    def step(self, label: str | None, *, total: int | None = None) -> None:
        """Start a step (None: nothing to show); `total`: the rows it goes through."""
        with self._lock:
            self._end_bar()
            self._label, self._total, self._done = label, total, 0
            self._started = self._printed = time.monotonic()

    def advance(self, done: int) -> None:
        """`done` of the step's rows are done: redraw the bar, if there is one."""
        with self._lock:
            self._done = done
            if self._bar():
                self._draw_bar()

    # -- drawing (with _lock held) ---------------------------------------------------------

    def _bar(self) -> bool:
        return self._tty and self._label is not None and self._total is not None

    def _draw_bar(self) -> None:
        assert self._stream is not None and self._total is not None
        filled = BAR_WIDTH * self._done // max(self._total, 1)
        self._stream.write(
            f"\r{self._label:<16} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] "
            f"{self._done:,}/{self._total:,} {time.monotonic() - self._started:.1f} s"
        )
        self._stream.flush()

    def _end_bar(self) -> None:
        """Draw a counted step's bar a last time and end its line."""
        if self._bar():
            assert self._stream is not None
            self._draw_bar()
            self._stream.write("\n")
            self._stream.flush()

    def _line(self, now: float) -> str | None:
        """The step's line when one is due (not on a bar), else None."""
        if self._label is None or self._bar():
            return None
        elapsed = now - self._started
        first = self._printed == self._started
        if elapsed < self._after or not (first or now - self._printed >= self._every):
            return None
        self._printed = now
        if self._total is None:
            return f"  {self._label} ... {elapsed:.1f} s"
        share = 100 * self._done // max(self._total, 1)
        return (
            f"  {self._label}: {self._done:,} of {self._total:,} rows ({share}%) "
            f"... {elapsed:.1f} s"
        )

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        assert self._stream is not None
        while not self._stop.wait(_TICK):
            with self._lock:
                line = self._line(time.monotonic())
                counted = self._total is not None
            if line is None:
                continue
            detail = self._detail() if self._detail is not None and not counted else None
            if detail:
                line += f" ({detail})"
            print(line, file=self._stream, flush=True)
