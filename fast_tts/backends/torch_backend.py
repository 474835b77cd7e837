"""The torch backend: continuous batching of an `LMAdapter` on one worker thread.

Each iteration of the worker's loop is vLLM v1's: `Scheduler.schedule()` plans a step (admission, the prefill
budget, row compaction; scheduler.py), `TorchRunner.execute()` runs it on the tensors (torch_runner.py), and
`Scheduler.update()` accounts the sampled tokens and finishes sequences. Requests reach the worker through an inbox
(new prompts and cancellations), so the scheduler and the runner are only ever touched by the worker thread; records
go to the streams' event loops with one `call_soon_threadsafe` per loop and step. The event loop never waits on
compute.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from fast_tts.backends.base import FINISH_CANCELLED, FINISH_LENGTH, GenerationStream, StepOutput
from fast_tts.backends.scheduler import Finished, Scheduler, Sequence
from fast_tts.backends.torch_runner import Prompt, Sampled, TorchRunner
from fast_tts.errors import EngineClosedError, InvalidInputError
from fast_tts.models.lm import LMAdapter
from fast_tts.sampling import SamplingParams

log = logging.getLogger(__name__)

BURST_WAIT_S = 0.05  # the longest the worker waits for a submitting event loop to finish its current callback


@dataclass(eq=False)
class _Request:
    """A submitted request on the worker side: its stream and what is still to be delivered to it."""

    stream: GenerationStream
    params: SamplingParams
    outbox: list[StepOutput] = field(default_factory=list)
    end: Finished | None = None


class TorchBackend:
    """Generator over an `LMAdapter`: a scheduler and a runner driven by one worker thread."""

    def __init__(
        self,
        adapter: LMAdapter,
        max_batch: int = 8,
        max_seq: int = 2048,
        dtype: str | torch.dtype = "float32",
        device: str | torch.device = "cpu",
        prefill_chunk: int = 256,
        compile: bool = False,
        pack_weights: bool | None = None,
        num_threads: int | None = None,
        kv_dtype: str | torch.dtype | None = None,
        quantize: str | None = None,
    ) -> None:
        for name, value, low in (("max_batch", max_batch, 1), ("max_seq", max_seq, 2),
                                 ("prefill_chunk", prefill_chunk, 1)):
            if value < low:
                raise InvalidInputError(f"{name} must be >= {low}", name)
        self.adapter = adapter
        self.max_batch, self.max_seq, self.prefill_chunk = max_batch, max_seq, prefill_chunk
        self.runner = TorchRunner(adapter, max_batch, max_seq, dtype, device, compile, pack_weights, kv_dtype,
                                  quantize)
        self.scheduler = Scheduler(max_batch, max_seq, prefill_chunk)
        self.dtype, self.device = self.runner.dtype, self.runner.device
        self.num_codebooks, self.vocab_size = self.runner.num_codebooks, self.runner.vocab_size
        self.hidden_size = self.runner.hidden_size
        self._requests: dict[int, _Request] = {}  # worker side
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._ids = itertools.count()
        self._lock = threading.Lock()  # orders submissions against shutdown
        self._closed = False
        # torch's intra-op thread count is fixed per thread when it first runs an op, so the worker sets its own
        self._threads = num_threads or torch.get_num_threads()
        self._threads_applied = 0
        self._thread = threading.Thread(target=self._run, name="fast-tts-torch-backend", daemon=True)
        self._thread.start()

    # ---- caller side (any thread) ---------------------------------------------------------------------------
    def submit(self, prompt: torch.Tensor, params: SamplingParams) -> GenerationStream:
        """Queue a prompt (ids (T, C) or embeddings (T, H)) and return its stream; call from the event loop."""
        if self._closed:
            raise EngineClosedError("the torch backend was shut down")
        if not isinstance(params, SamplingParams):
            raise InvalidInputError("params must be a SamplingParams", "params")
        params.check_model(self.num_codebooks, self.vocab_size)
        if not isinstance(prompt, torch.Tensor) or prompt.dim() != 2 or prompt.shape[0] == 0:
            raise InvalidInputError("prompt must be a non-empty 2-D tensor: ids (T, C) or embeddings (T, H)", "prompt")
        is_ids = not prompt.is_floating_point()
        width = self.num_codebooks if is_ids else self.hidden_size
        if prompt.shape[1] != width:
            kind = "token ids" if is_ids else "embeddings"
            raise InvalidInputError(f"prompt {kind} must have {width} columns, got {prompt.shape[1]}", "prompt")
        if prompt.shape[0] > self.max_seq:
            raise InvalidInputError(f"prompt has {prompt.shape[0]} positions; the limit is {self.max_seq}", "prompt")
        request_id = next(self._ids)
        stream = GenerationStream(request_id, self.num_codebooks, lambda s: self._inbox.put(("cancel", s.request_id)))
        if params.max_new_tokens == 0:
            stream.deliver([], finish=FINISH_LENGTH)
            return stream
        with self._lock:
            if self._closed:
                raise EngineClosedError("the torch backend was shut down")
            self._inbox.put(("add", (stream, Prompt(prompt.detach().to(self.device), is_ids, params))))
        return stream

    def set_num_threads(self, n: int) -> None:
        """Intra-op threads of the worker from its next iteration (torch.set_num_threads elsewhere does not reach
        it)."""
        if n < 1:
            raise InvalidInputError("num_threads must be >= 1", "num_threads")
        self._threads = n
        self._inbox.put(("wake", None))

    def stats(self) -> dict[str, int]:
        """Running requests (decoding or prefilling), waiting requests, and cache rows."""
        return {"active": len(self.scheduler.rows), "queue_depth": len(self.scheduler.waiting),
                "capacity": self.max_batch}

    async def shutdown(self) -> None:
        """Stop the worker thread; unfinished streams end with EngineClosedError."""
        import asyncio

        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._inbox.put(("stop", None))
        await asyncio.to_thread(self._thread.join)

    # ---- worker side ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        with torch.no_grad():
            while self._take_inbox():
                if self._threads != self._threads_applied:
                    torch.set_num_threads(self._threads)
                    self._threads_applied = self._threads
                plan = self.scheduler.schedule()
                if plan.empty:
                    continue
                try:
                    result, sampled = self.runner.execute(plan)
                    deliver, finished = self.scheduler.update(plan, result)
                except Exception as exc:
                    log.exception("torch backend step failed")
                    deliver, finished, sampled = [], self.scheduler.fail_all(exc), {}
                self._emit(deliver, sampled, finished)
        closed = EngineClosedError("the torch backend was shut down")
        for seq in self.scheduler.drain():
            self._end(Finished(seq.request_id, "", closed))
        for message, payload in _drain(self._inbox):
            if message == "add":
                payload[0].push_threadsafe([], error=closed)
        self._flush()

    def _take_inbox(self) -> bool:
        """Handle new requests and cancellations; block while there is nothing to do. False once shut down."""
        block = idle = not self.scheduler.has_work
        while True:
            try:
                message, payload = self._inbox.get(block=block)
            except queue.Empty:
                return True
            block = False
            if message == "stop":
                return False
            if message == "add":
                stream, prompt = payload
                self._requests[stream.request_id] = _Request(stream, prompt.params)
                self.runner.add(stream.request_id, prompt)
                self.scheduler.add(Sequence(stream.request_id, prompt.tensor.shape[0], prompt.params.max_new_tokens))
                if idle:  # the first prompt after a pause: no running row waits meanwhile
                    idle = False
                    _wait_for_callback(stream.loop)
            elif message == "cancel":
                gone = self.scheduler.cancel(payload)
                if gone is not None:
                    self._end(gone)
                    self._flush()

    def _emit(self, deliver: list[int], sampled: dict[int, Sampled], finished: list[Finished]) -> None:
        for request_id in deliver:
            req = self._requests[request_id]
            step = sampled[request_id]
            req.outbox.append(StepOutput(step.tokens, step.hidden if req.params.return_hidden else None))
        for end in finished:
            self._end(end)
        self._flush()

    def _end(self, end: Finished) -> None:
        """Mark a request finished; its stream ends at the next flush."""
        req = self._requests.get(end.request_id)
        if req is not None:
            req.end = end
        self.runner.drop(end.request_id)

    def _flush(self) -> None:
        """Send the records made since the last flush, one callback per event loop."""
        by_loop: dict[Any, list[tuple[GenerationStream, list[StepOutput], Finished | None]]] = {}
        for request_id, req in list(self._requests.items()):
            if not req.outbox and req.end is None:
                continue
            by_loop.setdefault(req.stream.loop, []).append((req.stream, req.outbox, req.end))
            req.outbox = []
            if req.end is not None:
                del self._requests[request_id]
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver_all, batch)
            except RuntimeError:  # that event loop is closed: nobody reads these streams any more
                for stream, _, end in batch:
                    if end is None:
                        self._inbox.put(("cancel", stream.request_id))


def _wait_for_callback(loop: Any) -> None:
    """Wait (briefly) until `loop` has run its current callback: prompts submitted in one go from one callback (a
    `Chat.infer` batch, requests that arrived together) then all reach the inbox before an idle worker plans its
    first step, so they are admitted together instead of split by the worker waking up between two of them. (A
    busy worker does not wait: it admits what has arrived at each step.)"""
    done = threading.Event()
    try:
        loop.call_soon_threadsafe(done.set)
    except RuntimeError:  # that event loop is closed
        return
    done.wait(BURST_WAIT_S)


def _drain(inbox: queue.SimpleQueue) -> list[Any]:
    items = []
    while True:
        try:
            items.append(inbox.get_nowait())
        except queue.Empty:
            return items


def _deliver_all(batch: list[tuple[GenerationStream, list[StepOutput], Finished | None]]) -> None:
    for stream, items, end in batch:
        if end is None:
            stream.deliver(items)
        elif end.error is not None:
            stream.deliver(items, error=end.error)
        else:
            stream.deliver(items, finish=end.reason or FINISH_CANCELLED)
