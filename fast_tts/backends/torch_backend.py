"""The torch backend: one worker thread, a slot-based KV cache and continuous batching.

Scheduling, in one loop on the worker thread:
- new requests wait in a FIFO queue and take a cache row when one is free (at most `max_batch` rows);
- cache rows are kept compacted: rows 0..D-1 hold decoding requests (so decode reads the cache through views), rows
  D.. hold requests still being prefilled, in arrival order; when a request leaves, the last decoding row moves
  into its hole (only the positions written so far are copied);
- every iteration prefills at most `prefill_chunk` prompt tokens of newcomers, then runs one decode step for all
  decoding rows, so a burst of arrivals stalls running streams by one bounded chunk per step;
- sampling runs once per step for the whole batch with per-row parameters (`fast_tts.sampling.BatchSampler`);
- records go to the asyncio side with one `call_soon_threadsafe` per step; the event loop never waits on compute.

On CPU the decoder's linear layers are swapped for packed ones (`pack_weights`, see cpu_linear.py): bf16 weights go
to our tiled kernel where the CPU has AVX-512 BF16 and a C compiler is present, and decode steps then run through
`cpu_decode.NativeDecoder`; everything else uses oneDNN's prepacked layout.
`compile=True` wraps the decoder in `torch.compile(dynamic=True)` (and then skips the manual packing): off by default,
because on the 2-core build CPU the first step took ~6 minutes to compile and later steps ran slower than eager
(bf16, batch 1: 670 vs 130 ms wall under load). Worth trying on a GPU.
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

from fast_tts.backends.base import (
    FINISH_CANCELLED,
    FINISH_LENGTH,
    FINISH_STOP,
    GenerationStream,
    StepOutput,
)
from fast_tts.backends.cpu_decode import NativeDecoder
from fast_tts.backends.cpu_linear import pack_linears, packing_available
from fast_tts.models.lm import LMAdapter
from fast_tts.errors import EngineClosedError, InvalidInputError
from fast_tts.sampling import BatchSampler, SamplingParams

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Map a dtype name ("float32", "bfloat16", "auto") to a torch dtype; "auto" picks bf16 where it runs fast."""
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16):
            raise InvalidInputError(f"dtype must be float32 or bfloat16, got {dtype}", "dtype")
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if bf16_supported() else torch.float32
    if dtype not in _DTYPES:
        raise InvalidInputError(f"dtype must be one of float32, bfloat16, auto; got {dtype!r}", "dtype")
    return _DTYPES[dtype]


