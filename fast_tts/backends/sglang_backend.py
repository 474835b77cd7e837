"""The SGLang backend: SGLang's offline `Engine` in this process, token ids in and out, one asyncio task per request.

NOT RUN ON THE BUILD MACHINES: SGLang needs CUDA (its CPU engine needs a CPU build of `sgl-kernel` that PyPI does
not ship), so this adapter was written against SGLang 0.5.23's `Engine.async_generate` and tested only in what runs
without the engine: the mapping of fast-tts's options and SamplingParams onto SGLang's, and the errors.

How it drives the engine: `Engine(model_path=<HF folder>, skip_tokenizer_init=True, ...)` is built at construction
(so a checkpoint SGLang cannot load fails there). `submit` starts a task on the caller's event loop that iterates
`async_generate(input_ids=..., sampling_params=..., stream=True, rid=...)`; its `output_ids` grow with each chunk
and the task forwards the new ones. Stop ids are fast-tts's own: SGLang runs with `ignore_eos=True` (its stop
check would also stop on the checkpoint's eos id) and the task aborts the request (`abort_request(rid)`) when a stop
id comes out, or when the stream is cancelled.
Only stock causal LMs run here (MegaTTS3's G2P). ChatTTS's GPT cannot: SGLang samples inside its scheduler with the
checkpoint's own head, and ChatTTS's four code heads are not in the checkpoint; carrying it would take a custom
SGLang model class that samples four codebooks and a way to stream hidden states per step.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from pathlib import Path
from typing import Any

import torch

from fast_tts.backends.base import (
    FINISH_CANCELLED,
    FINISH_LENGTH,
    FINISH_STOP,
    GenerationStream,
    StepOutput,
    checkpoint_source,
)
from fast_tts.backends.worker import refuse
from fast_tts.errors import EngineClosedError, InvalidInputError, ModelLoadError
from fast_tts.models.lm import LMAdapter, LMSource
from fast_tts.sampling import SamplingParams

NAME = "sglang"
_DTYPES = {"auto": "auto", "float32": "float32", "float16": "float16", "bfloat16": "bfloat16", "fp32": "float32",
           "bf16": "bfloat16"}


def check_source(source: LMSource | None) -> Path:
    """The folder SGLang loads; errors for models it cannot carry."""
    return Path(checkpoint_source(
        source, "sglang", "SGLang samples with the checkpoint's own head inside its scheduler, and this model's "
        "heads are not in the checkpoint (ChatTTS: use backend='torch' or 'llama-cpp')").folder)


def engine_args(folder: Path, max_batch: int = 8, max_seq: int = 2048, dtype: Any = "auto", device: Any = "cuda",
                mem_fraction_static: float | None = None, seed: int = 0) -> dict[str, Any]:
    """Keyword arguments for `sglang.Engine` from fast-tts's backend options."""
    if not isinstance(max_batch, int) or max_batch < 1:
        raise InvalidInputError("max_batch must be an integer >= 1", "max_batch")
    if not isinstance(max_seq, int) or max_seq < 2:
        raise InvalidInputError("max_seq must be an integer >= 2", "max_seq")
    name = str(dtype).replace("torch.", "")
    if name not in _DTYPES:
        raise InvalidInputError(f"dtype must be one of {', '.join(_DTYPES)} for sglang, got {dtype!r}", "dtype")
    device_type = torch.device(device).type if device not in (None, "auto") else "cuda"
    if device_type != "cuda":
        raise InvalidInputError(f"the sglang backend runs on cuda, not {device!r}", "device")
    args: dict[str, Any] = {
        "model_path": str(folder), "skip_tokenizer_init": True, "dtype": _DTYPES[name], "device": "cuda",
        "max_running_requests": max_batch, "context_length": max_seq, "random_seed": int(seed),
        "log_level": "error",
    }
    if mem_fraction_static is not None:
        if not 0.0 < float(mem_fraction_static) < 1.0:
            raise InvalidInputError("mem_fraction_static must be in (0, 1)", "mem_fraction_static")
        args["mem_fraction_static"] = float(mem_fraction_static)
    return args


def check_sampling(params: SamplingParams) -> None:
    """Refuse the SamplingParams fields SGLang has no counterpart for."""
    if params.return_hidden:
        raise refuse("return_hidden", NAME, "SGLang samples with the checkpoint's head and streams ids")
    if params.noise is not None:
        raise refuse("noise", NAME, "SGLang seeds a request once (sampling_seed)")
    if params.repetition_window is not None:
        raise refuse("repetition_window", NAME, "SGLang's repetition penalty covers the whole sequence")
    if params.min_new_tokens and params.stop_token_ids:
        raise refuse("min_new_tokens with stop_token_ids", NAME,
                     "stop ids are checked by fast-tts (SGLang runs with ignore_eos), so SGLang cannot mask them")
    filtering = (params.top_p is not None and params.top_p < 1.0) or params.top_k is not None
    if params.min_tokens_to_keep > 1 and filtering:
        raise refuse("min_tokens_to_keep > 1", NAME, "SGLang's top-p / top-k keep no minimum")


def sglang_sampling(params: SamplingParams, max_new_tokens: int) -> dict[str, Any]:
    """SGLang's `sampling_params` dict for one request (after `check_sampling`)."""
    temperature = params.temperatures()[0]
    out: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,  # SGLang treats 0 as greedy (top_k = 1)
        "top_p": params.top_p if params.top_p is not None else 1.0,
        "top_k": params.top_k if params.top_k is not None else -1,
        "min_p": 0.0,
        "repetition_penalty": params.repetition_penalty,
        "ignore_eos": True,
    }
    if params.seed is not None:
        out["sampling_seed"] = params.seed
    return out


