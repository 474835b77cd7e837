"""`Chat`: a drop-in for ChatTTS 0.2.5's `ChatTTS.Chat` (reference 000), running on fast_tts's engine.

`import fast_tts as ChatTTS` runs reference-style scripts: same method names, parameters, defaults and return
types, and the reference's public attributes (`config`, `tokenizer`, `speaker`, `gpt`, `embed`, `dvae`, `decoder`,
`vocos`, `device`, `device_gpt`, `coef`, `context`, `normalizer`, `sha256_map`; see models/chattts/reference_api.py).
Underneath, the texts of a batch go to the continuous-batching backend together and decodes are batched, on a
private event loop thread, so `Chat` is synchronous like the reference but faster.

Sampling draws what the reference draws: each step takes argmax(probs / Exp(1) noise) with the noise the
reference's `torch.multinomial` would use for that row of its batch (re-seeded with `manual_seed` at every step, or
the global torch generator, batch after batch), so for the same seed and weights the tokens are the reference's
(models/chattts/reference_rng.py). Batches that draw from the global generator therefore run one after the other,
as in the reference; with `manual_seed` they run together.

Deliberate differences (each a fix of a reference bug, or a better default):
- the params objects are never mutated (the reference writes the long-text speaker sample into the default object,
  which leaks into later calls);
- streaming keeps every split group's audio (the reference loses audio after the first group), decodes windows
  incrementally instead of re-decoding the whole prefix per chunk, and joins chunks without seams;
- padding frames never leak into a shorter row's audio;
- refinement with repetition_penalty != 1 works; `ensure_non_empty` never restarts or crashes: eos is masked at the
  first step (the reference regenerates the batch without a seed, which draws again, and fails with one);
- blank lines of a split text are skipped (the reference synthesizes them as empty prompts);
- audio prompts (`sample_audio_speaker`, and the long-text prompt `infer` makes from the first text) are encoded
  with the DVAE residual scale (levels - 1)^-r of the vector_quantize_pytorch the model was trained with; the
  reference as installed today uses 1.32's levels^-r, so its prompts differ (`config.residual_scale_base = "levels"`
  gives its codes, and then the long-text path equals the reference: tests/test_chattts_scripts.py);
- zh/en text normalization speaks digits (our wetext frontend is registered as a default; a user's `register` of
  the same language replaces it, and `Normalizer(use_default_normalizers=False)` gives back the reference's
  behaviour);
- `chat.coef` is the Decoder's coef in use (the reference's is the random coef drawn before its checkpoint
  replaces it).
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
from typing import Any, Literal

import numpy as np

from fast_tts.errors import InvalidInputError, MissingDependencyError, ModelLoadError

HF_REPO = "2Noise/ChatTTS"
HF_PATTERNS = ["*.yaml", "*.json", "*.safetensors", "asset/spk_stat.pt"]
_SPLIT = re.compile(r"(?<=。)|(?<=\.\s)")


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
        manual_seed: int | None = None

    @dataclass(repr=False, eq=False)
    class InferCodeParams(RefineTextParams):
        prompt: str = "[speed_5]"
        spk_emb: str | None = None
        spk_smp: str | None = None
        txt_smp: str | None = None
        temperature: float = 0.3
        repetition_penalty: float = 1.05
        max_new_token: int = 2048
        stream_batch: int = 24
        stream_speed: int = 12000
        pass_first_n_batches: int = 2

    def __init__(self, logger: logging.Logger = logging.getLogger(__name__)) -> None:
        from fast_tts.models.chattts.normalizer import Normalizer
        from fast_tts.models.chattts.reference_api import Config, Context

        self.logger = logger
        self.config = Config()
        self.normalizer = Normalizer(logger=logger)
        self.sha256_map: dict[str, str] = {}  # reference key names; empty: no hash check (set it to verify files)
        self.context = Context()  # set(True) by interrupt()
        self.runtime: Any = None
        self._loop: _LoopThread | None = None

    def __getattr__(self, name: str) -> Any:
        # only reached for attributes that do not exist: the loaded modules before load(), and reference internals
        if name in _LOADED_ATTRIBUTES:
            raise AttributeError(f"'Chat' object has no attribute {name!r} yet: call chat.load() first")
        hint = _INTERNAL_HINTS.get(name)
        if hint is not None:
            raise AttributeError(f"'Chat' object has no attribute {name!r} (a reference internal): {hint}")
        raise AttributeError(f"'Chat' object has no attribute {name!r}")

    # ----- loading ---------------------------------------------------------------------------------------------

    def has_loaded(self, use_decoder: bool = False) -> bool:
        """True when every module needed for synthesis is loaded."""
        return self.runtime is not None

    def download_models(
        self,
        source: Literal["huggingface", "local", "custom"] = "local",
        force_redownload: bool = False,
        custom_path: str | os.PathLike | None = None,
    ) -> str | None:
        """Folder holding the checkpoint (`asset/...`), downloading from Hugging Face when needed; None on failure."""
        from fast_tts.models.chattts.loader import verify_files

        if source not in ("huggingface", "local", "custom"):
            raise InvalidInputError(f"source must be 'huggingface', 'local' or 'custom', got {source!r}", "source")
        if source == "huggingface":
            return self._from_hub(custom_path, force_redownload)
        root = Path(custom_path) if custom_path is not None else Path.cwd()
        try:
            self._check_layout(root)
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

    def _check_layout(self, root: Path) -> None:
        for path in self._paths(root).required():
            if not path.is_file():
                raise ModelLoadError(f"missing checkpoint file {path}")

    def _paths(self, root: str | os.PathLike) -> Any:
        """Checkpoint paths under `root` from `config.path` (the official layout unless changed)."""
        from fast_tts.models.chattts.loader import CheckpointPaths

        p, root = self.config.path, Path(root)
        return CheckpointPaths(
            vocos=root / p.vocos_ckpt_path, dvae=root / p.dvae_ckpt_path, decoder=root / p.decoder_ckpt_path,
            embed=root / p.embed_path, gpt_dir=root / p.gpt_ckpt_path, tokenizer_dir=root / p.tokenizer_path,
        )

    def _from_hub(self, cache_dir: Any, force: bool, local_dir: Path | None = None) -> str | None:
        if not force and local_dir is None:
            cached = _latest_snapshot(cache_dir)
            if cached is not None:
                return cached
        try:
            from huggingface_hub import snapshot_download
        except ImportError as exc:
            raise MissingDependencyError(
                "source='huggingface' needs huggingface_hub: pip install huggingface_hub") from exc
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
        custom_path: str | os.PathLike | None = None,
        device: Any | None = None,
        coef: Any | None = None,
        use_flash_attn: bool = False,
        use_vllm: bool = False,
        experimental: bool = False,
        **options: Any,
    ) -> bool:
        """Load the checkpoint; True on success. `options` go to the runtime (dtype, backend, max_batch, ...)."""
        if use_flash_attn and _missing("flash_attn"):
            raise MissingDependencyError("use_flash_attn=True needs flash-attn: pip install flash-attn")
        backend = options.pop("backend", self.config.backend)
        if use_vllm:
            # vLLM samples one token per step and returns no hidden states, while ChatTTS's GPT samples four codebooks
            # jointly and feeds their summed embeddings back (README, "vLLM backend"); scripts written for upstream
            # keep working, with the GPT on the continuous-batching backend.
            self.logger.warning(
                "use_vllm=True: vLLM cannot run ChatTTS's four-codebook GPT; it runs on fast-tts's %r backend "
                "(continuous batching) instead", backend)
        root = self.download_models(source, force_redownload, custom_path)
        if root is None:
            return False
        paths = self._paths(root)
        return self._load(
            vocos_ckpt_path=str(paths.vocos), dvae_ckpt_path=str(paths.dvae), gpt_ckpt_path=str(paths.gpt_dir),
            embed_path=str(paths.embed), decoder_ckpt_path=str(paths.decoder),
            tokenizer_path=str(paths.tokenizer_dir), device=device, compile=compile, coef=coef,
            use_flash_attn=use_flash_attn, backend=backend, **options,
        )

    def _load(
        self,
        vocos_ckpt_path: str,
        dvae_ckpt_path: str,
        gpt_ckpt_path: str,
        embed_path: str,
        decoder_ckpt_path: str,
        tokenizer_path: str,
        device: Any | None = None,
        compile: bool = False,
        coef: str | None = None,
        use_flash_attn: bool = False,
        **options: Any,
    ) -> bool:
        """Load from explicit paths (files, and the gpt and tokenizer folders), as the reference's `_load`."""
        from fast_tts.devices import pick_device
        from fast_tts.engine.chattts_runtime import ChatTTSRuntime
        from fast_tts.models.chattts.loader import CheckpointPaths, load_chattts
        from fast_tts.models.chattts.reference_api import GPTView, Speaker, Tokenizer, coef_string, sync_config

        if coef is not None:
            self.logger.info("coef is ignored: the checkpoint's coef buffers are used, as in the reference")
        paths = CheckpointPaths(
            vocos=Path(vocos_ckpt_path), dvae=Path(dvae_ckpt_path), decoder=Path(decoder_ckpt_path),
            embed=Path(embed_path), gpt_dir=Path(gpt_ckpt_path), tokenizer_dir=Path(tokenizer_path),
        )
        device = pick_device(device)
        backend = options.pop("backend", self.config.backend)
        models = load_chattts(
            paths.embed.parent,
            device=device,
            spk_stat=self.config.spk_stat,
            residual_scale_base=options.pop("residual_scale_base", self.config.residual_scale_base),
            paths=paths,
        )
        self._release()
        self.runtime = ChatTTSRuntime(
            models,
            backend=backend,
            dtype=options.pop("dtype", self.config.dtype),
            device=device,
            compile=compile,
            max_batch=options.pop("max_batch", self.config.max_batch),
            **options,
        )
        cfg = models.config
        self.device = self.device_gpt = device
        self.compile = compile
        self.tokenizer = Tokenizer(models.tokenizer)
        self.speaker = Speaker(cfg.gpt.hidden_size, models.spk_std, models.spk_mean)
        self.gpt = GPTView(models.gpt, cfg.embed.num_audio_tokens, cfg.embed.num_text_tokens, device,
                           use_flash_attn, is_vllm=backend == "vllm")
        self.embed = models.gpt.embed
        self.dvae, self.decoder, self.vocos = models.dvae, models.decoder, models.vocos
        # the reference's coef string is the random coef drawn before its checkpoint overwrites it (load(coef=...)
        # changes nothing either); ours is the Decoder's coef in use, or the string given
        self.coef = coef if isinstance(coef, str) else coef_string(models.decoder.coef)
        sync_config(self.config, models)
        return True

    def unload(self) -> None:
        """Free the models, the backends and the loop thread; like the reference, the object starts afresh
        (config, normalizer registrations and sha256_map are reset)."""
        self._release()
        self.__init__(self.logger)

    def _release(self) -> None:
        if self.runtime is not None and self._loop is not None:
            self._loop.run(self.runtime.shutdown())
        if self._loop is not None:
            self._loop.close()
        self.runtime = None
        self._loop = None
        for name in _LOADED_ATTRIBUTES:
            self.__dict__.pop(name, None)

    def _require(self) -> Any:
        if self.runtime is None:
            raise RuntimeError("models are not loaded: call Chat.load() first")
        if self._loop is None:
            self._loop = _LoopThread()
        return self.runtime

    # ----- speakers --------------------------------------------------------------------------------------------

    def sample_random_speaker(self) -> str:
        """A random speaker string from the model's speaker statistics (global torch RNG, as the reference)."""
        self._require()
        return self.speaker.sample_random()

    def sample_audio_speaker(self, wav: np.ndarray | Any) -> str:
        """Audio-prompt string of a 1-D 24 kHz wav (DVAE codes), for `InferCodeParams.spk_smp`."""
        return self._require().audio_prompt(wav)

    # ----- inference -------------------------------------------------------------------------------------------

    def interrupt(self) -> None:
        """Stop the running `infer` (from any thread) within one generation step."""
        self.context.set(True)
        if self.runtime is not None and self._loop is not None:
            runtime = self.runtime
            self._loop.loop.call_soon_threadsafe(lambda: asyncio.ensure_future(runtime.stop_all()))

    def infer(
        self,
        text: str | list[str],
        stream: bool = False,
        lang: str | None = None,
        skip_refine_text: bool = False,
        refine_text_only: bool = False,
        use_decoder: bool = True,
        do_text_normalization: bool = True,
        do_homophone_replacement: bool = True,
        split_text: bool = True,
        max_split_batch: int = 4,
        params_refine_text: Chat.RefineTextParams | None = None,
        params_infer_code: Chat.InferCodeParams | None = None,
    ) -> Any:
        """Synthesize: a list of float32 wavs (one concatenated wav if split_text), texts with refine_text_only,
        or with stream=True an iterator of (rows, samples) float32 arrays."""
        from fast_tts.models.chattts.reference_rng import GlobalStream

        runtime = self._require()
        self.context.set(False)
        refine = dataclasses.replace(params_refine_text or Chat.RefineTextParams())
        code = dataclasses.replace(params_infer_code or Chat.InferCodeParams())
        if isinstance(max_split_batch, bool) or not isinstance(max_split_batch, int) or max_split_batch < 1:
            raise InvalidInputError(f"max_split_batch must be an integer >= 1, got {max_split_batch!r}",
                                    field="max_split_batch")
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
        rng = GlobalStream()
        streaming = False
        try:
            if not skip_refine_text:
                texts = self._loop.run(self._refine(runtime, texts, refine, rng))
                if refine_text_only:
                    return "\n".join(texts) if split_text else texts
            if split_text and len(texts) > 1 and code.spk_smp is None:
                [wav] = self._loop.run(self._synthesize_groups(runtime, [[texts[0]]], code, use_decoder, rng))
                code.spk_smp, code.txt_smp = runtime.audio_prompt(wav), texts[0]
            step = max_split_batch if split_text else len(texts)
            groups = [texts[i : i + step] for i in range(0, len(texts), step)]
            if stream:
                streaming = True
                return self._loop.iterate(self._stream_groups(runtime, groups, code, use_decoder, split_text, rng))
            wavs = self._loop.run(self._synthesize_groups(runtime, groups, code, use_decoder, rng))
        finally:
            if not streaming:
                rng.close()
        stripped = [w[np.abs(w) > np.float32(1e-5)] for w in wavs]
        return [np.concatenate(stripped)] if split_text else stripped

    async def _refine(self, runtime: Any, texts: list[str], p: Chat.RefineTextParams, rng: Any) -> list[str]:
        from fast_tts.models.chattts.prompt import code_sampling
        from fast_tts.models.chattts.reference_rng import batch_noise

        sampling = code_sampling(
            p.temperature, p.top_P, p.top_K, p.repetition_penalty, p.min_new_token, p.max_new_token,
            runtime.models.tokenizer.eos_id, p.manual_seed, p.ensure_non_empty, False,
        )
        noise = batch_noise(rng, p.manual_seed, len(texts), 1, runtime.models.config.embed.num_text_tokens)
        try:
            return await runtime.refine(texts, [dataclasses.replace(sampling, noise=n) for n in noise], p.prompt)
        finally:
            for n in noise:
                n.release()

    def _requests(self, texts: list[str], p: Chat.InferCodeParams, use_decoder: bool, rng: Any) -> list[Any]:
        """Code requests for one reference batch, each with its row's noise (`.sampling.noise`)."""
        from fast_tts.models.chattts.prompt import ChatTTSVoice, CodeRequest, code_sampling
        from fast_tts.models.chattts.reference_rng import batch_noise

        embed = self.runtime.models.config.embed
        sampling = code_sampling(
            p.temperature, p.top_P, p.top_K, p.repetition_penalty, p.min_new_token, p.max_new_token,
            self.runtime.eos_code, p.manual_seed, p.ensure_non_empty, use_decoder,
        )
        noise = batch_noise(rng, p.manual_seed, len(texts), embed.num_vq, embed.num_audio_tokens)
        voice = ChatTTSVoice(p.spk_emb, p.spk_smp, p.txt_smp)
        return [CodeRequest(t, dataclasses.replace(sampling, noise=n), voice, p.prompt) for t, n in zip(texts, noise)]

    async def _synthesize_groups(
        self, runtime: Any, groups: list[list[str]], p: Chat.InferCodeParams, use_decoder: bool, rng: Any
    ) -> list[np.ndarray]:
        """Wavs of every text, batch by batch. Each row is decoded as soon as it has finished generating (while
        longer rows still generate). Batches drawing from the global generator generate one after the other;
        seeded batches generate together."""

        async def finish(stream: Any, request: Any) -> Any:
            try:
                return await stream.collect()
            finally:
                await stream.cancel()
                request.sampling.noise.release()

        async def decode(collected: asyncio.Future[Any]) -> np.ndarray:
            frames = _frames(await collected, use_decoder, runtime)
            return await asyncio.wrap_future(runtime.decode_future(frames, use_decoder))

        async def generate(texts: list[str]) -> list[asyncio.Future[np.ndarray]]:
            requests = self._requests(texts, p, use_decoder, rng)
            streams = runtime.generate_codes(requests)
            collected = [asyncio.ensure_future(finish(s, r)) for s, r in zip(streams, requests)]
            decodes = [asyncio.ensure_future(decode(c)) for c in collected]
            try:
                await asyncio.gather(*collected)  # this batch has drawn all its noise
            except BaseException:
                for task in (*collected, *decodes):
                    task.cancel()
                raise
            return decodes

        if p.manual_seed is not None:
            decodes = [d for ds in await asyncio.gather(*(generate(g) for g in groups)) for d in ds]
        else:
            decodes = []
            for g in groups:
                decodes += await generate(g)
        return list(await asyncio.gather(*decodes))

    async def _stream_groups(
        self, runtime: Any, groups: list[list[str]], p: Chat.InferCodeParams, use_decoder: bool, joined: bool,
        rng: Any,
    ) -> Any:
        """Chunks (rows, n): one row of all texts in order when `joined`, else one row per text advancing together.
        Batches drawing from the global generator start one after the other; the generator is written back at the
        end."""
        try:
            batches = [self._requests(g, p, use_decoder, rng) for g in groups]
            async for chunk in _stream_rows(runtime, batches, use_decoder, joined, p.manual_seed is None):
                yield chunk
        finally:
            rng.close()