def bf16_supported(device: str | torch.device = "cpu") -> bool:
    """True when bf16 matmuls have hardware support (AVX-512 BF16 / AMX on CPU, Ampere+ on CUDA)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@dataclass(eq=False)
class _Request:
    stream: GenerationStream
    prompt: torch.Tensor  # (T, C) ids or (T, H) embeddings
    is_ids: bool
    params: SamplingParams
    prefilled: int = 0  # prompt positions already in the cache
    generated: int = 0  # tokens sampled (including a stop token)
    cancelled: bool = False
    outbox: list[StepOutput] = field(default_factory=list)  # records not yet delivered
    end: tuple[str | None, BaseException | None] | None = None  # (finish reason, error) once finished

    @property
    def prompt_len(self) -> int:
        return self.prompt.shape[0]


class TorchBackend:
    """Generator over an `LMAdapter`, batching requests continuously on one worker thread."""

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
    ) -> None:
        if max_batch < 1:
            raise InvalidInputError("max_batch must be >= 1", "max_batch")
        if max_seq < 2:
            raise InvalidInputError("max_seq must be >= 2", "max_seq")
        if prefill_chunk < 1:
            raise InvalidInputError("prefill_chunk must be >= 1", "prefill_chunk")
        self.adapter = adapter
        self.max_batch, self.max_seq, self.prefill_chunk = max_batch, max_seq, prefill_chunk
        self.dtype = resolve_dtype(dtype)
        self.device = torch.device(device)
        self.model = adapter.transformer
        self.model.to(device=self.device, dtype=self.dtype)  # the backend owns the adapter from here on
        prepare = getattr(adapter, "prepare_for_backend", None)
        if callable(prepare):
            prepare(self.dtype, self.device)
        if pack_weights is None:  # torch.compile does its own weight packing (inductor freezing)
            pack_weights = self.device.type == "cpu" and not compile and packing_available(self.dtype)
        self.packed = pack_weights and pack_linears(self.model) > 0
        # On CPU a bf16 cache (half the bytes each step reads) goes with the native decode kernels, and torch
        # attention widens it to float32; without those kernels the cache is float32, where CPU SDPA is fastest.
        if kv_dtype is None:
            native = not compile and NativeDecoder.supports(self.model)
            kv_dtype = self.dtype if self.device.type != "cpu" or native else torch.float32
        self.kv_dtype = resolve_dtype(kv_dtype)
        self.model.setup_cache(max_batch, max_seq, self.kv_dtype)
        self.num_codebooks = adapter.num_codebooks
        self.hidden_size = self.model.config.hidden_size
        with torch.no_grad():
            probe = adapter.logits(torch.zeros(1, self.hidden_size, device=self.device))
        self.vocab_size = int(probe.shape[-1])
        self.sampler = BatchSampler(max_batch, self.num_codebooks, self.vocab_size, max_seq, self.device)
        self._forward = torch.compile(self.model, dynamic=True) if compile else self.model
        # bf16 decode steps on CPU run through the native kernels when the layers were tiled (cpu_decode.py)
        self._native_decode = None if compile else NativeDecoder.for_model(self.model)
        self._last = torch.zeros(max_batch, self.num_codebooks, dtype=torch.long, device=self.device)
        self._pos = torch.zeros(max_batch, dtype=torch.long, device=self.device)
        self._rows: list[_Request] = []  # index = cache row; [:_decoding] decode, the rest are being prefilled
        self._decoding = 0
        self._waiting: deque[_Request] = deque()  # FIFO of admitted-later requests, guarded by _lock
        self._lock = threading.Lock()
        self._inbox: queue.SimpleQueue[None] = queue.SimpleQueue()  # wake-ups only
        self._ended: list[_Request] = []  # finished this iteration; delivered by _flush after their rows are freed
        self._ids = itertools.count()
        self._closed = False
        # torch's intra-op thread count is fixed per thread when it first runs an op, so the worker sets its own
        self._threads = num_threads or torch.get_num_threads()
        self._threads_applied = 0
        self._thread = threading.Thread(target=self._run, name="fast-tts-torch-backend", daemon=True)
        self._thread.start()

    # ---- asyncio side ---------------------------------------------------------------------------------------
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
        req = _Request(None, prompt.detach().to(self.device), is_ids, params)  # type: ignore[arg-type]
        req.stream = GenerationStream(next(self._ids), self.num_codebooks, lambda _stream: self._cancel(req))
        if params.max_new_tokens == 0:
            req.stream.deliver([], finish=FINISH_LENGTH)
            return req.stream
        with self._lock:
            if self._closed:
                raise EngineClosedError("the torch backend was shut down")
            self._waiting.append(req)
        self._inbox.put(None)  # wake the worker
        return req.stream

    def _cancel(self, req: _Request) -> None:
        req.cancelled = True
        self._inbox.put(None)  # wake the worker

    def set_num_threads(self, n: int) -> None:
        """Intra-op threads of the worker from its next iteration (torch.set_num_threads elsewhere does not reach it)."""
        if n < 1:
            raise InvalidInputError("num_threads must be >= 1", "num_threads")
        self._threads = n
        self._inbox.put(None)

    def stats(self) -> dict[str, int]:
        """Running requests (decoding or prefilling), waiting requests, and cache rows."""
        return {"active": len(self._rows), "queue_depth": len(self._waiting), "capacity": self.max_batch}

    async def shutdown(self) -> None:
        """Stop the worker thread; unfinished streams end with EngineClosedError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._inbox.put(None)
        await asyncio.to_thread(self._thread.join)

    # ---- worker side ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        with torch.no_grad():
            while self._take_inbox():
                if self._threads != self._threads_applied:
                    torch.set_num_threads(self._threads)
                    self._threads_applied = self._threads
                try:
                    self._reap_cancelled()
                    self._admit()
                    if len(self._rows) > self._decoding:
                        self._prefill()
                    if self._decoding:
                        self._decode()
                except Exception as exc:  # a scheduler bug must not leave streams hanging: fail the running ones
                    log.exception("torch backend iteration failed")
                    self._fail_running(exc)
                self._flush()
        closed = EngineClosedError("the torch backend was shut down")
        with self._lock:
            left = [*self._rows, *self._waiting]
            self._rows, self._waiting = [], deque()
        for req in left:
            req.stream.push_threadsafe(req.outbox, error=closed)

    def _fail_running(self, exc: BaseException) -> None:
        for row, req in enumerate(self._rows):
            self._finish(req, error=exc)
            self.sampler.clear_row(row)
        self._rows, self._decoding = [], 0

    def _take_inbox(self) -> bool:
        """Drain wake-ups; block while there is nothing to do. False once shut down."""
        block = not self._rows and not self._waiting
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
        for row in range(len(self._rows) - 1, -1, -1):
            if self._rows[row].cancelled:
                self._finish(self._rows[row], FINISH_CANCELLED)
                self._remove_row(row)

    def _admit(self) -> None:
        with self._lock:
            while self._waiting and len(self._rows) < self.max_batch:
                self._rows.append(self._waiting.popleft())

    def _prefill(self) -> None:
        """Prefill newcomers in row order, at most `prefill_chunk` prompt positions in all.

        Newcomers whose whole remaining prompt fits in the budget go through one padded forward together (a burst of
        short prompts reads the weights once); a longer prompt is prefilled alone, one chunk per iteration.
        """
        budget = self.prefill_chunk
        while budget > 0 and len(self._rows) > self._decoding:
            group = self._short_prompts(budget)
            if len(group) > 1 and self._prefill_group(group):
                budget -= sum(r.prompt_len - r.prefilled for r in group)
                continue
            row = self._decoding
            req = self._rows[row]
            start = req.prefilled
            end = min(req.prompt_len, start + budget)
            try:
                chunk = req.prompt[start:end]
                x = self.adapter.embed(chunk[None]) if req.is_ids else chunk[None]
                positions = torch.arange(start, end, device=self.device)[None]
                h = self.model(x.to(self.dtype), positions, rows=slice(row, row + 1), kv_len=end)
                budget -= end - start
                req.prefilled = end
                if end < req.prompt_len:
                    return
                self.sampler.set_row(row, req.params)
                hidden = h[:, -1].float()
                tokens, stopped = self.sampler.sample(self.adapter.logits(hidden), slice(row, row + 1))
            except Exception as exc:  # a bad request fails alone
                log.debug("request %d failed in prefill", req.stream.request_id, exc_info=True)
                self.sampler.clear_row(row)
                self._finish(req, error=exc)
                self._remove_row(row)
                continue
            self._last[row] = tokens[0]
            self._pos[row] = req.prompt_len
            self._decoding += 1
            if self._record(req, tokens[0], bool(stopped[0]), hidden[0], req.prompt_len):
                self._remove_row(row)

    def _short_prompts(self, budget: int) -> list[_Request]:
        """The run of newcomers from row D whose remaining prompts all fit in `budget` (and the cache unpadded)."""
        group: list[_Request] = []
        width = 0
        for req in self._rows[self._decoding :]:
            left = req.prompt_len - req.prefilled
            width = max(width, left)
            if left > budget or any(r.prefilled + width > self.max_seq for r in (*group, req)):
                break
            group.append(req)
            budget -= left
        return group

    def _prefill_group(self, group: list[_Request]) -> bool:
        """Finish the prefill of rows D..D+k-1 in one padded forward; False (nothing changed) if that failed.

        Padding positions write K/V past each prompt's end; a row's decode overwrites a position before reading it
        and masks keys by position, so that padding is never read.
        """
        first, k = self._decoding, len(group)
        lefts = [r.prompt_len - r.prefilled for r in group]
        width = max(lefts)
        try:
            x = torch.zeros(k, width, self.hidden_size, dtype=self.dtype, device=self.device)
            for i, req in enumerate(group):
                chunk = req.prompt[req.prefilled :]
                x[i, : lefts[i]] = (self.adapter.embed(chunk[None])[0] if req.is_ids else chunk).to(self.dtype)
            starts = torch.tensor([r.prefilled for r in group], device=self.device)
            positions = starts[:, None] + torch.arange(width, device=self.device)
            kv_len = max(r.prefilled for r in group) + width
            h = self.model(x, positions, rows=slice(first, first + k), kv_len=kv_len)
        except Exception:  # let the one-by-one path find (and fail) the bad request
            log.debug("grouped prefill failed; prefilling one by one", exc_info=True)
            return False
        last = torch.tensor(lefts, device=self.device) - 1
        hidden = h[torch.arange(k, device=self.device), last].float()
        for i, req in enumerate(group):
            req.prefilled = req.prompt_len
            self.sampler.set_row(first + i, req.params)
        tokens, stopped = self.sampler.sample(self.adapter.logits(hidden), slice(first, first + k))
        stop_list = stopped.tolist()
        self._last[first : first + k] = tokens
        self._pos[first : first + k] = torch.tensor([r.prompt_len for r in group], device=self.device)
        self._decoding += k
        done = [
            first + i
            for i, req in enumerate(group)
            if self._record(req, tokens[i], stop_list[i], hidden[i], req.prompt_len)
        ]
        for row in reversed(done):
            self._remove_row(row)
        return True

    def _decode(self) -> None:
        """One decode step for rows 0..D-1."""
        d = self._decoding
        rows = slice(0, d)
        kv_len = max(r.prompt_len + r.generated for r in self._rows[:d])
        try:
            x = self.adapter.embed(self._last[:d, None, :]).to(self.dtype)
            if self._native_decode is not None:
                h = self._native_decode(x, self._pos[:d, None], rows)
            else:
                h = self._forward(x, self._pos[:d, None], rows=rows, kv_len=kv_len)
            hidden = h[:, 0].float()
            tokens, stopped = self.sampler.sample(self.adapter.logits(hidden), rows)
        except Exception as exc:  # cannot blame one row: fail the step's requests, keep the worker alive
            log.exception("decode step failed")
            for row in range(d - 1, -1, -1):
                self._finish(self._rows[row], error=exc)
                self._remove_row(row)
            return
        self._last[:d] = tokens
        self._pos[:d] += 1
        stop_list = stopped.tolist()
        done = []
        for row, req in enumerate(self._rows[:d]):
            if self._record(req, tokens[row], stop_list[row], hidden[row], req.prompt_len + req.generated):
                done.append(row)
        for row in reversed(done):
            self._remove_row(row)

    def _record(self, req: _Request, tokens: torch.Tensor, stopped: bool, hidden: torch.Tensor, next_pos: int) -> bool:
        """Account one sampled step for `req`; True when it finished (the caller frees its row)."""
        req.generated += 1
        if stopped:
            self._finish(req, FINISH_STOP)
            return True
        req.outbox.append(StepOutput(tokens, hidden if req.params.return_hidden else None))
        if req.generated >= req.params.max_new_tokens or next_pos >= self.max_seq:
            self._finish(req, FINISH_LENGTH)
            return True
        return False

    def _finish(self, req: _Request, reason: str | None = None, error: BaseException | None = None) -> None:
        req.end = (reason, error)
        self._ended.append(req)

    def _flush(self) -> None:
        """Send this step's records, one callback per event loop."""
        by_loop: dict[Any, list[tuple[GenerationStream, list[StepOutput], tuple | None]]] = {}
        for req in self._rows:
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
                for req in self._rows:
                    if req.stream.loop is loop:
                        req.cancelled = True

    def _remove_row(self, row: int) -> None:
        """Free cache row `row`, keeping decoding rows in 0..D-1 and prefilling rows right after them."""
        if row < self._decoding:
            last = self._decoding - 1
            if row != last:
                moved = self._rows[last]
                self._copy_cache(last, row, moved.prompt_len + moved.generated - 1)
                self.sampler.move_row(last, row, moved.generated)
                self._last[row] = self._last[last]
                self._pos[row] = self._pos[last]
                self._rows[row] = moved
            else:
                self.sampler.clear_row(row)
            self._decoding -= 1
            hole = last
        else:
            hole = row
        del self._rows[hole]
        for dst in range(hole, len(self._rows)):  # prefilling rows shift down by one
            self._copy_cache(dst + 1, dst, self._rows[dst].prefilled)

    def _copy_cache(self, src: int, dst: int, length: int) -> None:
        if length > 0:
            k, v = self.model.k_cache, self.model.v_cache
            k[:, dst, :, :length] = k[:, src, :, :length]
            v[:, dst, :, :length] = v[:, src, :, :length]


def _deliver_all(batch: list[tuple[GenerationStream, list[StepOutput], tuple | None]]) -> None:
    for stream, items, end in batch:
        stream.deliver(items, *(end or (None, None)))