class SGLangBackend:
    """Generator over `sglang.Engine` (CUDA only) for a stock causal LM with an on-disk Hugging Face folder.

    Options: `dtype`, `device` ('cuda'), `mem_fraction_static` (GPU memory SGLang may take), `seed`; `compile` is a
    torch-backend option and is refused.
    """

    name = NAME

    def __init__(self, adapter: LMAdapter, max_batch: int = 8, max_seq: int = 2048, dtype: Any = "auto",
                 device: Any = "cuda", mem_fraction_static: float | None = None, seed: int = 0,
                 compile: bool = False) -> None:
        if compile:
            raise InvalidInputError("compile=True applies to the torch backend only", "compile")
        folder = check_source(getattr(adapter, "source", None))
        if adapter.num_codebooks != 1:
            raise ModelLoadError("a stock-head model generates one token per step (num_codebooks must be 1)")
        args = engine_args(folder, max_batch, max_seq, dtype, device, mem_fraction_static, seed)
        import sglang

        try:
            self.engine = sglang.Engine(**args)
        except Exception as exc:  # SGLang raises many kinds for a checkpoint or device it cannot use
            raise ModelLoadError(f"SGLang could not load {folder}: {exc}") from exc
        self.max_batch, self.max_seq = max_batch, max_seq
        self.vocab_size = int(adapter.logits(torch.zeros(1, adapter.transformer.config.hidden_size)).shape[-1])
        self._ids = itertools.count()
        self._tasks: dict[GenerationStream, tuple[asyncio.Task, str]] = {}
        self._closed = False

    def submit(self, prompt: torch.Tensor, params: SamplingParams) -> GenerationStream:
        """Start generating for ids (T, 1); call from the event loop that reads the stream."""
        if self._closed:
            raise EngineClosedError("the sglang backend was shut down")
        if not isinstance(params, SamplingParams):
            raise InvalidInputError("params must be a SamplingParams", "params")
        params.check_model(1, self.vocab_size)
        check_sampling(params)
        if (not isinstance(prompt, torch.Tensor) or prompt.dim() != 2 or prompt.shape[0] == 0
                or prompt.shape[1] != 1 or prompt.is_floating_point()):
            raise InvalidInputError("prompt must be token ids of shape (T, 1)", "prompt")
        if prompt.shape[0] >= self.max_seq:
            raise InvalidInputError(f"prompt has {prompt.shape[0]} positions; the limit is {self.max_seq - 1}",
                                    "prompt")
        ids = prompt[:, 0].tolist()
        if min(ids) < 0 or max(ids) >= self.vocab_size:
            raise InvalidInputError(f"prompt token ids must be in [0, {self.vocab_size})", "prompt")
        stream = GenerationStream(next(self._ids), 1, self._cancel)
        budget = min(params.max_new_tokens, self.max_seq - len(ids))
        if budget == 0:
            stream.deliver([], finish=FINISH_LENGTH)
            return stream
        rid = uuid.uuid4().hex
        task = asyncio.ensure_future(self._pump(stream, rid, ids, sglang_sampling(params, budget),
                                                set(params.stop_token_ids)))
        self._tasks[stream] = (task, rid)
        task.add_done_callback(lambda _t: self._tasks.pop(stream, None))
        return stream

    async def _pump(self, stream: GenerationStream, rid: str, ids: list[int], sampling: dict[str, Any],
                    stops: set[int]) -> None:
        sent = 0
        try:
            chunks = await self.engine.async_generate(input_ids=ids, sampling_params=sampling, stream=True, rid=rid)
            async for out in chunks:
                new = list(out["output_ids"][sent:])
                sent += len(new)
                items = []
                for token in new:
                    if token in stops:
                        self.engine.tokenizer_manager.abort_request(rid=rid)
                        stream.deliver(items, finish=FINISH_STOP)
                        return
                    items.append(StepOutput(torch.tensor([token])))
                finish = (out.get("meta_info") or {}).get("finish_reason")
                if finish:
                    kind = finish.get("type") if isinstance(finish, dict) else str(finish)
                    if kind == "abort":
                        stream.deliver(items, error=RuntimeError(f"SGLang aborted the request: {finish}"))
                    else:
                        stream.deliver(items, finish=FINISH_LENGTH)
                    return
                stream.deliver(items)
            stream.deliver([], finish=FINISH_LENGTH)
        except asyncio.CancelledError:
            self.engine.tokenizer_manager.abort_request(rid=rid)
            stream.deliver([], finish=FINISH_CANCELLED)
        except Exception as exc:  # an engine error fails this request only
            stream.deliver([], error=exc)

    def _cancel(self, stream: GenerationStream) -> None:
        entry = self._tasks.get(stream)
        if entry is None:
            stream.deliver([], finish=FINISH_CANCELLED)
            return
        entry[0].cancel()

    def stats(self) -> dict[str, int]:
        """Requests in flight (SGLang queues what exceeds max_running_requests itself) and capacity."""
        return {"active": len(self._tasks), "queue_depth": 0, "capacity": self.max_batch}

    async def shutdown(self) -> None:
        """Cancel running requests and stop SGLang's processes."""
        if self._closed:
            return
        self._closed = True
        for stream, (task, _rid) in list(self._tasks.items()):
            task.cancel()
            stream.deliver([], error=EngineClosedError("the sglang backend was shut down"))
        await asyncio.to_thread(self.engine.shutdown)