def _frames(result: Any, use_decoder: bool, runtime: Any) -> Any:
    """What the decoder reads of a generation result: hiddens (T, H) with the Decoder, code ids (T, 4) with the DVAE."""
    import torch

    frames = result.hiddens if use_decoder else result.token_ids
    return frames if frames is not None else torch.zeros(0, runtime.hidden_size)


async def _stream_rows(runtime: Any, batches: list[list[Any]], use_decoder: bool, joined: bool,
                       sequential: bool) -> Any:
    """Chunks (rows, n) of the requests of every batch: one row of all texts in order when `joined`, else one row
    per text advancing together. With `sequential`, a batch starts generating once the previous one has finished."""
    requests = [r for batch in batches for r in batch]
    queues: list[asyncio.Queue] = [asyncio.Queue() for _ in requests]

    async def pump(index: int) -> None:
        try:
            async for chunk in runtime.stream(requests[index], use_decoder):
                queues[index].put_nowait(chunk)
        finally:
            requests[index].sampling.noise.release()
            queues[index].put_nowait(None)

    async def start_all() -> None:
        first = 0
        for batch in batches:
            pumps = [asyncio.ensure_future(pump(first + i)) for i in range(len(batch))]
            tasks.extend(pumps)
            first += len(batch)
            if sequential:
                await asyncio.gather(*pumps, return_exceptions=True)

    tasks: list[asyncio.Future] = []
    starter = asyncio.ensure_future(start_all())
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
        await starter
        for t in tasks:
            await t  # surface errors of the pumps
    finally:
        starter.cancel()
        for t in tasks:
            t.cancel()


