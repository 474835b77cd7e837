"""The engine's worker threads: a pool that runs the most urgent job first (`AsyncEngine` steps requests on it)."""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class WorkerPool:
    """Worker threads that take the most urgent job first (lowest priority value, then first come).

    The engine gives a request's step the number of chunks that request has already produced as its priority, so
    a newly admitted request's first chunk overtakes the look-ahead steps of requests that are already playing.
    """

    def __init__(self, workers: int, name: str) -> None:
        self._jobs: queue.PriorityQueue[tuple[float, int, Any]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(workers)]
        self._start = threading.Lock()
        self._started = False

    def submit(self, priority: float, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Queue `fn(*args)` (threads start on first use); RuntimeError once the pool is shut down."""
        with self._start:
            if self._closed:
                raise RuntimeError("worker pool is shut down")
            if not self._started:
                self._started = True
                for thread in self._threads:
                    thread.start()
            future: Future[Any] = Future()
            self._jobs.put((priority, next(self._order), (future, fn, args)))  # under the lock: before any stop mark
        return future

    def _work(self) -> None:
        while True:
            _, _, job = self._jobs.get()
            if job is None:
                return
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while queued: skip it
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)

    def shutdown(self) -> None:
        """Run what is queued, then stop the threads."""
        with self._start:
            self._closed = True
            started = self._threads if self._started else []
            for _ in started:
                self._jobs.put((float("inf"), next(self._order), None))
        for thread in started:
            thread.join()
