"""When a long loop should say how far it got.

A count alone ("every 10 batches") goes quiet for minutes when batches are slow (the
MiniLM coverage embeddings, a busy machine); a clock alone floods the log when they are
fast. :class:`Every` reports on whichever comes first. A single step can itself outlast
the interval (one 4,096-record cleaning batch with embeddings on a loaded machine), so
:class:`Heartbeat` also reports from a background thread whenever the loop has been
silent for that long: an operator watching a run in the Dagster UI sees a line at least
every ``seconds``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

REPORT_SECONDS = 10.0


class Every:
    """``due()`` is True once ``n`` events were counted or ``seconds`` passed since the last
    report, whichever comes first; either limit may be None (off). Thread-safe."""

    def __init__(
        self, n: int | None = None, seconds: float | None = REPORT_SECONDS, clock: Callable[[], float] = time.monotonic
    ):
        if n is not None and n < 1:
            raise ValueError(f"n must be at least 1 (or None), got {n}")
        if seconds is not None and seconds <= 0:
            raise ValueError(f"seconds must be positive (or None), got {seconds}")
        self.n, self.seconds, self.clock = n, seconds, clock
        self.count = 0
        self.last = clock()
        self._lock = threading.Lock()

    def due(self, events: int = 1) -> bool:
        with self._lock:
            self.count += events
            if (self.n is not None and self.count >= self.n) or self._silent_for_too_long():
                self.count, self.last = 0, self.clock()
                return True
            return False

    def due_by_clock(self) -> bool:
        """True (and counted as a report) when ``seconds`` passed since the last report."""
        with self._lock:
            if self._silent_for_too_long():
                self.count, self.last = 0, self.clock()
                return True
            return False

    def _silent_for_too_long(self) -> bool:
        return self.seconds is not None and self.clock() - self.last >= self.seconds


class Heartbeat:
    """While the ``with`` block runs, calls ``report()`` from a daemon thread whenever
    ``every`` has not reported for ``every.seconds`` (a no-op when that is None)."""

    def __init__(self, every: Every, report: Callable[[], None], poll_seconds: float = 0.5):
        self.every, self.report, self.poll_seconds = every, report, poll_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        if self.every.seconds is not None:
            self._thread = threading.Thread(target=self._run, name="progress-heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            if self.every.due_by_clock():
                try:
                    self.report()
                except Exception:  # a failed progress line must not end the run; the loop reports too
                    pass
