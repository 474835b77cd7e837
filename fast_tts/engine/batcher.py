"""Dynamic batching for decode stages (vocoders): calls that arrive within a short window run as one batch.

One worker thread owns the model; callers get `concurrent.futures.Future`s (worker threads wait on them, coroutines
await `asyncio.wrap_future`), so the event loop never waits on compute. A caller that gives up cancels its future:
its result is dropped, and the worker and the other callers carry on (the fault that kills FlashTTS's batch worker
cannot happen here: one bad batch fails its own callers only).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from fast_tts.errors import EngineClosedError


@dataclass(eq=False)
class _Job:
    key: Hashable
    item: Any
    future: Future


class DecodeBatcher:
    """Run `fn(key, items) -> results` on batches of up to `max_batch` items that share a key.

    The worker takes the first waiting job, then waits at most `wait_s` for more jobs with the same key.
    """

    def __init__(
        self,
        fn: Callable[[Hashable, Sequence[Any]], Sequence[Any]],
        max_batch: int = 8,
        wait_s: float = 0.01,
        name: str = "decode",
    ) -> None:
        self._fn = fn
        self.max_batch = max_batch
        self.wait_s = wait_s
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._closed = False
        self.batches = 0  # batches run so far (for tests and metrics)
        self.items = 0
        self._thread = threading.Thread(target=self._run, name=f"{name}-batcher", daemon=True)
        self._thread.start()

    def submit(self, key: Hashable, item: Any) -> Future:
        """Queue one item; its result arrives in the returned future (from any thread)."""
        if self._closed:
            raise EngineClosedError("the decode stage was shut down")
        future: Future = Future()
        self._queue.put(_Job(key, item, future))
        return future

    def close(self) -> None:
        """Stop the worker after the jobs already queued."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        held: list[_Job] = []  # jobs taken from the queue that wait for a batch of their own key
        stopping = False
        while held or not stopping:
            job = held.pop(0) if held else self._queue.get()
            if job is None:
                stopping = True
                continue
            batch = [job]
            deadline = time.monotonic() + self.wait_s
            for same in [j for j in held if j.key == job.key][: self.max_batch - 1]:
                held.remove(same)
                batch.append(same)
            while len(batch) < self.max_batch and not stopping:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
                try:
                    nxt = self._queue.get(timeout=timeout)
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                else:
                    (batch if nxt.key == job.key else held).append(nxt)
            self._run_batch(job.key, batch)

    def _run_batch(self, key: Hashable, batch: list[_Job]) -> None:
        live = [j for j in batch if j.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            results, error = self._fn(key, [j.item for j in live]), None
        except Exception as exc:  # one bad batch fails its callers, never the worker
            results, error = [None] * len(live), exc
        self.batches += 1
        self.items += len(live)
        for j, result in zip(live, results):
            if error is not None:
                j.future.set_exception(error)
            else:
                j.future.set_result(result)
