"""AsyncMega3Engine: MegaTTS3 zero-shot cloning behind the AsyncEngine surface (the engine API of reference 004).

Per request: text is cleaned, normalized and split; the G2P generations of all its segments start at once on the LM
backend (continuous batching, sampling per reference-004 defaults); each segment then runs duration LM -> DiT ->
WaveVAE on a worker as soon as its phones are there, and segments are joined with the reference's 0.16 s Hann
crossfade in float64 and written as the reference writes int16. A stream's first segment leaves in WaveVAE pieces,
its first about one second of audio, with its loudness gain set from that second (`MegaTTS3Pipeline.segment_pieces`):
later segments, and all of `speak_async` / `clone_voice_async`, are the reference's samples.
A voice is a reference wav plus its WaveVAE latent (.npy), or the wav alone when the checkpoint's WaveVAE has its
encoder; its aligned prompt is computed once, when the voice is made.
"""

from __future__ import annotations

import logging
import sys
import threading
import warnings
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fast_tts.devices import bf16_fast, pick_device
from fast_tts.engine.base import AsyncEngine, ProgressFn, Segment, SegmentJob, Voice
from fast_tts.engine.lm import LMCall, RequestContext
from fast_tts.engine.params import SpeechParams, given, is_int, is_number
from fast_tts.errors import InvalidInputError, UnknownVoiceError
from fast_tts.models.megatts3.frontend import read_reference
from fast_tts.models.megatts3.g2p import MAX_NEW_TOKENS
from fast_tts.models.megatts3.loader import load_megatts3
from fast_tts.models.megatts3.pipeline import REFERENCE_JOIN, MegaTTS3Pipeline, ReferencePrompt, clean_text
from fast_tts.sampling import SamplingParams

log = logging.getLogger(__name__)

UNSUPPORTED = ("pitch", "speed")  # reference 004 lists them; the model has no such control
TORCH_DTYPES = ("auto", "float32", "float16", "bfloat16")  # float16 runs as float32 (the backend has no float16)


@dataclass(frozen=True)
class Mega3Params(SpeechParams):
    """MegaTTS3's request parameters with reference 004's defaults."""

    temperature: float = 0.9
    top_k: int = 50
    top_p: float = 0.95
    repetition_penalty: float = 1.0
    max_tokens: int = 4096
    time_step: int = 32
    p_w: float = 1.6
    t_w: float = 2.5
    dur_disturb: float = 0.1
    dur_alpha: float = 1.0

    def check(self) -> None:
        super().check()
        for key, low, high in (("time_step", 1, 1000), ("max_tokens", 1, 1 << 20)):
            value = getattr(self, key)
            if not is_int(value) or not low <= value <= high:
                raise InvalidInputError(f"{key} must be an integer from {low} to {high}", field=key)
        for key in ("p_w", "t_w", "dur_disturb", "dur_alpha"):
            value = getattr(self, key)
            if not is_number(value) or value < 0:
                raise InvalidInputError(f"{key} must be a finite number >= 0", field=key)
        self.sampling(0, 0)  # raises for bad sampling values

    def sampling(self, seed: int, stop_id: int) -> SamplingParams:
        """The G2P's sampling for one segment."""
        return SamplingParams(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                              repetition_penalty=self.repetition_penalty,
                              max_new_tokens=min(int(self.max_tokens), MAX_NEW_TOKENS), stop_token_ids=(stop_id,),
                              seed=seed)


@dataclass(frozen=True)
class Mega3Voice:
    """A MegaTTS3 voice: the aligned reference prompt everything is conditioned on."""

    prompt: ReferencePrompt


