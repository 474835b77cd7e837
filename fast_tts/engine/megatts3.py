"""AsyncMega3Engine: MegaTTS3 zero-shot cloning behind the AsyncEngine surface (the engine API of reference 004).

Per request: text is cleaned, normalized and split; the G2P prompts of all segments go to the LM backend together
(continuous batching, sampling per reference-004 defaults); then each segment runs duration LM -> DiT -> WaveVAE on
the engine's worker threads and leaves as soon as it is made; segments are joined with the reference's 0.16 s Hann
crossfade. A stream's first segment leaves in WaveVAE pieces, its first about one second of audio, with its loudness
gain set from that second (`MegaTTS3Pipeline.segment_pieces`): later segments, and all of `speak_async` /
`clone_voice_async`, are the reference's samples.
A voice is a reference wav plus its WaveVAE latent (.npy), or the wav alone when the checkpoint's WaveVAE has its
encoder; its aligned prompt is computed once and cached.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from fast_tts.backends import backend_name
from fast_tts.devices import bf16_fast
from fast_tts.engine.base import AsyncEngine, Voice
from fast_tts.engine.streaming import SegmentJoiner
from fast_tts.errors import InvalidInputError, UnknownVoiceError
from fast_tts.models.megatts3.g2p import MAX_NEW_TOKENS
from fast_tts.models.megatts3.loader import load_megatts3
from fast_tts.models.megatts3.pipeline import (
    MegaTTS3Pipeline,
    CROSSFADE_S,
    clean_text,
    to_int16,
)

log = logging.getLogger(__name__)

IGNORED = ("pitch", "speed")
TORCH_DTYPES = ("auto", "float32", "float16", "bfloat16")  # float16 runs as float32 (the backend has no float16)


def _read_latent(source: Any) -> np.ndarray:
    """A .npy latent from a path, bytes or an array."""
    if isinstance(source, np.ndarray):
        return source.astype(np.float32)
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            arr = np.load(io.BytesIO(bytes(source)), allow_pickle=False)
        else:
            arr = np.load(Path(source), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"cannot read the reference latent (.npy): {exc}", field="reference_audio") from exc
    return np.asarray(arr, dtype=np.float32)


def split_reference(reference_audio: Any) -> tuple[Any, Any]:
    """(wav path/bytes, npy path/bytes/array or None) from reference-004's tuple form or a bare wav."""
    if isinstance(reference_audio, (tuple, list)):
        if len(reference_audio) != 2:
            raise InvalidInputError("reference_audio must be (wav, npy latent)", field="reference_audio")
        return reference_audio[0], reference_audio[1]
    return reference_audio, None


