"""The torch backend's model runner: it owns the tensors (decoder weights in their packed form, the KV cache, the
sampler's per-row state, each row's last token and position) and executes the steps the scheduler plans.

On CPU the decoder's linear layers are swapped for packed ones (`fast_tts.kernels.linear.pack_linears`): bf16 and
float32 weights go to our tiled kernels where the CPU runs them, everything else to oneDNN's prepacked layout; decode
steps then run in one native call (`Transformer.native_decoder`) over a cache in the weights' dtype.
`compile=True` wraps the decoder in `torch.compile(dynamic=True)` (and then skips the manual packing): off by default,
because on a 2-core CPU the first step took minutes to compile and later steps ran slower than eager. Worth trying
on a GPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from fast_tts.backends.scheduler import PrefillChunk, StepPlan, StepResult
from fast_tts.devices import resolve_dtype
from fast_tts.errors import InvalidInputError
from fast_tts.kernels.linear import QUANTIZED, pack_linears, packing_available, quantized_available
from fast_tts.models.lm import LMAdapter
from fast_tts.models.transformer import KVCache, NativeDecoder
from fast_tts.sampling import BatchSampler, SamplingParams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prompt:
    """A request's prompt as the runner keeps it: ids (T, C) or embeddings (T, H), and its sampling."""

    tensor: torch.Tensor
    is_ids: bool
    params: SamplingParams


@dataclass(frozen=True)
class Sampled:
    """The token ids (C,) sampled for one request in a step, and the hidden state (H,) that predicted them."""

    tokens: torch.Tensor
    hidden: torch.Tensor


def _check_quantize(quantize: str | None, dtype: torch.dtype, device: torch.device, compile: bool) -> None:
    """`quantize` names a scheme this runner can run here, or the error says what is missing."""
    if quantize is None:
        return
    if quantize not in QUANTIZED:
        raise InvalidInputError(f"quantize must be None or one of {', '.join(QUANTIZED)}, not {quantize!r}",
                                "quantize")
    if dtype != torch.bfloat16:
        raise InvalidInputError(f"quantize={quantize!r} computes in bfloat16: pass dtype='bfloat16'", "quantize")
    if device.type != "cpu" or compile:
        raise InvalidInputError(f"quantize={quantize!r} runs on the CPU kernels: device='cpu' without compile",
                                "quantize")
    if not quantized_available(quantize):
        raise InvalidInputError(
            f"quantize={quantize!r} needs fast-tts's native kernels on a CPU with {QUANTIZED[quantize].needs} and "
            "an OS that grants it; this machine has not; use dtype='bfloat16' alone", "quantize")