class AsyncMega3Engine(AsyncEngine):
    """MegaTTS3 engine: `model_path` is the official checkpoint folder (diffusion_transformer/, ..., g2p/).

    Reference-004 constructor; `backend` is torch | vllm | llama-cpp | mlx-lm | sglang (with `backend_options` for it,
    e.g. {"gguf_type": "q8_0"}). `batch_size`, `wait_timeout`, `llm_attn_implementation` and
    `llm_gpu_memory_utilization` are accepted for compatibility and unused: segments run one after another on the
    worker threads, while the G2P generations of all segments are batched in the LM backend.
    """

    family = "megatts3"
    can_clone = True
    sample_rate = 24000
    default_voice = "female"
    params_type = Mega3Params
    join = REFERENCE_JOIN
    lm_ahead = sys.maxsize  # every segment's G2P starts at once
    waits_on_lm = True

    def __init__(self, model_path: str | Path, max_length: int = 32768, llm_device: str = "auto",
                 tokenizer_device: str = "auto", backend: str = "torch", llm_attn_implementation: str | None = None,
                 torch_dtype: str = "auto", llm_gpu_memory_utilization: float = 0.6, batch_size: int = 1,
                 llm_batch_size: int = 8, wait_timeout: float = 0.01, seed: int = 0,
                 backend_options: dict[str, Any] | None = None, **engine_options: Any) -> None:
        if torch_dtype not in TORCH_DTYPES:
            raise InvalidInputError(f"torch_dtype must be one of {', '.join(TORCH_DTYPES)}; got {torch_dtype!r}",
                                    field="torch_dtype")
        super().__init__(**engine_options)
        device = pick_device(tokenizer_device)
        self.models = load_megatts3(model_path, device=device)
        # Under "auto" the G2P LM runs in bf16 where bf16 is fast and the DiT and WaveVAE keep float32, the
        # reference's numbers; "bfloat16" also runs those two under bf16 autocast.
        bf16 = torch_dtype == "bfloat16" and bf16_fast(device)
        if torch_dtype == "bfloat16" and not bf16:
            log.warning("torch_dtype='bfloat16': no fast bf16 on %s, so the DiT and WaveVAE run in float32", device)
        self.pipeline = MegaTTS3Pipeline(self.models, bf16=bf16)
        self.seed = int(seed)
        self._backend_options = {"max_batch": max(1, int(llm_batch_size)), "max_seq": min(int(max_length), 4096),
                                 "device": pick_device(llm_device),
                                 "dtype": "float32" if torch_dtype == "float16" else torch_dtype,
                                 **(backend_options or {})}
        from fast_tts.backends import create_backend

        # built now, so a backend that cannot run this G2P says so here and not at the first request
        self._backend = create_backend(backend, self.models.g2p, **self._backend_options)
        self._compute = threading.Lock()  # one segment's DiT/WaveVAE at a time: they use every core already

    # ----- voices ---------------------------------------------------------------------------------------------
    def _builtin_voices(self) -> list[str]:
        return []

    def _builtin_voice(self, name: str) -> Voice[Mega3Voice]:
        raise UnknownVoiceError(name, self.list_speakers())

    def _reference(self, reference_audio: Any) -> dict[str, np.ndarray]:
        """The arrays that define a voice: the 24 kHz wav, and the latent when one is given."""
        wav, latent = read_reference(reference_audio)
        return {"wav": wav} if latent is None else {"wav": wav, "latent": latent}

    def _make_voice(self, name: str, arrays: Mapping[str, np.ndarray]) -> Voice[Mega3Voice]:
        """Align the reference once (blocking); a bad wav or latent fails here."""
        return Voice(name, Mega3Voice(self.pipeline.preprocess(arrays["wav"], arrays.get("latent"))))

    def _make_speaker(self, name: str, audio: Any, reference_text: str | None,
                      options: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        if audio is None:
            raise InvalidInputError("a MegaTTS3 speaker needs reference audio: (wav, npy latent), or a wav alone when "
                                    "the checkpoint has the WaveVAE encoder", field="audio")
        return self._reference(audio), {"reference_text": reference_text or ""}

    def _speaker_voice(self, name: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Voice[Mega3Voice]:
        return self._make_voice(name, arrays)

    def _clone_voice(self, reference_audio: Any, reference_text: str | None) -> Voice[Mega3Voice]:
        return self._make_voice("<clone>", self._reference(reference_audio))

    # ----- synthesis --------------------------------------------------------------------------------------------
    def _request_seed(self, params: Mega3Params) -> int:
        return params.seed if params.seed is not None else self.seed

    def _prepare(self, text: str, voice: Voice[Any], params: Mega3Params, ctx: RequestContext) -> list[str]:
        """Clean, normalize and split; the request's seeded generator (durations, DiT noise) is made here."""
        ctx.state = torch.Generator().manual_seed(self._request_seed(params))
        return super()._prepare(clean_text(text), voice, params, ctx)

    def _lm_call(self, segment: Segment, voice: Voice[Any], params: Mega3Params, ctx: RequestContext) -> LMCall:
        g2p = self.models.g2p
        sampling = params.sampling(self._request_seed(params) + segment.index, g2p.stop_id)
        return LMCall(self._backend, torch.tensor(g2p.prompt_ids(segment.text))[:, None], sampling)

    def _synthesize(self, job: SegmentJob) -> Iterator[np.ndarray]:
        """One segment's float audio (after loudness matching). In a stream the first segment leaves in WaveVAE
        pieces, so the first audio does not wait for the whole segment to decode; every other segment is decoded
        whole, as the reference."""
        assert job.tokens is not None
        ids = [int(step.token_ids[0]) for step in job.tokens]
        if job.tokens.finish_reason == "stop":  # the backend does not return the stop token; the slicing needs it
            ids.append(self.models.g2p.stop_id)
        ph, tone = self.pipeline.phones_from_g2p_ids(ids)
        p: Mega3Params = job.params  # type: ignore[assignment]
        seg = job.segment
        options = dict(is_first=seg.index == 0, is_final=seg.index == seg.count - 1, time_step=p.time_step,
                       p_w=float(p.p_w), t_w=float(p.t_w), dur_disturb=float(p.dur_disturb),
                       dur_alpha=float(p.dur_alpha), generator=job.context.state)
        prompt = job.voice.data.prompt
        if not (job.streamed and seg.index == 0):
            with self._compute:
                yield self.pipeline.segment(prompt, ph, tone, **options).wav
            return
        pieces = self.pipeline.segment_pieces(prompt, ph, tone, **options)
        while True:
            with self._compute:  # held per piece, so an abandoned stream never keeps the lock
                wav = next(pieces, None)
            if wav is None:
                return
            yield wav

    # ----- public API (reference 004) -------------------------------------------------------------------------
    @staticmethod
    def _values(arguments: Mapping[str, Any]) -> dict[str, Any]:
        """The request's parameters, less `pitch` and `speed` (warned about unless left at their defaults)."""
        values = given(arguments)
        for key in UNSUPPORTED:
            if values.pop(key, None) not in (None, "moderate", 1.0):
                warnings.warn(f"MegaTTS3 does not support {key!r}; the value is ignored", stacklevel=3)
        return values

    async def speak_async(self, text: str, name: str = "female", pitch: str = "moderate", speed: str = "moderate",
                          temperature: float = 0.9, top_k: int = 50, top_p: float = 0.95,
                          repetition_penalty: float = 1.0, max_tokens: int = 4096, length_threshold: int = 50,
                          window_size: int = 50, time_step: int = 32, p_w: float = 1.6, t_w: float = 2.5, *,
                          dur_disturb: float = 0.1, dur_alpha: float = 1.0, seed: int | None = None,
                          deterministic: bool | None = None, normalize: bool = True,
                          progress: ProgressFn | None = None, **unknown: Any) -> np.ndarray:
        """Speak `text` in speaker `name`'s voice (added with add_speaker); int16 at 24 kHz.

        pitch, speed: accepted and ignored (the model has no such control). temperature, top_k, top_p,
        repetition_penalty, max_tokens: the G2P's sampling. length_threshold / window_size: text splitting.
        time_step: DiT sampling steps; p_w: intelligibility weight; t_w: similarity weight (classifier-free
        guidance). dur_disturb / dur_alpha: duration noise and scale. seed: reproducible output (default: the
        engine's seed). progress(done, total) is called as segments finish.
        """
        return await self._speak(text, name, self._values(locals()), progress)

    def speak_stream_async(self, text: str, name: str = "female", pitch: str = "moderate", speed: str = "moderate",
                           temperature: float = 0.9, top_k: int = 50, top_p: float = 0.95,
                           repetition_penalty: float = 1.0, max_tokens: int = 4096, length_threshold: int = 50,
                           window_size: int = 50, time_step: int = 32, p_w: float = 1.6, t_w: float = 2.5, *,
                           dur_disturb: float = 0.1, dur_alpha: float = 1.0, seed: int | None = None,
                           deterministic: bool | None = None, normalize: bool = True,
                           progress: ProgressFn | None = None, **unknown: Any) -> AsyncIterator[np.ndarray]:
        """speak_async's audio as int16 chunks, each segment as it is made (the first one in pieces)."""
        return self._speak_stream(text, name, self._values(locals()), progress)

    async def clone_voice_async(self, text: str, reference_audio: Any, reference_text: str | None = None,
                                pitch: str = "moderate", speed: str = "moderate", temperature: float = 0.9,
                                top_k: int = 50, top_p: float = 0.95, repetition_penalty: float = 1.0,
                                max_tokens: int = 4096, length_threshold: int = 50, window_size: int = 50,
                                time_step: int = 32, p_w: float = 1.6, t_w: float = 2.5, *,
                                dur_disturb: float = 0.1, dur_alpha: float = 1.0, seed: int | None = None,
                                deterministic: bool | None = None, normalize: bool = True,
                                **unknown: Any) -> np.ndarray:
        """Speak `text` in the voice of `reference_audio`: (wav path or bytes, WaveVAE latent .npy path, bytes or
        array), or a wav alone when the checkpoint's WaveVAE has its encoder. `reference_text` is not needed by
        this model. Other parameters as speak_async."""
        return await self._clone(text, reference_audio, reference_text, self._values(locals()))

    def clone_voice_stream_async(self, text: str, reference_audio: Any, reference_text: str | None = None,
                                 pitch: str = "moderate", speed: str = "moderate", temperature: float = 0.9,
                                 top_k: int = 50, top_p: float = 0.95, repetition_penalty: float = 1.0,
                                 max_tokens: int = 4096, length_threshold: int = 50, window_size: int = 50,
                                 time_step: int = 32, p_w: float = 1.6, t_w: float = 2.5, *,
                                 dur_disturb: float = 0.1, dur_alpha: float = 1.0, seed: int | None = None,
                                 deterministic: bool | None = None, normalize: bool = True,
                                 **unknown: Any) -> AsyncIterator[np.ndarray]:
        """clone_voice_async's audio as int16 chunks as they are made."""
        return self._clone_stream(text, reference_audio, reference_text, self._values(locals()))

    async def _close(self) -> None:
        """Stop the G2P backend (after the engine's workers)."""
        await self._backend.shutdown()
