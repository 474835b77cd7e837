"""The shared frame of the backends that drive an external engine from one worker thread (llama.cpp, MLX).

The asyncio side validates and queues requests and never waits on compute; the worker thread admits queued requests
into free engine slots, lets the engine run one iteration over the running ones (`_step`), and delivers each
request's new records with one `call_soon_threadsafe` per event loop per iteration. Cancelling marks a request;
the worker releases its slot before the stream ends. An engine error in one iteration fails the requests of that
iteration and nothing else: the worker keeps serving the others and later ones.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from fast_tts.backends.base import FINISH_CANCELLED, FINISH_LENGTH, FINISH_STOP, GenerationStream, StepOutput
from fast_tts.errors import EngineClosedError, InvalidInputError, UnsupportedOperationError
from fast_tts.sampling import SamplingParams

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Request:
    """One request as the worker sees it; `slot` and `state` belong to the engine."""

    stream: GenerationStream
    prompt: torch.Tensor  # (T, C) ids or (T, H) float32 embeddings, on the CPU
    is_ids: bool
    params: SamplingParams
    prefilled: int = 0  # prompt positions the engine has consumed
    generated: int = 0  # tokens sampled (a stop token included)
    cancelled: bool = False
    slot: int = -1
    state: Any = None
    last: Any = None  # what the engine feeds at the next step: the last token, or its embedding
    outbox: list[StepOutput] = field(default_factory=list)
    end: tuple[str | None, BaseException | None] | None = None

    @property
    def prompt_len(self) -> int:
        return self.prompt.shape[0]


def refuse(field_name: str, backend: str, why: str) -> UnsupportedOperationError:
    """The error for a SamplingParams field a backend cannot honour."""
    return UnsupportedOperationError(f"backend {backend!r} does not support {field_name}: {why}")


class WorkerBackend:
    """Generator frame: subclasses set the sizes in `__init__` and implement `_start`, `_release` and `_step`."""

    name = "worker"

    def __init__(self, num_codebooks: int, hidden_size: int, vocab_size: int, max_batch: int, max_seq: int,
                 ids_only: bool) -> None:
        if not isinstance(max_batch, int) or max_batch < 1:
            raise InvalidInputError("max_batch must be an integer >= 1", "max_batch")
        if not isinstance(max_seq, int) or max_seq < 2:
            raise InvalidInputError("max_seq must be an integer >= 2", "max_seq")
        self.num_codebooks, self.hidden_size, self.vocab_size = num_codebooks, hidden_size, vocab_size
        self.max_batch, self.max_seq, self.ids_only = max_batch, max_seq, ids_only
        self._running: list[Request] = []
        self._waiting: deque[Request] = deque()
        self._lock = threading.Lock()
        self._inbox: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._ended: list[Request] = []
        self._ids = itertools.count()
        self._closed = False
        self._thread: threading.Thread | None = None

    def _start_worker(self) -> None:
        """Start the worker thread (subclasses call it at the end of their constructor)."""
        self._thread = threading.Thread(target=self._run, name=f"fast-tts-{self.name}", daemon=True)
        self._thread.start()

    # ---- asyncio side ---------------------------------------------------------------------------------------
    def check_params(self, params: SamplingParams) -> None:
        """Raise for settings the engine cannot honour (subclasses extend)."""
        params.check_model(self.num_codebooks, self.vocab_size)

    def submit(self, prompt: torch.Tensor, params: SamplingParams) -> GenerationStream:
        """Queue a prompt (ids (T, C) or embeddings (T, H)) and return its stream; call from the event loop."""
        if self._closed:
            raise EngineClosedError(f"the {self.name} backend was shut down")
        if not isinstance(params, SamplingParams):
            raise InvalidInputError("params must be a SamplingParams", "params")
        self.check_params(params)
        if not isinstance(prompt, torch.Tensor) or prompt.dim() != 2 or prompt.shape[0] == 0:
            raise InvalidInputError("prompt must be a non-empty 2-D tensor: ids (T, C) or embeddings (T, H)", "prompt")
        is_ids = not prompt.is_floating_point()
        if not is_ids and self.ids_only:
            raise InvalidInputError(f"the {self.name} backend runs this model on token ids, not embeddings", "prompt")
        width = self.num_codebooks if is_ids else self.hidden_size
        if prompt.shape[1] != width:
            kind = "token ids" if is_ids else "embeddings"
            raise InvalidInputError(f"prompt {kind} must have {width} columns, got {prompt.shape[1]}", "prompt")
        if prompt.shape[0] >= self.max_seq:
            raise InvalidInputError(f"prompt has {prompt.shape[0]} positions; the limit is {self.max_seq - 1}",
                                    "prompt")
        prompt = prompt.detach().cpu()
        if is_ids and (int(prompt.min()) < 0 or int(prompt.max()) >= self.vocab_size):
            raise InvalidInputError(f"prompt token ids must be in [0, {self.vocab_size})", "prompt")
        if not is_ids:
            prompt = prompt.float()
            if not bool(torch.isfinite(prompt).all()):
                raise InvalidInputError("prompt embeddings must be finite", "prompt")
        req = Request(None, prompt, is_ids, params)  # type: ignore[arg-type]
        req.stream = GenerationStream(next(self._ids), self.num_codebooks, lambda _stream: self._cancel(req))
        if params.max_new_tokens == 0:
            req.stream.deliver([], finish=FINISH_LENGTH)
            return req.stream
        with self._lock:
            if self._closed:
                raise EngineClosedError(f"the {self.name} backend was shut down")
            self._waiting.append(req)
        self._inbox.put(None)
        return req.stream

    def _cancel(self, req: Request) -> None:
        req.cancelled = True
        self._inbox.put(None)

    def stats(self) -> dict[str, int]:
        """Running requests, waiting requests, and slots."""
        return {"active": len(self._running), "queue_depth": len(self._waiting), "capacity": self.max_batch}

    async def shutdown(self) -> None:
        """Stop the worker; unfinished streams end with EngineClosedError; the engine is freed."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._inbox.put(None)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    # ---- engine hooks (worker thread) -----------------------------------------------------------------------
    def _start(self, req: Request) -> None:
        """Give `req` an engine slot (called once, when it is admitted)."""
        raise NotImplementedError

    def _release(self, req: Request) -> None:
        """Free `req`'s engine slot (finished, cancelled or failed)."""
        raise NotImplementedError

    def _step(self) -> None:
        """One engine iteration over `self._running`: call `_emit` for each sampled step."""
        raise NotImplementedError

    def _close_engine(self) -> None:
        """Free the engine (worker thread, after the last iteration)."""

    # ---- worker side ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            with torch.no_grad():
                while self._take_inbox():
                    try:
                        self._reap_cancelled()
                        self._admit()
                        if self._running:
                            self._step()
                    except Exception as exc:  # an engine error fails this iteration's requests, not the worker
                        log.exception("%s backend iteration failed", self.name)
                        for req in list(self._running):
                            self._drop(req, error=exc)
                    self._flush()
        finally:
            closed = EngineClosedError(f"the {self.name} backend was shut down")
            with self._lock:
                left = [*self._running, *self._waiting]
                self._running, self._waiting = [], deque()
            for req in left:
                req.stream.push_threadsafe(req.outbox, error=closed)
            self._close_engine()

    def _take_inbox(self) -> bool:
        """Drain wake-ups; block while there is nothing to do. False once shut down."""
        block = not self._running and not self._waiting
        while True:
            try:
                self._inbox.get(block=block)
            except queue.Empty:
                return not self._closed
            block = False
            if self._closed:
                return False

    def _reap_cancelled(self) -> None:
        with self._lock:
            gone = [r for r in self._waiting if r.cancelled]
            for req in gone:
                self._waiting.remove(req)
        for req in gone:
            self._finish(req, FINISH_CANCELLED)
        for req in [r for r in self._running if r.cancelled]:
            self._drop(req, FINISH_CANCELLED)

    def _admit(self) -> None:
        while len(self._running) < self.max_batch:
            with self._lock:
                if not self._waiting:
                    return
                req = self._waiting.popleft()
            try:
                self._start(req)
            except Exception as exc:  # e.g. an engine refusing this request's settings: it fails alone
                log.debug("%s: request %d failed to start", self.name, req.stream.request_id, exc_info=True)
                self._finish(req, error=exc)
                continue
            self._running.append(req)

    def _drop(self, req: Request, reason: str | None = None, error: BaseException | None = None) -> None:
        """Remove a running request, free its slot, and end its stream."""
        self._running.remove(req)
        try:
            self._release(req)
        except Exception:  # the request ends either way; a slot that failed to free is the engine's to report
            log.exception("%s: freeing request %d failed", self.name, req.stream.request_id)
        self._finish(req, reason, error)

    def _emit(self, req: Request, tokens: torch.Tensor, hidden: torch.Tensor | None = None) -> bool:
        """Account one sampled step (tokens (C,)); True when the request finished (and was dropped)."""
        req.generated += 1
        if any(int(t) in req.params.stop_token_ids for t in tokens.tolist()):
            self._drop(req, FINISH_STOP)
            return True
        req.outbox.append(StepOutput(tokens, hidden if req.params.return_hidden else None))
        if req.generated >= req.params.max_new_tokens or req.prompt_len + req.generated >= self.max_seq:
            self._drop(req, FINISH_LENGTH)
            return True
        return False

    def _finish(self, req: Request, reason: str | None = None, error: BaseException | None = None) -> None:
        req.end = (reason, error)
        self._ended.append(req)

    def _flush(self) -> None:
        """Send this iteration's records, one callback per event loop."""
        by_loop: dict[Any, list[tuple[GenerationStream, list[StepOutput], tuple | None]]] = {}
        for req in self._running:
            if req.outbox:
                by_loop.setdefault(req.stream.loop, []).append((req.stream, req.outbox, None))
                req.outbox = []
        for req in self._ended:
            by_loop.setdefault(req.stream.loop, []).append((req.stream, req.outbox, req.end))
            req.outbox = []
        self._ended = []
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver_all, batch)
            except RuntimeError:  # that event loop is closed: nobody reads these streams any more
                for req in self._running:
                    if req.stream.loop is loop:
                        req.cancelled = True


def _deliver_all(batch: list[tuple[GenerationStream, list[StepOutput], tuple | None]]) -> None:
    for stream, items, end in batch:
        stream.deliver(items, *(end or (None, None)))
