"""One generation at a time, a bounded line behind it, and an honest "busy" past that.

The model is one set of runtime sessions on a small machine: running two generations at once only makes both
slower and doubles the peak memory. So a single worker thread (a ``ThreadPoolExecutor`` with one worker) runs
every generation, and admission is counted here: at most ``limit`` requests wait behind the running one. A
request past that is refused at once with :class:`Busy` (how many are ahead, and a Retry-After estimate from
recent generation times) instead of piling up in memory and timing out.
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, TypeVar

T = TypeVar("T")


class Busy(Exception):
    """The line is full: ``ahead`` requests are running or waiting; try again after ``retry_after`` seconds."""

    def __init__(self, ahead: int, retry_after: int) -> None:
        self.ahead, self.retry_after = ahead, retry_after
        super().__init__(f"busy, {ahead} ahead of you; try again in a moment")


class GenerationQueue:
    """A single worker with at most ``limit`` jobs waiting (``limit + 1`` admitted in all)."""

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"the queue limit must be >= 0 (got {limit})")
        self.limit = limit
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dhumandiff-generate")
        self._lock = threading.Lock()
        self._admitted = 0
        self._running = False
        self.completed = 0
        self.refused = 0
        self._avg_seconds: float | None = None

    # ------------------------------------------------------------------------------------------- state

    @property
    def running(self) -> bool:
        return self._running

    @property
    def waiting(self) -> int:
        with self._lock:
            return self._admitted - (1 if self._running else 0)

    @property
    def avg_seconds(self) -> float | None:
        """Moving average of recent job durations (None before the first)."""
        return self._avg_seconds

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"running": self._running, "waiting": self._admitted - (1 if self._running else 0),
                    "queue_limit": self.limit, "completed": self.completed, "refused": self.refused,
                    "avg_seconds": None if self._avg_seconds is None else round(self._avg_seconds, 4)}

    # ---------------------------------------------------------------------------------------- admission

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> "Future[T]":
        """Queue ``fn(*args, **kwargs)`` on the worker, or raise :class:`Busy` when the line is full."""
        with self._lock:
            if self._admitted >= self.limit + 1:
                self.refused += 1
                ahead = self._admitted
                per_job = self._avg_seconds if self._avg_seconds is not None else 1.0
                raise Busy(ahead, max(1, math.ceil(ahead * per_job)))
            self._admitted += 1
        try:
            fut = self._executor.submit(self._run, fn, args, kwargs)
        except BaseException:
            with self._lock:
                self._admitted -= 1
            raise
        fut.add_done_callback(self._release)  # also runs when a waiting job is cancelled
        return fut

    def _run(self, fn: Callable[..., T], args: tuple, kwargs: dict) -> T:
        self._running = True
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            dt = time.perf_counter() - t0
            with self._lock:
                self._avg_seconds = dt if self._avg_seconds is None else 0.8 * self._avg_seconds + 0.2 * dt
                self._running = False

    def _release(self, fut: Future) -> None:
        with self._lock:
            self._admitted -= 1
            if not fut.cancelled():
                self.completed += 1

    def shutdown(self) -> None:
        """Cancel waiting jobs and wait for the running one (server shutdown)."""
        self._executor.shutdown(wait=True, cancel_futures=True)
