"""The fusion queue of ``textmef serve``: a bounded queue in front of a worker thread.

Fusions share one network and torch's thread pool, so they run one at a time on a worker
of their own; request threads only wait for their own job, and a full queue is refused at
once (503 with ``Retry-After``) instead of tying up the server. No Flask import.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from textmef.web.limits import DEFAULT_MAX_QUEUE, DEFAULT_WORKERS

__all__ = ["FusionQueue", "QueueClosedError", "QueueFullError"]

log = logging.getLogger("textmef")

_RECENT_JOBS = 8  # fusion times that the Retry-After estimate averages
_FIRST_GUESS_S = 1.0  # a fusion's time before any has been measured
_CLOSE_WAIT_S = 5.0  # how long FusionQueue.close waits for a running fusion

_T = TypeVar("_T")


class QueueFullError(Exception):
    """The fusion queue has no room; ``retry_after`` estimates when it will (seconds)."""

    def __init__(self, waiting: int, retry_after: int) -> None:
        super().__init__(f"{waiting} fusions are waiting; retry in {retry_after} s")
        self.waiting = waiting
        self.retry_after = retry_after


class QueueClosedError(Exception):
    """The fusion queue is closed: the server is stopping."""


class _Job(Generic[_T]):
    """One piece of work on a :class:`FusionQueue`, and what became of it."""

    def __init__(self, work: Callable[[], _T]) -> None:
        self._work: Callable[[], _T] | None = work
        self.submitted = time.perf_counter()
        self.started: float | None = None
        self.finished: float | None = None
        self._value: _T | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()

    @property
    def queue_seconds(self) -> float:
        """Seconds it waited for a worker (so far, while it still waits)."""
        return (self.started or time.perf_counter()) - self.submitted

    def run(self) -> None:
        self.started = time.perf_counter()
        try:
            assert self._work is not None
            self._value = self._work()
        except Exception as exc:
            self._error = exc
        finally:
            self._work = None  # drop the job's references (uploads, model) at once
            self.finished = time.perf_counter()
            self._done.set()

    def cancel(self, error: BaseException) -> None:
        self._work = None
        self._error = error
        self._done.set()

    def result(self) -> _T:
        """Wait for the job; its value, or the exception it raised, re-raised here."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


class FusionQueue:
    """Worker threads that run fusions one per worker, fed by a bounded queue.

    Fusions share the model and torch's thread pool, so one worker (the default) is
    right; a job waits in the queue until a worker is free. :meth:`submit` never blocks:
    with ``max_queue`` jobs already waiting it raises :class:`QueueFullError`. The worker
    threads start with the first job and are daemons; :meth:`close` stops them.

    Args:
        workers: worker threads (fusions at once).
        max_queue: the most jobs waiting for a worker.
        thread_setup: called first in each worker thread (e.g. per-thread settings).

    Raises:
        ValueError: ``workers`` or ``max_queue`` is below 1.
    """

    def __init__(
        self,
        workers: int = DEFAULT_WORKERS,
        max_queue: int = DEFAULT_MAX_QUEUE,
        *,
        thread_setup: Callable[[], None] | None = None,
    ) -> None:
        if workers < 1 or max_queue < 1:
            raise ValueError(f"workers and max_queue must be >= 1, got {workers}, {max_queue}")
        self.workers = workers
        self.max_queue = max_queue
        self._thread_setup = thread_setup
        self._cond = threading.Condition()  # never held while a job runs
        self._waiting: deque[_Job[Any]] = deque()
        self._busy = 0
        self._recent: deque[float] = deque(maxlen=_RECENT_JOBS)
        self._threads: list[threading.Thread] = []
        self._closed = False

    def submit(self, work: Callable[[], _T]) -> _Job[_T]:
        """Queue ``work``; :meth:`_Job.result` waits for it.

        Raises:
            QueueFullError: ``max_queue`` jobs are already waiting.
            QueueClosedError: the queue was closed.
        """
        with self._cond:
            self._check_room()
            if not self._threads:
                for i in range(self.workers):
                    thread = threading.Thread(
                        target=self._work, name=f"textmef-fusion-{i}", daemon=True
                    )
                    thread.start()
                    self._threads.append(thread)
            job = _Job(work)
            self._waiting.append(job)
            self._cond.notify()
            return job

    def check_room(self) -> None:
        """Raise what :meth:`submit` would if called now; a cheap look before any work.

        Raises:
            QueueFullError: ``max_queue`` jobs are already waiting.
            QueueClosedError: the queue was closed.
        """
        with self._cond:
            self._check_room()

    def stats(self) -> dict[str, int]:
        """``queued`` (waiting jobs), ``workers_busy``, ``workers``, ``max_queue``."""
        with self._cond:
            return {
                "queued": len(self._waiting),
                "workers_busy": self._busy,
                "workers": self.workers,
                "max_queue": self.max_queue,
            }

    def retry_after(self) -> int:
        """Seconds until the jobs now waiting or running should be done (at least 1)."""
        with self._cond:
            return self._retry_after()

    def close(self, timeout: float = _CLOSE_WAIT_S) -> None:
        """Refuse new jobs, fail the waiting ones and wait up to ``timeout`` s for the rest."""
        with self._cond:
            self._closed = True
            cancelled = list(self._waiting)
            self._waiting.clear()
            self._cond.notify_all()
        for job in cancelled:
            job.cancel(QueueClosedError("the server is stopping"))
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _check_room(self) -> None:
        if self._closed:
            raise QueueClosedError("the server is stopping")
        if len(self._waiting) >= self.max_queue:
            raise QueueFullError(len(self._waiting), self._retry_after())

    def _retry_after(self) -> int:
        per_job = sum(self._recent) / len(self._recent) if self._recent else _FIRST_GUESS_S
        ahead = len(self._waiting) + self._busy
        return max(1, math.ceil(per_job * ahead / self.workers))

    def _work(self) -> None:
        if self._thread_setup is not None:
            try:
                self._thread_setup()
            except Exception:  # a setting not applied must not leave every job waiting
                log.exception("fusion worker setup failed; running with the defaults")
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if not self._waiting:  # closed
                    return
                job = self._waiting.popleft()
                self._busy += 1
            try:
                job.run()
            finally:
                with self._cond:
                    self._busy -= 1
                    if job.started is not None and job.finished is not None:
                        self._recent.append(job.finished - job.started)
