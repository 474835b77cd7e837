"""The llama.cpp backend: `llama-cpp-python`'s C API, one context decoding up to `max_batch` sequences together.

One `Llama` object of the high-level API decodes one sequence, so this backend goes one level down: a single
llama.cpp context with `n_seq_max = max_batch` (a KV cache of `max_seq` cells per sequence), and every iteration of
the worker thread is one `llama_decode` of a batch holding one token of each decoding sequence plus up to
`prefill_chunk` prompt tokens of newcomers (continuous batching, as the torch backend and llama.cpp's own server do).
Weights are read once per step for all sequences, so 8 concurrent requests cost far less than 8 single ones.

Two modes, from the adapter's `LMSource`:
- stock head (MegaTTS3's G2P): ids in, llama.cpp's logits and llama.cpp's samplers, one sampler chain per request
  (temperature, repetition penalty, top-p, top-k in our order, then a `dist` sampler seeded with the request's seed);
  llama.cpp applies the repetition penalty once per distinct token in the window (Hugging Face's rule), where the
  torch backend compounds it per occurrence.
- own heads (ChatTTS's GPT): the GGUF is the decoder with a one-row placeholder head (see gguf_convert); prompts
  and generated tokens go in as embeddings made by the adapter, llama.cpp returns final-norm hidden states, and the
  adapter's heads and fast-tts's sampler (`BatchSampler`) pick the tokens, with every SamplingParams field as on the
  torch backend.

The GGUF comes from `gguf_convert.gguf_path` (f16 by default, f32, q8_0 or q4_0 on request).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fast_tts.backends.base import checkpoint_source
from fast_tts.backends.gguf_convert import check_gguf_type, gguf_path
from fast_tts.backends.worker import Request, WorkerBackend, refuse
from fast_tts.errors import InvalidInputError, ModelLoadError
from fast_tts.models.lm import LMAdapter
from fast_tts.sampling import BatchSampler, SamplingParams

log = logging.getLogger(__name__)


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


def gguf_type_for(dtype: Any) -> str:
    """The GGUF type a torch-style dtype option stands for: float32 -> f32, anything else -> f16."""
    return "f32" if _dtype_name(dtype) in ("float32", "fp32") else "f16"


class LlamaCppBackend(WorkerBackend):
    """Generator over llama.cpp for an adapter with an on-disk Llama / Qwen2 checkpoint (`adapter.source`).

    Options: `gguf_type` f16 (default) | f32 | q8_0 | q4_0 (or from `dtype`: float32 -> f32), `gguf_dir` where the
    GGUF is cached (default: beside the checkpoint), `num_threads` (default: the CPUs this process may use),
    `device` 'cpu' or 'cuda' (all layers offloaded; needs a CUDA build of llama-cpp-python), `prefill_chunk` prompt
    tokens per iteration. `compile` is a torch-backend option and is refused.
    """

    name = "llama-cpp"

    def __init__(self, adapter: LMAdapter, max_batch: int = 8, max_seq: int = 2048, gguf_type: str | None = None,
                 dtype: Any = "auto", device: Any = "cpu", num_threads: int | None = None, prefill_chunk: int = 512,
                 gguf_dir: str | Path | None = None, kv_type: str = "f16", compile: bool = False) -> None:
        import llama_cpp

        if compile:
            raise InvalidInputError("compile=True applies to the torch backend only", "compile")
        if not isinstance(prefill_chunk, int) or prefill_chunk < 1:
            raise InvalidInputError("prefill_chunk must be an integer >= 1", "prefill_chunk")
        device_type = torch.device(device).type
        if device_type not in ("cpu", "cuda"):
            raise InvalidInputError(f"the llama-cpp backend runs on cpu or cuda, not {device!r}", "device")
        source = checkpoint_source(getattr(adapter, "source", None), "llama-cpp")
        gguf_type = check_gguf_type(gguf_type or gguf_type_for(dtype))
        self.adapter = adapter
        self.stock_head = bool(source.stock_head)
        self.gguf_type = gguf_type
        if kv_type not in ("f16", "f32"):
            raise InvalidInputError(f"kv_type must be f16 or f32, got {kv_type!r}", "kv_type")
        self.kv_type = kv_type
        self.path = gguf_path(source, gguf_type, gguf_dir)
        self._lib = llama_cpp
        _quiet_llama_logs()
        _warn_about_openmp(llama_cpp)
        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = 999 if device_type == "cuda" else 0
        self._model = llama_cpp.llama_model_load_from_file(str(self.path).encode(), mparams)
        if not self._model:
            raise ModelLoadError(f"llama.cpp could not load {self.path}")
        self._ctx = None
        self._batch = None
        try:
            self._setup(adapter, max_batch, max_seq, num_threads, prefill_chunk)
        except BaseException:
            self._close_engine()
            raise
        self._start_worker()

    def _setup(self, adapter: LMAdapter, max_batch: int, max_seq: int, num_threads: int | None,
               prefill_chunk: int) -> None:
        lib = self._lib
        n_embd = int(lib.llama_model_n_embd(self._model))
        hidden = int(adapter.transformer.config.hidden_size)
        if n_embd != hidden:
            raise ModelLoadError(f"{self.path}: hidden size {n_embd}, but the model has {hidden}")
        n_vocab = int(lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(self._model)))
        if self.stock_head:
            vocab = n_vocab
        else:
            with torch.no_grad():
                vocab = int(adapter.logits(torch.zeros(1, hidden)).shape[-1])
        super().__init__(adapter.num_codebooks, hidden, vocab, max_batch, max_seq, ids_only=self.stock_head)
        if self.stock_head and self.num_codebooks != 1:
            raise ModelLoadError("a stock-head model generates one token per step (num_codebooks must be 1)")
        self.prefill_chunk = prefill_chunk
        self.num_threads = num_threads or len(os.sched_getaffinity(0))
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = max_batch * max_seq
        cparams.n_batch = cparams.n_ubatch = prefill_chunk + max_batch
        cparams.n_seq_max = max_batch
        cparams.n_threads = cparams.n_threads_batch = self.num_threads
        cparams.kv_unified = False  # each sequence gets its own max_seq cells
        cparams.embeddings = not self.stock_head
        cparams.pooling_type = lib.LLAMA_POOLING_TYPE_NONE
        if self.kv_type == "f32":
            cparams.type_k = cparams.type_v = lib.GGML_TYPE_F32
        self._ctx = lib.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            raise ModelLoadError(f"llama.cpp could not create a context for {self.path} "
                                 f"({max_batch} sequences of {max_seq} positions)")
        self._memory = lib.llama_get_memory(self._ctx)
        self._batch_cap = prefill_chunk + max_batch
        self._batch = lib.llama_batch_init(self._batch_cap, 0 if self.stock_head else hidden, 1)
        self._by_slot: list[Request] = []  # sequence id = index: occupied ids are always 0 .. n-1
        self._rows: list[Request] = []  # own-head mode: decoding requests in BatchSampler row order
        if not self.stock_head:
            self.sampler = BatchSampler(max_batch, self.num_codebooks, self.vocab_size, max_seq)

    # ---- asyncio side ---------------------------------------------------------------------------------------
    def check_params(self, params: SamplingParams) -> None:
        """The stock-head mode samples with llama.cpp: it has no per-step reseeding and returns no hidden states."""
        super().check_params(params)
        if self.stock_head:
            if params.noise is not None:
                raise refuse("noise", self.name, "llama.cpp's dist sampler draws from one seeded stream")
            if params.return_hidden:
                raise refuse("return_hidden", self.name, "this model's stock head is run by llama.cpp, which then "
                             "returns logits, not hidden states")

    # ---- engine hooks (worker thread) -----------------------------------------------------------------------
    def _start(self, req: Request) -> None:
        if self.stock_head:
            req.state = self._sampler_chain(req.params)
        else:  # the whole prompt as embeddings, made here so that a prompt the adapter rejects fails alone
            req.state = self.adapter.embed(req.prompt[None])[0].float() if req.is_ids else req.prompt
        req.slot = len(self._by_slot)
        self._by_slot.append(req)

    def _release(self, req: Request) -> None:
        lib = self._lib
        self._compact(req)
        if self.stock_head:
            if req.state:
                lib.llama_sampler_free(req.state)
            req.state = None
        elif req in self._rows:
            row = self._rows.index(req)
            moved = _fill_hole(self._rows, row)
            if moved is not None:
                self.sampler.move_row(len(self._rows), row, moved.generated)
            else:
                self.sampler.clear_row(row)

    def _compact(self, req: Request) -> None:
        """Free `req`'s sequence and move the highest one into it, so the occupied ids stay 0 .. n-1.

        With a KV cache per sequence, llama.cpp decodes a batch in one pass only over ascending consecutive sequence
        ids; any gap or reversal splits the step into several passes, each reading all the weights again. Moving a
        sequence copies its KV stream (exact), once per finished request.
        """
        lib, memory = self._lib, self._memory
        hole = req.slot
        lib.llama_memory_seq_rm(memory, hole, -1, -1)
        moved = _fill_hole(self._by_slot, hole)
        if moved is not None:
            lib.llama_memory_seq_cp(memory, moved.slot, hole, -1, -1)
            lib.llama_memory_seq_rm(memory, moved.slot, -1, -1)
            moved.slot = hole
        req.slot = -1

    def _sampler_chain(self, params: SamplingParams) -> Any:
        """llama.cpp samplers in fast-tts's order: temperature, repetition penalty, top-p, top-k, then the draw."""
        lib = self._lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        temperature = params.temperatures()[0]
        if params.repetition_penalty != 1.0:
            window = params.repetition_window or self.max_seq
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_penalties(
                self.vocab_size, window, params.repetition_penalty, 0.0, 0.0))
        if temperature == 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
            return chain
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(temperature))
        if params.top_p is not None and params.top_p < 1.0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(params.top_p, params.min_tokens_to_keep))
        if params.top_k is not None:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_k(
                max(params.top_k, params.min_tokens_to_keep)))
        seed = params.seed if params.seed is not None else random.SystemRandom().randrange(2**63)
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(seed % (2**32 - 1)))
        return chain

    def _step(self) -> None:
        """One llama_decode: a token of every decoding request, then prompt chunks of newcomers."""
        lib = self._lib
        decoding = list(self._rows) if not self.stock_head else [
            r for r in self._running if r.prefilled == r.prompt_len]  # own heads: the sampler's row order
        feeds = [_Feed(req, -1, -1) for req in decoding]  # a decoding request feeds its last token
        budget = self._batch_cap - len(feeds)
        for req in self._running:
            if req.prefilled == req.prompt_len or budget == 0:
                continue
            end = min(req.prompt_len, req.prefilled + budget)
            feeds.append(_Feed(req, req.prefilled, end))
            budget -= end - req.prefilled
        n, inputs = self._fill(feeds)
        code = lib.llama_decode(self._ctx, self._batch)
        if code != 0:
            raise RuntimeError(f"llama_decode failed with code {code} on a batch of {n} positions")
        del inputs
        entries = []  # (request, batch index of its output), decoding ones first, in `feeds` order
        for feed in feeds:
            if feed.start >= 0:
                feed.req.prefilled = feed.end
                if feed.end < feed.req.prompt_len:
                    continue
            entries.append((feed.req, feed.output))
        if self.stock_head:
            self._sample_stock(entries)
        else:
            self._sample_own(entries)

    def _fill(self, feeds: list[_Feed]) -> tuple[int, Any]:
        """Write the batch in ascending sequence order (see `_compact`), and each feed's output index.

        Returns the number of positions and the embeddings array that must outlive the decode call.
        """
        batch = self._batch
        n = 0
        ids: list[int] = []
        emb_parts: list[torch.Tensor] = []
        for feed in sorted(feeds, key=lambda f: f.req.slot):
            req = feed.req
            if feed.start < 0:
                positions = [req.prompt_len + req.generated - 1]
                if self.stock_head:
                    ids.append(int(req.last))
                else:
                    emb_parts.append(req.last[None])
            else:
                positions = list(range(feed.start, feed.end))
                if self.stock_head:
                    ids.extend(req.prompt[feed.start:feed.end, 0].tolist())
                else:
                    emb_parts.append(req.state[feed.start:feed.end])
            for pos in positions:
                batch.pos[n] = pos
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = req.slot
                batch.logits[n] = 0
                n += 1
            if feed.start < 0 or feed.end == req.prompt_len:
                feed.output = n - 1
                batch.logits[n - 1] = 1
        batch.n_tokens = n
        if self.stock_head:
            for i, t in enumerate(ids):
                batch.token[i] = t
            return n, None
        emb = np.ascontiguousarray(torch.cat(emb_parts).numpy(), dtype=np.float32)
        ctypes.memmove(batch.embd, emb.ctypes.data, emb.nbytes)
        return n, emb

    def _sample_stock(self, entries: list[tuple[Request, int]]) -> None:
        lib = self._lib
        for req, index in entries:
            params = req.params
            if req.generated < params.min_new_tokens and params.stop_token_ids:
                logits = lib.llama_get_logits_ith(self._ctx, index)
                for stop in params.stop_token_ids:
                    logits[stop] = float("-inf")
            req.last = int(lib.llama_sampler_sample(req.state, self._ctx, index))
        for req, _ in entries:
            self._emit(req, torch.tensor([req.last]))

    def _sample_own(self, entries: list[tuple[Request, int]]) -> None:
        lib = self._lib
        hidden = torch.empty(len(entries), self.hidden_size)
        for j, (req, index) in enumerate(entries):
            ptr = lib.llama_get_embeddings_ith(self._ctx, index)
            if not ptr:
                raise RuntimeError("llama.cpp returned no hidden state for an output")
            hidden[j] = torch.from_numpy(np.ctypeslib.as_array(ptr, shape=(self.hidden_size,)).copy())
            if req not in self._rows:  # its prompt finished in this step: it takes the next sampler row
                self.sampler.set_row(len(self._rows), req.params)
                self._rows.append(req)
        rows = slice(0, len(entries))
        tokens, _stopped = self.sampler.sample(self.adapter.logits(hidden), rows)
        nxt = self.adapter.embed(tokens[:, None]).float()[:, 0]  # (B, H): next step's inputs
        for j in range(len(entries) - 1, -1, -1):  # descending rows: a row moved into a hole has been emitted
            req = entries[j][0]
            req.last = nxt[j]
            self._emit(req, tokens[j], hidden[j])

    def _close_engine(self) -> None:
        lib = self._lib
        for req in list(self._running):
            if self.stock_head and req.state:
                lib.llama_sampler_free(req.state)
                req.state = None
        if self._batch is not None:
            lib.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            lib.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            lib.llama_model_free(self._model)
            self._model = None


