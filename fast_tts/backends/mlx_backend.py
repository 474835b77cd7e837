"""The MLX backend: `mlx-lm` over the Hugging Face folder as is, continuous batching with its `BatchGenerator`.

The worker thread owns the model and one `BatchGenerator` (prefill and decode of up to `max_batch` sequences in
one batch); requests join with `insert` and leave with `remove`, so a cancel frees its place at once. Each request
brings its own sampler and logits processor, built here to fast-tts's semantics rather than mlx-lm's defaults:
- temperature, then top-p, then top-k on the tempered log-probabilities, then a draw with the request's own
  `mx.random` key (seeded by `SamplingParams.seed`, split once per step), so a seed repeats whatever else runs;
- the repetition penalty over the request's generated tokens only (the last `repetition_window` of them),
  compounded per occurrence (`penalty ** count`), as the torch backend does;
- stop ids masked until `min_new_tokens` are out.
Only stock-head models run here (MegaTTS3's G2P): ids in, the folder's own head, no hidden states out.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from fast_tts.backends.base import checkpoint_source
from fast_tts.backends.worker import Request, WorkerBackend, refuse
from fast_tts.errors import InvalidInputError, ModelLoadError
from fast_tts.models.lm import LMAdapter
from fast_tts.sampling import SamplingParams

_DTYPES = ("auto", "float32", "bfloat16", "float16")


class MlxBackend(WorkerBackend):
    """Generator over mlx-lm for a stock causal LM with an on-disk Hugging Face folder (`adapter.source`).

    Options: `dtype` auto (as stored) | float32 | bfloat16 | float16, `quantize_bits` None | 4 | 8 (mlx-lm's
    affine quantization, group size 64), `prefill_chunk` prompt tokens per prefill step. `device` must be 'cpu' on
    Linux ('gpu' is Metal on Apple silicon); `compile` is a torch-backend option and is refused.
    """

    name = "mlx-lm"

    def __init__(self, adapter: LMAdapter, max_batch: int = 8, max_seq: int = 2048, dtype: Any = "auto",
                 device: Any = None, quantize_bits: int | None = None, prefill_chunk: int = 512,
                 compile: bool = False) -> None:
        import mlx.core as mx
        import mlx.nn as nn
        from mlx_lm.utils import load_model

        if compile:
            raise InvalidInputError("compile=True applies to the torch backend only", "compile")
        dtype = str(dtype).replace("torch.", "")
        if dtype not in _DTYPES:
            raise InvalidInputError(f"dtype must be one of {', '.join(_DTYPES)} for mlx-lm, got {dtype!r}", "dtype")
        if quantize_bits not in (None, 4, 8):
            raise InvalidInputError("quantize_bits must be None, 4 or 8", "quantize_bits")
        if not isinstance(prefill_chunk, int) or prefill_chunk < 1:
            raise InvalidInputError("prefill_chunk must be an integer >= 1", "prefill_chunk")
        source = checkpoint_source(
            getattr(adapter, "source", None), "mlx-lm",
            "ids in, the folder's own head; this model has heads of its own that mlx-lm's generator cannot call "
            "(ChatTTS: use backend='torch' or 'llama-cpp')")
        device_name = "cpu" if device in (None, "auto") else str(device)
        if device_name not in ("cpu", "gpu"):
            raise InvalidInputError(f"the mlx-lm backend runs on cpu or gpu (Metal), not {device!r}", "device")
        self._mx = mx
        mx.set_default_device(mx.cpu if device_name == "cpu" else mx.gpu)
        try:
            model, config = load_model(Path(source.folder))
        except Exception as exc:  # mlx-lm raises ValueError / KeyError / FileNotFoundError for what it cannot load
            raise ModelLoadError(f"mlx-lm could not load {source.folder}: {exc}") from exc
        if dtype != "auto":
            model.set_dtype(getattr(mx, dtype))
        if quantize_bits is not None:
            nn.quantize(model, group_size=64, bits=quantize_bits)
        mx.eval(model.parameters())  # MLX streams belong to a thread: nothing lazy may be left for the worker
        self.model = model
        self.dtype, self.quantize_bits, self.prefill_chunk = dtype, quantize_bits, prefill_chunk
        hidden = int(config["hidden_size"])
        vocab = int(config["vocab_size"])
        if adapter.num_codebooks != 1:
            raise ModelLoadError("a stock-head model generates one token per step (num_codebooks must be 1)")
        super().__init__(1, hidden, vocab, max_batch, max_seq, ids_only=True)
        self._generator: Any = None
        self._by_uid: dict[int, Request] = {}
        self._start_worker()

    # ---- asyncio side ---------------------------------------------------------------------------------------
    def check_params(self, params: SamplingParams) -> None:
        """What mlx-lm's generator cannot carry: hidden states, per-step reseeding, top-p with a kept minimum."""
        super().check_params(params)
        if params.return_hidden:
            raise refuse("return_hidden", self.name, "mlx-lm's generator returns tokens, not hidden states")
        if params.noise is not None:
            raise refuse("noise", self.name, "each request draws from one seeded key stream")
        if params.min_tokens_to_keep > 1 and params.top_p is not None and params.top_p < 1.0:
            raise refuse("min_tokens_to_keep > 1 with top_p", self.name, "mlx-lm's top-p keeps no minimum")

    # ---- engine hooks (worker thread) -----------------------------------------------------------------------
    def _batch_generator(self) -> Any:
        if self._generator is None:  # made on the worker thread, with a stream of its own
            from mlx_lm.generate import BatchGenerator

            mx = self._mx
            self._generator = BatchGenerator(
                self.model, max_tokens=self.max_seq, completion_batch_size=self.max_batch,
                prefill_batch_size=self.max_batch, prefill_step_size=self.prefill_chunk,
                stream=mx.new_stream(mx.default_device()))
        return self._generator

    def _start(self, req: Request) -> None:
        params = req.params
        prompt = req.prompt[:, 0].tolist()
        budget = min(params.max_new_tokens, self.max_seq - len(prompt))
        uid = self._batch_generator().insert(
            [prompt], max_tokens=[budget], samplers=[self._sampler(params)],
            logits_processors=[[self._processor(params, len(prompt))]])[0]
        req.slot = uid
        self._by_uid[uid] = req

    def _release(self, req: Request) -> None:
        self._by_uid.pop(req.slot, None)
        self._batch_generator().remove([req.slot])

    def _step(self) -> None:
        _prompts, generated = self._batch_generator().next()
        for response in generated:
            req = self._by_uid.get(response.uid)
            if req is not None:
                self._emit(req, torch.tensor([int(response.token)]))

    def _close_engine(self) -> None:
        if self._generator is not None:
            self._generator.close()
            self._generator = None

    # ---- sampling ---------------------------------------------------------------------------------------------
    def _sampler(self, params: SamplingParams) -> Any:
        """log-probabilities (1, V) -> token (1,), with this request's own key stream."""
        from mlx_lm.sample_utils import apply_top_k, apply_top_p

        mx = self._mx
        temperature = params.temperatures()[0]
        if temperature == 0:
            return lambda logprobs: mx.argmax(logprobs, axis=-1)
        top_p = params.top_p if params.top_p is not None and params.top_p < 1.0 else None
        top_k = params.top_k if params.top_k is not None and params.top_k < self.vocab_size else None
        seed = params.seed if params.seed is not None else random.SystemRandom().randrange(2**63)
        state = {"key": mx.random.key(seed)}

        def sample(logprobs: Any) -> Any:
            x = logprobs.astype(mx.float32) * (1.0 / temperature)
            x = x - mx.logsumexp(x, axis=-1, keepdims=True)
            if top_p is not None:
                x = apply_top_p(x, top_p)
            if top_k is not None:
                x = apply_top_k(x, top_k)
            state["key"], draw = mx.random.split(state["key"])
            return mx.random.categorical(x, key=draw)

        return sample

    def _processor(self, params: SamplingParams, prompt_len: int) -> Any:
        """(tokens so far, logits (1, V)) -> logits: repetition penalty on generated tokens, early stops masked."""
        mx = self._mx
        penalty = params.repetition_penalty
        window = params.repetition_window
        min_new = params.min_new_tokens
        stop_mask = None  # -inf at the stop ids, added while min_new_tokens are not out yet
        if params.stop_token_ids and min_new:
            stops = mx.array(list(params.stop_token_ids), dtype=mx.int32)
            stop_mask = mx.zeros((self.vocab_size,), dtype=mx.float32).at[stops].add(-float("inf"))

        def process(tokens: Any, logits: Any) -> Any:
            n_gen = max(0, int(tokens.shape[-1]) - prompt_len)
            if penalty != 1.0 and n_gen:
                recent = tokens.reshape(-1)[-(min(n_gen, window) if window else n_gen):]
                counts = mx.zeros((logits.shape[-1],), dtype=mx.float32).at[recent].add(1.0)
                alpha = mx.power(mx.array(penalty, dtype=mx.float32), counts)
                logits = mx.where(logits < 0, logits * alpha, logits / alpha)
            if stop_mask is not None and n_gen < min_new:
                logits = logits + stop_mask
            return logits

        return process
