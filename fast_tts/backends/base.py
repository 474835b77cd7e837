"""The Generator protocol every LM backend implements, and the async stream it returns.

A backend takes a prompt (token ids (T, num_codebooks) or input embeddings (T, H)) with `SamplingParams` and
answers with a `GenerationStream`: an async iterator of `StepOutput` records, one per generated step, that the
caller can cancel. The worker side pushes records with `GenerationStream.push_threadsafe`, which never blocks it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from fast_tts.errors import ModelLoadError, UnsupportedOperationError
from fast_tts.models.lm import LMSource
from fast_tts.sampling import SamplingParams

FINISH_STOP = "stop"  # a stop token was sampled (not returned)
FINISH_LENGTH = "length"  # max_new_tokens reached or the KV cache is full
FINISH_CANCELLED = "cancelled"
FINISH_ERROR = "error"  # the request failed (its stream raises the error)


@dataclass(frozen=True)
class StepOutput:
    """One generated step: token ids (num_codebooks,) and, when asked for, the hidden state (H,) that predicted them."""

    token_ids: torch.Tensor
    hidden: torch.Tensor | None = None


@dataclass(frozen=True)
class GenerationResult:
    """A finished request: tokens (T, num_codebooks), hiddens (T, H) or None, and why it stopped."""

    token_ids: torch.Tensor
    hiddens: torch.Tensor | None
    finish_reason: str


class GenerationStream:
    """Async iterator over one request's `StepOutput`s; `finish_reason` is set once it ends."""

    _END = object()

    def __init__(self, request_id: int, num_codebooks: int, cancel_fn: Callable[[GenerationStream], None]) -> None:
        self.request_id = request_id
        self.num_codebooks = num_codebooks
        self.finish_reason: str | None = None
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._cancel_fn = cancel_fn
        self._done = self._loop.create_future()
        self._exhausted = False

    # -- worker side (any thread) -----------------------------------------------------------------------------
    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def deliver(self, items: list[StepOutput], finish: str | None = None, error: BaseException | None = None) -> None:
        """Queue records and, when given, the end of the stream; must run on the stream's loop."""
        for item in items:
            self._queue.put_nowait(item)
        if finish is not None or error is not None:
            if self._done.done():
                return
            self.finish_reason = finish
            self._queue.put_nowait(error if error is not None else self._END)
            self._done.set_result(finish)

    def push_threadsafe(
        self, items: list[StepOutput], finish: str | None = None, error: BaseException | None = None
    ) -> None:
        """`deliver` from the worker thread without blocking it (a no-op once the stream's loop is closed)."""
        with contextlib.suppress(RuntimeError):  # the event loop is closed; nobody is reading
            self._loop.call_soon_threadsafe(self.deliver, items, finish, error)

    # -- caller side -------------------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self._done.done()

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> StepOutput:
        if self._exhausted:
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is self._END:
            self._exhausted = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._exhausted = True
            raise item
        return item

    async def cancel(self) -> None:
        """Stop generating; returns once the backend has released the request's slot."""
        if not self._done.done():
            self._cancel_fn(self)
        await asyncio.shield(self._done)

    async def aclose(self) -> None:
        """Close the stream early (same as `cancel`)."""
        await self.cancel()

    async def wait_finished(self) -> str | None:
        """Wait until the request has finished (records may still be unread)."""
        return await asyncio.shield(self._done)

    async def collect(self) -> GenerationResult:
        """Read the whole stream into one result."""
        tokens, hiddens = [], []
        async for step in self:
            tokens.append(step.token_ids)
            if step.hidden is not None:
                hiddens.append(step.hidden)
        ids = torch.stack(tokens) if tokens else torch.zeros(0, self.num_codebooks, dtype=torch.long)
        hid = torch.stack(hiddens) if hiddens else None
        return GenerationResult(ids, hid, self.finish_reason or FINISH_STOP)


@runtime_checkable
class Generator(Protocol):
    """An LM backend: submit prompts, stream tokens, cancel, shut down."""

    def submit(self, prompt: torch.Tensor, params: SamplingParams) -> GenerationStream:
        """Start generating for `prompt`: token ids (T, num_codebooks) int or embeddings (T, H) float.

        Must be called from a running event loop; raises InvalidInputError for a bad prompt or parameters and
        EngineClosedError after shutdown.
        """
        ...

    def stats(self) -> dict[str, int]:
        """Counts for monitoring: running, waiting, capacity."""
        ...

    async def shutdown(self) -> None:
        """Stop the worker; unfinished streams end with EngineClosedError."""
        ...


def checkpoint_source(source: LMSource | None, backend: str, own_heads_refused: str | None = None) -> LMSource:
    """The checkpoint folder a backend that loads weights from disk needs (`adapter.source`). With
    `own_heads_refused` (the reason), a model whose logits come from heads outside its folder is refused too."""
    if source is None:
        raise ModelLoadError(f"the {backend} backend loads weights from disk, and this model has no checkpoint "
                             "folder (adapter.source is None)")
    if own_heads_refused is not None and not source.stock_head:
        raise UnsupportedOperationError(f"the {backend} backend runs stock causal LMs only: {own_heads_refused}")
    return source
