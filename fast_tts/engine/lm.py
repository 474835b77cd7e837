"""The one crossing between a family's synchronous synthesis code and the asynchronous LM backends.

A family's synthesis runs on the engine's worker threads; LM backends (`fast_tts.backends`) are driven from the event
loop. `RequestContext.generate` starts a generation on the loop for code on a worker and returns a `TokenFeed`: a
blocking iterator over the generation's `StepOutput`s, fed from the loop as they are made. When the request ends
(finished, failed or cancelled) the engine closes its context: every generation it started is cancelled in its
backend, and a worker still waiting on a feed gets `RequestCancelled`.
"""

from __future__ import annotations

import asyncio
import queue
from dataclasses import dataclass
from typing import Any

from fast_tts.errors import FastTTSError


class RequestCancelled(FastTTSError):
    """The request this work belongs to has ended; the work stops."""


@dataclass(frozen=True)
class LMCall:
    """One generation: which backend (a `fast_tts.backends.Generator`), the prompt tensor and its SamplingParams."""

    backend: Any
    prompt: Any
    sampling: Any


class TokenFeed:
    """One generation's StepOutputs for a worker thread: iterate (blocking) until it ends; `finish_reason` is then
    set (fast_tts.backends.base.FINISH_*). A backend error is raised from the iteration."""

    _END = object()

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.finish_reason: str | None = None
        self._ended = False

    def put(self, item: Any) -> None:
        """Queue a StepOutput, an exception, or the end (`TokenFeed._END`); called on the event loop."""
        self._queue.put(item)

    def __iter__(self) -> TokenFeed:
        return self

    def __next__(self) -> Any:
        if self._ended:
            raise StopIteration
        item = self._queue.get()
        if item is self._END:
            self._ended = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._ended = True
            raise item
        return item


class RequestContext:
    """Per request: the generations started for it, and `state` for the family's per-request data (e.g. a seeded
    generator shared by its segments)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.state: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._streams: set[Any] = set()
        self._closed = False

    def generate(self, call: LMCall) -> TokenFeed:
        """Start `call` on the event loop (from any thread) and return its feed."""
        feed = TokenFeed()
        self.loop.call_soon_threadsafe(self._start, call, feed)
        return feed

    def _start(self, call: LMCall, feed: TokenFeed) -> None:
        if self._closed:
            feed.put(RequestCancelled("the request has ended"))
            return
        try:
            stream = call.backend.submit(call.prompt, call.sampling)
        except Exception as exc:
            feed.put(exc)
            return
        task = self.loop.create_task(self._pump(stream, feed))
        self._tasks.add(task)
        self._streams.add(stream)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: self._streams.discard(stream))

    @staticmethod
    async def _pump(stream: Any, feed: TokenFeed) -> None:
        try:
            async for step in stream:
                feed.put(step)
            feed.finish_reason = stream.finish_reason
            feed.put(TokenFeed._END)
        except asyncio.CancelledError:
            feed.put(RequestCancelled("the request has ended"))
            raise
        except Exception as exc:
            feed.put(exc)
        finally:
            if not stream.done:
                await stream.cancel()

    async def stop(self) -> None:
        """End every running generation early, as if it had reached its limit: feeds end normally (finish reason
        "cancelled") with what was generated so far (`Chat.interrupt`)."""
        await asyncio.gather(*(stream.cancel() for stream in list(self._streams)))

    async def close(self) -> None:
        """Cancel every generation of this request (on the event loop); waiting workers get RequestCancelled."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