class AsyncMega3Engine(AsyncEngine):
    """MegaTTS3 engine: `model_path` is the official checkpoint folder (diffusion_transformer/, ..., g2p/).

    Reference-004 constructor; `backend` is torch | llama-cpp | mlx-lm | sglang (+ `backend_options` for it, e.g.
    {"gguf_type": "q8_0"}). `batch_size`, `wait_timeout`, `llm_attn_implementation` and
    `llm_gpu_memory_utilization` are accepted for compatibility and unused: segments of a request run one after
    another on the worker threads, while the G2P prompts of all its segments are batched in the LM backend.
    """

    family = "megatts3"
    can_clone = True
    sample_rate = 24000
    default_voice = ""
    family_params: ClassVar[dict[str, Any]] = {
        "temperature": 0.9, "top_k": 50, "top_p": 0.95, "repetition_penalty": 1.0, "max_tokens": 4096,
        "time_step": 32, "p_w": 1.6, "t_w": 2.5, "dur_disturb": 0.1, "dur_alpha": 1.0,
    }

    def __init__(self, model_path: str | Path, max_length: int = 32768, llm_device: str = "auto",
                 tokenizer_device: str = "auto", backend: str = "torch", llm_attn_implementation: str | None = None,
                 torch_dtype: str = "auto", llm_gpu_memory_utilization: float = 0.6, batch_size: int = 1,
                 llm_batch_size: int = 8, wait_timeout: float = 0.01, seed: int = 0,
                 backend_options: dict[str, Any] | None = None, **engine_options: Any) -> None:
        if torch_dtype not in TORCH_DTYPES:
            raise InvalidInputError(f"torch_dtype must be one of {', '.join(TORCH_DTYPES)}; got {torch_dtype!r}",
                                    field="torch_dtype")
        super().__init__(**engine_options)
        device = _device(tokenizer_device)
        self.models = load_megatts3(model_path, device=device)
        # Under "auto" the G2P LM runs in bf16 where bf16 is fast (4x faster than float32 on a 2-core AVX-512 BF16
        # CPU) and the DiT and WaveVAE keep float32, the reference's numbers; "bfloat16" also runs those two under
        # bf16 autocast.
        bf16 = torch_dtype == "bfloat16" and bf16_fast(device)
        if torch_dtype == "bfloat16" and not bf16:
            log.warning("torch_dtype='bfloat16': no fast bf16 on %s, so the DiT and WaveVAE run in float32", device)
        self.pipeline = MegaTTS3Pipeline(self.models, bf16=bf16)
        self.seed = int(seed)
        self.backend_name = backend_name(backend)
        self._backend_options = {"max_batch": max(1, int(llm_batch_size)), "max_seq": min(int(max_length), 4096),
                                 "device": _device(llm_device),
                                 "dtype": "float32" if torch_dtype == "float16" else torch_dtype,
                                 **(backend_options or {})}
        self._backend = None
        self._backend_lock = threading.Lock()
        if self.backend_name != "torch":  # engines that load the checkpoint themselves fail here, not at a request
            self._get_backend()
        self._compute = threading.Lock()  # one segment's DiT/WaveVAE at a time: they use every core already

    # ----- voices ---------------------------------------------------------------------------------------------
    def _builtin_voices(self) -> list[str]:
        return []

    def _builtin_voice(self, name: str) -> Voice:
        raise UnknownVoiceError(name, self.list_speakers())

    def _load_reference(self, reference_audio: Any) -> dict[str, np.ndarray]:
        from fast_tts.audio import read_audio

        wav_src, lat_src = split_reference(reference_audio)
        wav, _ = read_audio(wav_src, target_sr=self.sample_rate)
        arrays = {"wav": np.asarray(wav, dtype=np.float32)}
        if lat_src is not None:
            arrays["latent"] = _read_latent(lat_src)
        return arrays

    def _prompt(self, voice: Voice) -> Any:
        """The voice's aligned reference prompt, computed on first use (blocking, on a worker)."""
        data = voice.data
        if "prompt" not in data:
            data["prompt"] = self.pipeline.preprocess(data["wav"], data.get("latent"))
        return data["prompt"]

    def _make_speaker(self, name: str, audio: Any, reference_text: str | None,
                      options: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        if audio is None:
            raise InvalidInputError("a MegaTTS3 speaker needs reference audio: (wav, npy latent), or a wav alone when "
                                    "the checkpoint has the WaveVAE encoder", field="audio")
        arrays = self._load_reference(audio)
        self._prompt(Voice(name, dict(arrays)))  # validate now: bad audio or latent fails at add time
        return arrays, {"reference_text": reference_text or ""}

    def _speaker_voice(self, name: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Voice:
        return Voice(name, {k: np.asarray(v) for k, v in arrays.items()})

    def _clone_voice(self, reference_audio: Any, reference_text: str | None) -> Voice:
        voice = Voice("<clone>", self._load_reference(reference_audio))
        self._prompt(voice)
        return voice

    # ----- parameters -----------------------------------------------------------------------------------------
    def _params(self, voice: Voice, given: dict[str, Any]) -> dict[str, Any]:
        for key in IGNORED:
            if given.get(key) not in (None, "moderate", 1.0):
                warnings.warn(f"MegaTTS3 does not support {key!r}; the value is ignored", stacklevel=3)
        return super()._params(voice, {k: v for k, v in given.items() if k not in IGNORED})

    def _check_params(self, params: dict[str, Any]) -> None:
        for key, low, high in (("time_step", 1, 1000), ("max_tokens", 1, 1 << 20)):
            v = params[key]
            if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
                raise InvalidInputError(f"{key} must be an integer from {low} to {high}", field=key)
        for key in ("p_w", "t_w", "dur_disturb", "dur_alpha"):
            v = params[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
                raise InvalidInputError(f"{key} must be a finite number >= 0", field=key)
        self._sampling(params, 0)  # validates temperature/top_k/top_p/repetition_penalty

    def _sampling(self, params: dict[str, Any], seed: int) -> Any:
        from fast_tts.sampling import SamplingParams

        return SamplingParams(temperature=params["temperature"], top_k=params["top_k"], top_p=params["top_p"],
                              repetition_penalty=params["repetition_penalty"],
                              max_new_tokens=min(int(params["max_tokens"]), MAX_NEW_TOKENS),
                              stop_token_ids=(self.models.g2p.stop_id,), seed=seed)

    def _prepare(self, text: str, voice: Voice, params: dict[str, Any]) -> list[Any]:
        return super()._prepare(clean_text(text), voice, params)

    # ----- synthesis --------------------------------------------------------------------------------------------
    def _get_backend(self) -> Any:
        with self._backend_lock:
            if self._backend is None:
                from fast_tts.backends import create_backend

                self._backend = create_backend(self.backend_name, self.models.g2p, **self._backend_options)
            return self._backend

    async def _g2p_all(self, texts: list[str], seed: int, params: dict[str, Any]) -> list[tuple[list[int], str]]:
        backend = await asyncio.to_thread(self._get_backend)  # an external engine may take a while to start
        g2p = self.models.g2p
        streams = [backend.submit(torch.tensor(g2p.prompt_ids(t))[:, None], self._sampling(params, seed + i))
                   for i, t in enumerate(texts)]
        try:
            results = await asyncio.gather(*(s.collect() for s in streams))
        finally:
            for s in streams:
                if not s.done:
                    await s.cancel()
        return [(r.token_ids[:, 0].tolist(), r.finish_reason) for r in results]

    def _phones(self, ids: list[int], finish: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Backend ids (stop token not returned) -> phones, sliced as the reference does."""
        stop = self.models.g2p.stop_id
        return self.pipeline.phones_from_g2p_ids(ids + [stop] if finish == "stop" else ids)

    def _synthesize(self, segment: Any, voice: Voice, params: dict[str, Any]) -> Iterator[np.ndarray]:
        """One segment's float audio (after loudness matching); `segment` = (phones, tones, index, count).

        In a stream the first segment leaves in WaveVAE pieces (`MegaTTS3Pipeline.segment_pieces`), so the first
        audio does not wait for the whole segment to decode; every other segment is decoded whole, as the reference.
        """
        ph, tone, index, count = segment
        options = dict(is_first=index == 0, is_final=index == count - 1, time_step=params["time_step"],
                       p_w=float(params["p_w"]), t_w=float(params["t_w"]), dur_disturb=float(params["dur_disturb"]),
                       dur_alpha=float(params["dur_alpha"]), generator=params["_generator"])
        if not (params.get("_streamed") and index == 0):
            with self._compute:
                out = self.pipeline.segment(self._prompt(voice), ph, tone, **options)
            yield out.wav
            return
        pieces = self.pipeline.segment_pieces(self._prompt(voice), ph, tone, **options)
        while True:
            with self._compute:  # held per piece, so an abandoned stream never keeps the lock
                wav = next(pieces, None)
            if wav is None:
                return
            yield wav

    def _pipeline(self, text: str, voice: Voice, params: dict[str, Any]) -> Iterator[tuple[np.ndarray, int, int]]:
        loop = asyncio.get_running_loop()
        return self._steps(loop, text, voice, params)

    def _steps(self, loop: asyncio.AbstractEventLoop, text: str, voice: Voice,
               params: dict[str, Any]) -> Iterator[tuple[np.ndarray, int, int]]:
        texts = [t for t in self._prepare(text, voice, params) if t.strip()]
        if not texts:
            raise InvalidInputError("input text has nothing that can be spoken", field="input")
        seed = params["seed"] if params["seed"] is not None else self.seed
        self._prompt(voice)
        ids = asyncio.run_coroutine_threadsafe(self._g2p_all(texts, seed, params), loop).result()
        params = {**params, "_generator": torch.Generator().manual_seed(seed)}
        joiner = SegmentJoiner(int(self.sample_rate * CROSSFADE_S), dtype=np.float64)
        for i, (gen, finish) in enumerate(ids):
            ph, tone = self._phones(gen, finish)
            for wav in self._synthesize((ph, tone, i, len(ids)), voice, params):
                out = joiner.push(wav)
                if out.size:
                    yield to_int16(out), i, len(ids)
            joiner.end_segment()
            yield np.zeros(0, dtype=np.int16), i + 1, len(ids)
        tail = joiner.flush()
        if tail.size:
            yield to_int16(tail), len(ids), len(ids)

    async def shutdown(self) -> None:
        """Stop the G2P backend, then the engine's workers."""
        backend, self._backend = self._backend, None
        if backend is not None:
            await backend.shutdown()
        await super().shutdown()


def _device(name: str) -> str:
    """'auto' -> cuda when available, else cpu."""
    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(name)

