"""One generation at a time, a bounded line behind it, and an honest "busy" past that.

The model is one set of runtime sessions on a small machine: running two generations at once only makes both
slower and doubles the peak memory. So a single worker thread runs every generation, and admission is counted
here: at most ``limit`` requests wait behind the running one. A request past that is refused at once with
:class:`Busy` (how many are ahead, and a Retry-After estimate from recent generation times) instead of piling up
in memory and timing out.

Nobody's work is done for nobody: a job whose client left is dropped (:meth:`GenerationQueue.abandon`): skipped
while it waits, and asked to stop while it runs (the job polls :meth:`GenerationQueue.stop_requested` between
steps; whatever it returns is discarded). :meth:`GenerationQueue.stop` (server shutdown) answers every waiting
and running job with :class:`ShuttingDown` at once and asks the running one to stop; the worker is a daemon
thread, so a job that cannot stop (a long native call) never holds the process up.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from concurrent.futures import Future, InvalidStateError
from typing import Any, Callable, TypeVar

T = TypeVar("T")


class Busy(Exception):
    """The line is full: ``ahead`` requests are running or waiting; try again after ``retry_after`` seconds."""

    def __init__(self, ahead: int, retry_after: int) -> None:
        self.ahead, self.retry_after = ahead, retry_after
        super().__init__(f"busy, {ahead} ahead of you; try again in a moment")


class ShuttingDown(Exception):
    """The kiosk is stopping: a job that was waiting or running gets this instead of its portrait."""

    retry_after = 5

    def __init__(self) -> None:
        super().__init__("the kiosk is shutting down; try again in a moment")


class Stopped(Exception):
    """Raised inside a job that was asked to stop (its client left, or the kiosk is stopping)."""


class GenerationQueue:
    """A single worker with at most ``limit`` jobs waiting (``limit + 1`` admitted in all)."""

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"the queue limit must be >= 0 (got {limit})")
        self.limit = limit
        self._lock = threading.Condition()
        self._jobs: collections.deque[tuple[Future, Callable[..., Any], tuple, dict]] = collections.deque()
        self._admitted = 0
        self._current: Future | None = None
        self._stop_current = False
        self._unwanted: set[Future] = set()  # abandoned while running: not counted as completed
        self._closing = False
        self.completed = 0
        self.refused = 0
        self.dropped = 0
        self._avg_seconds: float | None = None
        self._worker = threading.Thread(target=self._work, name="dhumandiff-generate", daemon=True)

    # ------------------------------------------------------------------------------------------- state

    @property
    def running(self) -> bool:
        return self._current is not None

    @property
    def waiting(self) -> int:
        with self._lock:
            return self._admitted - (1 if self._current is not None else 0)

    @property
    def avg_seconds(self) -> float | None:
        """Moving average of recent job durations (None before the first)."""
        return self._avg_seconds

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"running": self._current is not None,
                    "waiting": self._admitted - (1 if self._current is not None else 0),
                    "queue_limit": self.limit, "completed": self.completed, "refused": self.refused,
                    "dropped": self.dropped,
                    "avg_seconds": None if self._avg_seconds is None else round(self._avg_seconds, 4)}

    # ---------------------------------------------------------------------------------------- admission

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> "Future[T]":
        """Queue ``fn(*args, **kwargs)`` on the worker, or raise :class:`Busy` when the line is full
        (:class:`ShuttingDown` once the kiosk is stopping)."""
        fut: Future = Future()
        with self._lock:
            if self._closing:
                raise ShuttingDown()
            if self._admitted >= self.limit + 1:
                self.refused += 1
                ahead = self._admitted
                per_job = self._avg_seconds if self._avg_seconds is not None else 1.0
                raise Busy(ahead, max(1, math.ceil(ahead * per_job)))
            self._admitted += 1
            self._jobs.append((fut, fn, args, kwargs))
            self._lock.notify()
            if self._worker.ident is None:
                self._worker.start()  # on the first job: an app that is never used holds no thread
        fut.add_done_callback(self._release)  # also runs when a waiting job is cancelled
        return fut

    def abandon(self, fut: Future) -> None:
        """The client of ``fut`` left: skip it if it waits, ask it to stop if it runs; its result is discarded."""
        with self._lock:
            if fut.done():
                return
            self.dropped += 1
            if fut is self._current:
                self._stop_current = True
                self._unwanted.add(fut)
                return
        fut.cancel()  # still waiting: the worker skips it (a job that just started is asked to stop above)

    def stop_requested(self) -> bool:
        """For the running job, between its steps: whether to give up (raise :class:`Stopped`)."""
        return self._stop_current or self._closing

    def check_stop(self) -> None:
        """Raise :class:`Stopped` when the running job should give up."""
        if self.stop_requested():
            raise Stopped()

    # ------------------------------------------------------------------------------------------- worker

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._jobs and not self._closing:
                    self._lock.wait()
                if not self._jobs:
                    return
                fut, fn, args, kwargs = self._jobs.popleft()
                if not fut.set_running_or_notify_cancel():
                    continue  # cancelled while it waited: its client left
                self._current, self._stop_current = fut, False
            t0 = time.perf_counter()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits for the job
                outcome: tuple[str, Any] = ("error", exc)
            else:
                outcome = ("result", result)
            dt = time.perf_counter() - t0
            with self._lock:
                if outcome[0] == "result" or not isinstance(outcome[1], Stopped):
                    self._avg_seconds = dt if self._avg_seconds is None else 0.8 * self._avg_seconds + 0.2 * dt
                self._current, self._stop_current = None, False
            try:  # stop() may have answered it already
                if outcome[0] == "result":
                    fut.set_result(outcome[1])
                else:
                    fut.set_exception(outcome[1])
            except InvalidStateError:
                pass
            del outcome, fut

    def _release(self, fut: Future) -> None:
        with self._lock:
            self._admitted -= 1
            if fut in self._unwanted:
                self._unwanted.discard(fut)
            elif not fut.cancelled():
                self.completed += 1

    # ----------------------------------------------------------------------------------------- shutdown

    def stop(self) -> None:
        """Stop taking jobs: answer every waiting and running one with :class:`ShuttingDown` now, and ask the
        running one to stop at its next step. Returns at once."""
        with self._lock:
            self._closing = True
            pending = [job[0] for job in self._jobs] + ([self._current] if self._current is not None else [])
            self._jobs.clear()
            self._unwanted.update(pending)  # answered "shutting down": not completed
            self._lock.notify_all()
        for fut in pending:
            try:
                fut.set_exception(ShuttingDown())
            except InvalidStateError:
                pass

    def shutdown(self, timeout: float = 3.0) -> bool:
        """:meth:`stop`, then wait up to ``timeout`` seconds for the worker; whether it finished."""
        self.stop()
        if self._worker.ident is not None:
            self._worker.join(timeout)
        return not self._worker.is_alive()
