"""`Chat`: a drop-in for ChatTTS 0.2.5's `ChatTTS.Chat` (reference 000), running on fast_tts's engine.

`import fast_tts as ChatTTS` runs reference-style scripts: same method names, parameters, defaults and return
types. Underneath, every text of an `infer` call goes to the continuous-batching backend at once and decodes are
batched, on a private event loop thread, so `Chat` is synchronous like the reference but faster.

Deliberate differences (each a fix of a reference bug, or a better default):
- the params objects are never mutated (the reference writes the long-text speaker sample into the default object,
  which leaks into later calls);
- streaming keeps every split group's audio (the reference loses audio after the first group), decodes windows
  incrementally instead of re-decoding the whole prefix per chunk, and joins chunks without seams;
- padding frames never leak into a shorter row's audio;
- refinement with repetition_penalty != 1 works; `ensure_non_empty` with a seed never crashes (eos is masked at the
  first step);
- zh/en text normalization speaks digits (our wetext frontend is registered by default; the reference drops them);
  `Normalizer(use_default_normalizers=False)` gives back the reference behaviour;
- with `manual_seed`, each request draws from its own generator seeded once (the reference re-seeds at every step).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union

import numpy as np

from fast_tts.errors import InvalidInputError, MissingDependencyError, ModelLoadError

HF_REPO = "2Noise/ChatTTS"
HF_PATTERNS = ["*.yaml", "*.json", "*.safetensors", "asset/spk_stat.pt"]
_SPLIT = re.compile(r"(?<=。)|(?<=\.\s)")


@dataclass
class ChatConfig:
    """What `Chat` reads besides the checkpoint: the speaker statistics string (std ++ mean, base16384)."""

    spk_stat: Optional[str] = None
    dtype: str = "float32"
    backend: str = "torch"
    max_batch: int = 8
    residual_scale_base: str = "levels_minus_1"  # DVAE residual scale; "levels" = vector_quantize_pytorch >= 1.2x


class _LoopThread:
    """A private asyncio loop on a daemon thread, so synchronous `Chat` calls can drive the async runtime."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fast-tts-chat", daemon=True)
        self.thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def iterate(self, agen: Any) -> Iterator[Any]:
        """Drive an async generator from this (other) thread; closing the iterator closes the generator."""
        try:
            while True:
                try:
                    yield self.run(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self.run(agen.aclose())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class Chat:
    """ChatTTS-compatible synthesis: `load()`, then `infer(texts)`."""

    @dataclass(repr=False, eq=False)
    class RefineTextParams:
        prompt: str = ""
        top_P: float = 0.7
        top_K: int = 20
        temperature: float = 0.7
        repetition_penalty: float = 1.0
        max_new_token: int = 384
        min_new_token: int = 0
        show_tqdm: bool = True
        ensure_non_empty: bool = True
        manual_seed: Optional[int] = None

    @dataclass(repr=False, eq=False)
    class InferCodeParams(RefineTextParams):
        prompt: str = "[speed_5]"
        spk_emb: Optional[str] = None
        spk_smp: Optional[str] = None
        txt_smp: Optional[str] = None
        temperature: float = 0.3
        repetition_penalty: float = 1.05
        max_new_token: int = 2048
        stream_batch: int = 24
        stream_speed: int = 12000
        pass_first_n_batches: int = 2

    def __init__(self, logger: logging.Logger = logging.getLogger(__name__)) -> None:
        from fast_tts.models.chattts.normalizer import Normalizer

        self.logger = logger
        self.config = ChatConfig()
        self.normalizer = Normalizer(logger=logger)
        self.sha256_map: dict[str, str] = {}  # reference key names; empty: no hash check (set it to verify files)
        self.context = threading.Event()  # set by interrupt()
        self.runtime: Any = None
        self._loop: _LoopThread | None = None

    # ----- loading ---------------------------------------------------------------------------------------------

    def has_loaded(self, use_decoder: bool = False) -> bool:
        """True when every module needed for synthesis is loaded."""
        return self.runtime is not None

    def download_models(
        self,
        source: Literal["huggingface", "local", "custom"] = "local",
        force_redownload: bool = False,
        custom_path: Optional[Union[str, os.PathLike]] = None,
    ) -> Optional[str]:
        """Folder holding the checkpoint (`asset/...`), downloading from Hugging Face when needed; None on failure."""
        from fast_tts.models.chattts.loader import verify_files

        if source not in ("huggingface", "local", "custom"):
            raise InvalidInputError(f"source must be 'huggingface', 'local' or 'custom', got {source!r}", "source")
        if source == "huggingface":
            return self._from_hub(custom_path, force_redownload)
        root = Path(custom_path) if custom_path is not None else Path.cwd()
        try:
            _check_layout(root)
            if self.sha256_map:
                verify_files(root, self.sha256_map)
        except ModelLoadError as exc:
            if source == "custom" or not force_redownload:
                self.logger.error("check models in %s failed: %s", root, exc)
                return None
            return self._from_hub(None, True, local_dir=root)
        if force_redownload and source == "local":
            return self._from_hub(None, True, local_dir=root)
        return str(root)

    def _from_hub(self, cache_dir: Any, force: bool, local_dir: Path | None = None) -> Optional[str]:
        try:
            from huggingface_hub import snapshot_download
        except ImportError as exc:
            raise MissingDependencyError("source='huggingface' needs huggingface_hub: pip install huggingface_hub") from exc
        kwargs: dict[str, Any] = {"repo_id": HF_REPO, "allow_patterns": HF_PATTERNS, "force_download": force}
        if local_dir is not None:
            kwargs["local_dir"] = str(local_dir)
        else:
            kwargs["cache_dir"] = None if cache_dir is None else str(cache_dir)
        if not force:
            try:
                return snapshot_download(**kwargs, local_files_only=True)
            except Exception:
                pass
        try:
            return snapshot_download(**kwargs)
        except Exception as exc:
            self.logger.error(
                "cannot download %s from Hugging Face (%s: %s); without a network, pass source='custom' and "
                "custom_path=<folder with asset/>", HF_REPO, type(exc).__name__, exc,
            )
            return None

    def load(
        self,
        source: Literal["huggingface", "local", "custom"] = "local",
        force_redownload: bool = False,
        compile: bool = False,
        custom_path: Optional[Union[str, os.PathLike]] = None,
        device: Optional[Any] = None,
        coef: Optional[Any] = None,
        use_flash_attn: bool = False,
        use_vllm: bool = False,
        experimental: bool = False,
        **options: Any,
    ) -> bool:
        """Load the checkpoint; True on success. `options` go to the runtime (dtype, backend, max_batch, ...)."""
        from fast_tts.devices import pick_device
        from fast_tts.engine.chattts_runtime import ChatTTSRuntime
        from fast_tts.models.chattts.loader import load_chattts

        if use_flash_attn and _missing("flash_attn"):
            raise MissingDependencyError("use_flash_attn=True needs flash-attn: pip install flash-attn")
        backend = options.pop("backend", self.config.backend)
        if use_vllm:
            if _missing("vllm"):
                raise MissingDependencyError("use_vllm=True needs vLLM: pip install vllm (a CUDA machine)")
            backend = "vllm"
        if coef is not None:
            self.logger.info("coef is ignored: the checkpoint's coef buffers are used, as in the reference")
        root = self.download_models(source, force_redownload, custom_path)
        if root is None:
            return False
        device = pick_device(device)
        dtype = options.pop("dtype", self.config.dtype)
        models = load_chattts(
            root,
            device=device,
            spk_stat=self.config.spk_stat,
            residual_scale_base=options.pop("residual_scale_base", self.config.residual_scale_base),
        )
        self.unload()
        self.runtime = ChatTTSRuntime(
            models,
            backend=backend,
            dtype=dtype,
            device=device,
            compile=compile,
            max_batch=options.pop("max_batch", self.config.max_batch),
            **options,
        )
        return True

    def unload(self) -> None:
        """Free the models, the backends and the loop thread."""
        if self.runtime is not None and self._loop is not None:
            self._loop.run(self.runtime.shutdown())
        if self._loop is not None:
            self._loop.close()
        self.runtime = None
        self._loop = None

    def _require(self) -> Any:
        if self.runtime is None:
            raise RuntimeError("models are not loaded: call Chat.load() first")
        if self._loop is None:
            self._loop = _LoopThread()
        return self.runtime

    # ----- speakers --------------------------------------------------------------------------------------------

    def sample_random_speaker(self) -> str:
        """A random speaker string from the model's speaker statistics (global torch RNG, as the reference)."""
        from fast_tts.models.chattts.speaker import sample_random_speaker

        models = self._require().models
        if models.spk_std is None:
            raise ModelLoadError(
                "this checkpoint has no speaker statistics: put asset/spk_stat.pt or asset/spk_stat.json in the model "
                "folder, or set chat.config.spk_stat (the base16384 std++mean string) before load()"
            )
        return sample_random_speaker(models.spk_std, models.spk_mean)

    def sample_audio_speaker(self, wav: Union[np.ndarray, Any]) -> str:
        """Audio-prompt string of a 1-D 24 kHz wav (DVAE codes), for `InferCodeParams.spk_smp`."""
        return self._require().audio_prompt(wav)

    # ----- inference -------------------------------------------------------------------------------------------

    def interrupt(self) -> None:
        """Stop the running `infer` (from any thread) within one generation step."""
        self.context.set()
        if self.runtime is not None and self._loop is not None:
            runtime = self.runtime
            self._loop.loop.call_soon_threadsafe(lambda: asyncio.ensure_future(runtime.stop_all()))

    def infer(
        self,
        text: Union[str, list[str]],
        stream: bool = False,
        lang: Optional[str] = None,
        skip_refine_text: bool = False,
        refine_text_only: bool = False,
        use_decoder: bool = True,
        do_text_normalization: bool = True,
        do_homophone_replacement: bool = True,
        split_text: bool = True,
        max_split_batch: int = 4,
        params_refine_text: Optional["Chat.RefineTextParams"] = None,
        params_infer_code: Optional["Chat.InferCodeParams"] = None,
    ) -> Any:
        """Synthesize: a list of float32 wavs (one concatenated wav if split_text), texts with refine_text_only,
        or with stream=True an iterator of (rows, samples) float32 arrays."""
        runtime = self._require()
        self.context.clear()
        refine = dataclasses.replace(params_refine_text or Chat.RefineTextParams())
        code = dataclasses.replace(params_infer_code or Chat.InferCodeParams())
        texts = _split_input(text, split_text)
        if not texts:
            return []
        texts = [self.normalizer(t, do_text_normalization, do_homophone_replacement, lang) for t in texts]
        if split_text:
            texts = [t for t in texts if t.strip()]  # blank lines carry nothing to say
        for i, t in enumerate(texts):
            if not t.strip():
                raise InvalidInputError(f"text {i} is empty (after normalization)", field="text")
        if not texts:
            raise InvalidInputError("text is empty (after normalization)", field="text")
        if not skip_refine_text:
            texts = self._loop.run(self._refine(runtime, texts, refine))
            if refine_text_only:
                return "\n".join(texts) if split_text else texts
        if split_text and len(texts) > 1 and code.spk_smp is None:
            wav, _ = self._loop.run(runtime.synthesize(self._request(texts[0], code, use_decoder), use_decoder))
            code.spk_smp, code.txt_smp = runtime.audio_prompt(wav), texts[0]
        requests = [self._request(t, code, use_decoder) for t in texts]
        if stream:
            return self._loop.iterate(_stream_rows(runtime, requests, use_decoder, joined=split_text))
        wavs = self._loop.run(_synthesize_all(runtime, requests, use_decoder))
        stripped = [w[np.abs(w) > np.float32(1e-5)] for w in wavs]
        return [np.concatenate(stripped)] if split_text else stripped

    async def _refine(self, runtime: Any, texts: list[str], p: "Chat.RefineTextParams") -> list[str]:
        from fast_tts.engine.chattts_runtime import code_sampling

        sampling = code_sampling(
            p.temperature, p.top_P, p.top_K, p.repetition_penalty, p.min_new_token, p.max_new_token,
            runtime.models.tokenizer.eos_id, p.manual_seed, p.ensure_non_empty, False,
        )
        return await runtime.refine(texts, sampling, p.prompt)

    def _request(self, text: str, p: "Chat.InferCodeParams", use_decoder: bool) -> Any:
        from fast_tts.engine.chattts_runtime import CodeRequest, code_sampling

        sampling = code_sampling(
            p.temperature, p.top_P, p.top_K, p.repetition_penalty, p.min_new_token, p.max_new_token,
            self.runtime.eos_code, p.manual_seed, p.ensure_non_empty, use_decoder,
        )
        return CodeRequest(text, sampling, p.spk_emb, p.spk_smp, p.txt_smp, p.prompt)


async def _synthesize_all(runtime: Any, requests: list[Any], use_decoder: bool) -> list[np.ndarray]:
    results = await asyncio.gather(*(runtime.synthesize(r, use_decoder) for r in requests))
    return [wav for wav, _ in results]


async def _stream_rows(runtime: Any, requests: list[Any], use_decoder: bool, joined: bool) -> Any:
    """Chunks (rows, n): one row of all texts in order when `joined`, else one row per text advancing together."""
    queues: list[asyncio.Queue] = [asyncio.Queue() for _ in requests]

    async def pump(index: int) -> None:
        try:
            async for chunk in runtime.stream(requests[index], use_decoder):
                queues[index].put_nowait(chunk)
        finally:
            queues[index].put_nowait(None)

    tasks = [asyncio.ensure_future(pump(i)) for i in range(len(requests))]
    try:
        if joined:
            for q in queues:
                while (chunk := await q.get()) is not None:
                    yield chunk[None]
        else:
            buffers = [np.zeros(0, dtype=np.float32) for _ in requests]
            open_rows = set(range(len(requests)))
            while open_rows:
                waiting = {i: asyncio.ensure_future(queues[i].get()) for i in open_rows}
                done, _ = await asyncio.wait(waiting.values(), return_when=asyncio.FIRST_COMPLETED)
                for i, fut in waiting.items():
                    if fut in done:
                        chunk = fut.result()
                        if chunk is None:
                            open_rows.discard(i)
                        else:
                            buffers[i] = np.concatenate([buffers[i], chunk])
                    else:
                        fut.cancel()
                ready = min((len(buffers[i]) for i in open_rows), default=max(len(b) for b in buffers))
                if ready:
                    out = np.zeros((len(requests), ready), dtype=np.float32)
                    for i, b in enumerate(buffers):
                        out[i, : min(ready, len(b))] = b[:ready]
                        buffers[i] = b[ready:]
                    yield out
        for t in tasks:
            await t  # surface errors of the pumps
    finally:
        for t in tasks:
            t.cancel()


def _split_input(text: Union[str, list[str]], split_text: bool) -> list[str]:
    """The reference's splitting: a str on newlines if any, else after '。' and '. '; lists stay as given."""
    if isinstance(text, str):
        if not split_text:
            return [text]
        if "\n" in text:
            return text.split("\n")
        return [t for t in _SPLIT.split(text) if t]
    if not isinstance(text, list) or not all(isinstance(t, str) for t in text):
        raise InvalidInputError("text must be a str or a list of str", field="text")
    return list(text)


def _check_layout(root: Path) -> None:
    from fast_tts.models.chattts.loader import COMPONENT_FILES, GPT_CONFIG, TOKENIZER

    for rel in (*COMPONENT_FILES.values(), GPT_CONFIG, TOKENIZER):
        if not (root / rel).is_file():
            raise ModelLoadError(f"missing checkpoint file {root / rel}")


def _missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None