def _split_input(text: str | list[str], split_text: bool) -> list[str]:
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


def _latest_snapshot(cache_dir: Any) -> str | None:
    """The newest local snapshot of the model, where the reference looks first: <cache_dir or $HF_HOME/hub>/
    models--2Noise--ChatTTS/snapshots/* (a folder linked there works offline)."""
    if cache_dir is None:
        cache_dir = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"
    snapshots = Path(cache_dir) / ("models--" + HF_REPO.replace("/", "--")) / "snapshots"
    found = [d for d in snapshots.iterdir() if d.is_dir()] if snapshots.is_dir() else []
    return str(max(found, key=lambda d: d.stat().st_mtime)) if found else None


# Attributes load() sets (the reference's modules); before load() and after unload() they do not exist.
_LOADED_ATTRIBUTES = ("tokenizer", "speaker", "gpt", "embed", "dvae", "decoder", "vocos", "device", "device_gpt",
                      "compile", "coef")
_USE_INFER = "generation and decoding run on fast_tts's batching runtime; use chat.infer(...)"
_INTERNAL_HINTS = {
    "_infer": _USE_INFER,
    "_infer_code": _USE_INFER + " with skip_refine_text=True",
    "_refine_text": _USE_INFER + " with refine_text_only=True",
    "_decode_to_wavs": "decode with fast_tts.models.chattts.decode.decode_rows(chat.runtime.models, rows, "
                       "use_decoder), which also keeps padding frames out of shorter rows",
    "_vocos_decode": "use chat.vocos.decode(mel)",
}


def _missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None