def _fill_hole(items: list[Request], index: int) -> Request | None:
    """Remove items[index] by moving the last item into its place; the moved item, or None when it was the last."""
    last = items.pop()
    if index == len(items):
        return None
    items[index] = last
    return last


@dataclass
class _Feed:
    """What one request puts into a decode batch: its last token (`start` -1) or prompt positions start..end."""

    req: Request
    start: int
    end: int
    output: int = -1  # batch index of the position whose logits / hidden state are read, if any


@functools.cache
def _warn_about_openmp(lib: Any) -> None:
    """Say once when llama.cpp was built with OpenMP, which makes its decode slow in a process that also runs torch.

    torch ships the same libgomp, and once two threads own OpenMP teams (torch's on the thread that loaded the
    model, llama.cpp's on the worker), libgomp counts more threads than cores and stops spinning at barriers: every
    one of a step's barriers becomes a sleep and a wake-up.
    """
    if b"OPENMP = 1" in lib.llama_print_system_info():
        log.warning("llama-cpp-python was built with OpenMP, which runs slower beside torch; rebuild it with "
                    "CMAKE_ARGS=\"-DGGML_OPENMP=OFF\" pip install --force-reinstall --no-cache-dir llama-cpp-python")


def _quiet_llama_logs() -> None:
    """llama.cpp logs every load to stderr through the binding's logger; keep errors only unless configured."""
    logger = logging.getLogger("llama-cpp-python")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.ERROR)