class TorchRunner:
    """Runs planned steps of an `LMAdapter`'s decoder on `max_rows` cache rows of `max_seq` positions."""

    def __init__(self, adapter: LMAdapter, max_rows: int, max_seq: int, dtype: str | torch.dtype = "float32",
                 device: str | torch.device = "cpu", compile: bool = False, pack_weights: bool | None = None,
                 kv_dtype: str | torch.dtype | None = None, quantize: str | None = None) -> None:
        self.adapter = adapter
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        _check_quantize(quantize, self.dtype, self.device, compile)
        self.model = adapter.transformer
        weights = self.model.norm.weight
        if weights.dtype != self.dtype and _packed(self.model):
            raise InvalidInputError(
                f"this decoder already runs in {weights.dtype} for another backend; one decoder runs in one dtype",
                "dtype")
        self.model.to(device=self.device, dtype=self.dtype)  # the runner owns the decoder from here on
        prepare = getattr(adapter, "prepare_for_backend", None)
        if callable(prepare):
            prepare(self.dtype, self.device, quantize=quantize)
        if pack_weights is None:  # torch.compile does its own weight packing (inductor freezing)
            pack_weights = self.device.type == "cpu" and not compile and packing_available(self.dtype)
        if pack_weights or quantize:
            pack_linears(self.model, quantize)
        self.packed = _packed(self.model)
        # On CPU a bf16 cache (half the bytes each step reads) goes with the native bf16 decode step, and torch
        # attention widens it to float32; otherwise the cache is float32, where CPU SDPA is fastest (and where the
        # native float32 decode step runs).
        if kv_dtype is None:
            native = not compile and self.model.native_decoder(self.model.new_cache(1, 2, torch.bfloat16)) is not None
            kv_dtype = self.dtype if self.device.type != "cpu" or native else torch.float32
        self.cache = KVCache(self.model.config, max_rows, max_seq, resolve_dtype(kv_dtype), self.device)
        self.native: NativeDecoder | None = None if compile else self.model.native_decoder(self.cache)
        self._forward = torch.compile(self.model, dynamic=True) if compile else self.model
        self.num_codebooks = adapter.num_codebooks
        self.hidden_size = self.model.config.hidden_size
        with torch.no_grad():
            probe = adapter.logits(torch.zeros(1, self.hidden_size, device=self.device))
        self.vocab_size = int(probe.shape[-1])
        self.sampler = BatchSampler(max_rows, self.num_codebooks, self.vocab_size, max_seq, self.device)
        self._last = torch.zeros(max_rows, self.num_codebooks, dtype=torch.long, device=self.device)
        self._pos = torch.zeros(max_rows, dtype=torch.long, device=self.device)
        self._prompts: dict[int, Prompt] = {}

    @property
    def max_seq(self) -> int:
        return self.cache.max_seq

    # ---- requests -------------------------------------------------------------------------------------------
    def add(self, request_id: int, prompt: Prompt) -> None:
        self._prompts[request_id] = prompt

    def drop(self, request_id: int) -> None:
        self._prompts.pop(request_id, None)

    # ---- one step -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def execute(self, plan: StepPlan) -> tuple[StepResult, dict[int, Sampled]]:
        """Apply the plan's row moves, run its prefills and its decode step; failures are per request where a
        request can be blamed (a prefill), else for every row of the step (a decode)."""
        for move in plan.moves:
            self.cache.copy_row(move.src, move.dst, move.length)
            if move.sampler_steps is not None:
                self.sampler.move_row(move.src, move.dst, move.sampler_steps)
                self._last[move.dst] = self._last[move.src]
                self._pos[move.dst] = self._pos[move.src]
        for row in plan.released:
            self.sampler.clear_row(row)
        result = StepResult()
        sampled: dict[int, Sampled] = {}
        for forward in plan.prefills:
            while forward:  # when a padded forward fails, its first request runs alone and the rest try again
                if len(forward) > 1 and self._prefill_together(forward, result, sampled):
                    break
                chunk, forward = forward[0], forward[1:]
                try:
                    self._prefill_alone(chunk, result, sampled)
                except Exception as exc:
                    log.debug("request %d failed in prefill", chunk.request_id, exc_info=True)
                    self.sampler.clear_row(chunk.row)
                    result.failed[chunk.request_id] = exc
        if plan.decode:
            try:
                self._decode(plan, result, sampled)
            except Exception as exc:
                log.exception("decode step failed")
                for request_id in plan.decode:
                    result.failed[request_id] = exc
        return result, sampled

    def _embed(self, prompt: Prompt, start: int, end: int) -> torch.Tensor:
        chunk = prompt.tensor[start:end]
        return (self.adapter.embed(chunk[None])[0] if prompt.is_ids else chunk).to(self.dtype)

    def _prefill_alone(self, chunk: PrefillChunk, result: StepResult, sampled: dict[int, Sampled]) -> None:
        prompt = self._prompts[chunk.request_id]
        x = self._embed(prompt, chunk.start, chunk.end)[None]
        positions = torch.arange(chunk.start, chunk.end, device=self.device)[None]
        h = self._forward(x, positions, self.cache, rows=slice(chunk.row, chunk.row + 1), kv_len=chunk.end)
        if chunk.completes:
            self._first_tokens([chunk], h[:, -1].float(), result, sampled)

    def _prefill_together(self, forward: tuple[PrefillChunk, ...], result: StepResult,
                          sampled: dict[int, Sampled]) -> bool:
        """Prefill consecutive rows in one padded forward; False (nothing changed) if that failed.

        Padding positions write K/V past each prompt's end; a row's decode overwrites a position before reading it
        and masks keys by position, so that padding is never read."""
        first, k = forward[0].row, len(forward)
        lefts = [c.end - c.start for c in forward]
        width = max(lefts)
        try:
            x = torch.zeros(k, width, self.hidden_size, dtype=self.dtype, device=self.device)
            for i, c in enumerate(forward):
                x[i, : lefts[i]] = self._embed(self._prompts[c.request_id], c.start, c.end)
            starts = torch.tensor([c.start for c in forward], device=self.device)
            positions = starts[:, None] + torch.arange(width, device=self.device)
            kv_len = max(c.start for c in forward) + width
            h = self._forward(x, positions, self.cache, rows=slice(first, first + k), kv_len=kv_len)
            last = torch.tensor(lefts, device=self.device) - 1
            hidden = h[torch.arange(k, device=self.device), last].float()
        except Exception:
            log.debug("grouped prefill failed; prefilling one by one", exc_info=True)
            return False
        self._first_tokens(list(forward), hidden, result, sampled)
        return True

    def _first_tokens(self, chunks: list[PrefillChunk], hidden: torch.Tensor, result: StepResult,
                      sampled: dict[int, Sampled]) -> None:
        """Sample the first token of sequences whose prompts completed in rows first..first+k-1."""
        first, k = chunks[0].row, len(chunks)
        for c in chunks:
            self.sampler.set_row(c.row, self._prompts[c.request_id].params)
        tokens, stopped = self.sampler.sample(self.adapter.logits(hidden), slice(first, first + k))
        self._last[first : first + k] = tokens
        self._pos[first : first + k] = torch.tensor([c.end for c in chunks], device=self.device)
        for i, (c, stop) in enumerate(zip(chunks, stopped.tolist())):
            result.sampled[c.request_id] = stop
            sampled[c.request_id] = Sampled(tokens[i], hidden[i])

    def _decode(self, plan: StepPlan, result: StepResult, sampled: dict[int, Sampled]) -> None:
        d = len(plan.decode)
        rows = slice(0, d)
        x = self.adapter.embed(self._last[:d, None, :]).to(self.dtype)
        if self.native is not None:
            h = self.native(x, self._pos[:d, None], rows)
        else:
            h = self._forward(x, self._pos[:d, None], self.cache, rows=rows, kv_len=plan.decode_kv_len)
        hidden = h[:, 0].float()
        tokens, stopped = self.sampler.sample(self.adapter.logits(hidden), rows)
        self._last[:d] = tokens
        self._pos[:d] += 1
        for row, (request_id, stop) in enumerate(zip(plan.decode, stopped.tolist())):
            result.sampled[request_id] = stop
            sampled[request_id] = Sampled(tokens[row], hidden[row])


def _packed(model: torch.nn.Module) -> bool:
    """True when no plain `nn.Linear` is left in `model` (its linears were swapped for packed ones)."""
    return not any(isinstance(m, torch.nn.Linear) for m in model.modules())
