"""AsyncChatTTSEngine: ChatTTS behind the AsyncEngine surface, on an LM backend with continuous batching.

A request's segments are split and normalized (ChatTTS's normalizer: wetext, homophones), optionally refined, then
each segment's codes are generated on the code backend, a few segments ahead of the one being heard, so long texts
run concurrently with each other and with other requests; each segment streams through the windowed decoder
(`ChatTTSRuntime.stream_audio`), and segments are joined with a 50 ms crossfade by the engine base. Voices:
"default" (a fixed speaker drawn from the model's speaker statistics), and custom speakers made from a speaker
string, a seed, or reference audio (cloning through the DVAE encoder), persisted in the speaker store. The GPT runs
in bf16 where the CPU or GPU supports it (`dtype="auto"`); pass dtype="float32" for output identical to the
reference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fast_tts.audio import JoinRule, read_audio
from fast_tts.devices import pick_device
from fast_tts.engine.base import AsyncEngine, ProgressFn, Segment, SegmentJob, Voice
from fast_tts.engine.chattts_runtime import SAMPLE_RATE, ChatTTSRuntime
from fast_tts.engine.lm import LMCall, RequestContext
from fast_tts.engine.params import SpeechParams, given, is_int
from fast_tts.errors import InvalidInputError, ModelLoadError, UnknownVoiceError
from fast_tts.models.chattts.loader import load_chattts
from fast_tts.models.chattts.normalizer import Normalizer
from fast_tts.models.chattts.prompt import ChatTTSVoice, CodeRequest, code_sampling
from fast_tts.models.chattts.speaker import decode_speaker, seeded_speaker

DEFAULT_VOICE_SEED = 2


@dataclass(frozen=True)
class ChatTTSParams(SpeechParams):
    """ChatTTS's request parameters (the reference's code-sampling defaults)."""

    temperature: float = 0.3
    top_p: float = 0.7
    top_k: int = 20
    repetition_penalty: float = 1.05
    max_tokens: int = 2048
    min_tokens: int = 0
    use_decoder: bool = True
    refine_text: bool = False

    def check(self) -> None:
        super().check()
        if not is_int(self.max_tokens) or not 1 <= self.max_tokens <= 4096:
            raise InvalidInputError("max_tokens must be an integer from 1 to 4096", field="max_tokens")
        if not is_int(self.min_tokens) or self.min_tokens < 0:
            raise InvalidInputError("min_tokens must be an integer >= 0", field="min_tokens")
        code_sampling(self.temperature, self.top_p, self.top_k, self.repetition_penalty, self.min_tokens,
                      self.max_tokens, 0, self.seed, True, True)  # raises for bad sampling values

    def completed(self, length_threshold: int, window_size: int, deterministic: bool) -> ChatTTSParams:
        """SpeechParams's; `deterministic` without a seed samples with seed 0."""
        params = super().completed(length_threshold, window_size, deterministic)
        return dataclasses.replace(params, seed=0) if params.deterministic and params.seed is None else params

    @property
    def speed_tag(self) -> str:
        """ChatTTS's speed control token for `speed` (1.0 -> [speed_5])."""
        return f"[speed_{min(9, max(0, round(5 * self.speed)))}]"


class AsyncChatTTSEngine(AsyncEngine):
    """ChatTTS engine with the reference-004 surface (speak, stream, clone, named speakers)."""

    family = "chattts"
    can_clone = True
    sample_rate = SAMPLE_RATE
    default_voice = "default"
    params_type = ChatTTSParams
    join = JoinRule(0.05, "hanning")
    waits_on_lm = True

    def __init__(self, model_path: str | Path, *, device: str | None = None, dtype: str = "auto",
                 backend: str = "torch", max_batch: int = 8, max_concurrency: int = 8, segments_in_flight: int = 4,
                 spk_stat: str | None = None, residual_scale_base: str = "levels_minus_1", compile: bool = False,
                 backend_options: dict[str, Any] | None = None, **kw: Any) -> None:
        if model_path is None:
            raise ModelLoadError("AsyncChatTTSEngine needs model_path: a folder with the ChatTTS asset/ layout")
        self.lm_ahead = max(0, segments_in_flight - 1)
        super().__init__(max_concurrency=max_concurrency, **kw)
        device = pick_device(device)
        models = load_chattts(model_path, device=device, spk_stat=spk_stat, residual_scale_base=residual_scale_base)
        self.runtime = ChatTTSRuntime(models, backend=backend, dtype=dtype, device=device, max_batch=max_batch,
                                      compile=compile, backend_options=backend_options)
        self.normalizer = Normalizer()
        self._default = Voice("default", ChatTTSVoice(spk_emb=self._seeded_speaker(DEFAULT_VOICE_SEED)))

    # ----- voices ----------------------------------------------------------------------------------------------

    def _seeded_speaker(self, seed: int) -> str | None:
        """`seed`'s speaker string from the checkpoint's speaker statistics; None without them ([empty_spk])."""
        models = self.runtime.models
        return None if models.spk_std is None else seeded_speaker(models.spk_std, models.spk_mean, seed)

    def _builtin_voices(self) -> list[str]:
        return ["default"]

    def _builtin_voice(self, name: str) -> Voice[ChatTTSVoice]:
        if name != "default":
            raise UnknownVoiceError(name, self._builtin_voices())
        return self._default

    def _make_speaker(self, name: str, audio: Any, reference_text: str | None,
                      options: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """A speaker from reference audio (cloned), a speaker string (`spk_emb=`), or a seed (`seed=`)."""
        if unknown := sorted(set(options) - {"spk_emb", "seed"}):
            raise InvalidInputError(f"unknown speaker option {unknown[0]!r}", field=unknown[0])
        meta = dataclasses.asdict(self._clone_voice(audio, reference_text).data) if audio is not None else {}
        if options.get("spk_emb") is not None:
            decode_speaker(options["spk_emb"], self.runtime.hidden_size)  # validates
            meta["spk_emb"] = options["spk_emb"]
        elif options.get("seed") is not None:
            meta["spk_emb"] = self._seeded_speaker(int(options["seed"]))
            if meta["spk_emb"] is None:
                raise InvalidInputError("this checkpoint has no speaker statistics to draw from", field="seed")
        if not any(meta.values()):
            raise InvalidInputError("give reference audio, a speaker string (spk_emb) or a seed", field="audio")
        return {}, {k: v for k, v in meta.items() if v}

    def _speaker_voice(self, name: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Voice[ChatTTSVoice]:
        return Voice(name, ChatTTSVoice(**{k: meta.get(k) or None for k in ("spk_emb", "spk_smp", "txt_smp")}))

    def _clone_voice(self, reference_audio: Any, reference_text: str | None) -> Voice[ChatTTSVoice]:
        wav, _ = read_audio(reference_audio, target_sr=SAMPLE_RATE)
        if wav.size < SAMPLE_RATE // 2:
            raise InvalidInputError("reference audio is shorter than 0.5 s", field="audio")
        if wav.size > 30 * SAMPLE_RATE:
            raise InvalidInputError("reference audio is longer than 30 s; trim it", field="audio")
        txt = self.normalizer(reference_text) if reference_text else None
        return Voice("clone", ChatTTSVoice(spk_smp=self.runtime.audio_prompt(wav), txt_smp=txt))

    # ----- synthesis -------------------------------------------------------------------------------------------

    def _prepare(self, text: str, voice: Voice[Any], params: ChatTTSParams, ctx: RequestContext) -> list[str]:
        """Split first (reference-004 windows), then ChatTTS's normalizer per segment (wetext, homophones), then
        refine the segments' text on the refine backend when asked (all segments together)."""
        from fast_tts.text import split_text

        segments = split_text(text, length_threshold=params.length_threshold, window_size=params.window_size)
        texts = [t for t in (self.normalizer(s, do_text_normalization=params.normalize) for s in segments) if t.strip()]
        if texts and params.refine_text:
            sampling = code_sampling(0.7, 0.7, 20, 1.0, 0, 384, self.runtime.models.tokenizer.eos_id, params.seed,
                                     True, False)
            feeds = [ctx.generate(self.runtime.refine_call(t, sampling)) for t in texts]
            texts = [self.runtime.refined_text(feed) for feed in feeds]
        return texts

    def _lm_call(self, segment: Segment, voice: Voice[ChatTTSVoice], params: ChatTTSParams,
                 ctx: RequestContext) -> LMCall:
        sampling = code_sampling(params.temperature, params.top_p, params.top_k, params.repetition_penalty,
                                 params.min_tokens, params.max_tokens, self.runtime.eos_code, params.seed, True,
                                 params.use_decoder)
        return self.runtime.code_call(CodeRequest(segment.text, sampling, voice.data, params.speed_tag))

    def _synthesize(self, job: SegmentJob) -> Iterator[np.ndarray]:
        assert job.tokens is not None
        yield from self.runtime.stream_audio(job.tokens, bool(job.params.use_decoder))  # type: ignore[attr-defined]

    # ----- public API ------------------------------------------------------------------------------------------

    async def speak_async(self, text: str, name: str | None = None, *, temperature: float = 0.3, top_p: float = 0.7,
                          top_k: int = 20, repetition_penalty: float = 1.05, max_tokens: int = 2048,
                          min_tokens: int = 0, use_decoder: bool = True, refine_text: bool = False, speed: float = 1.0,
                          seed: int | None = None, deterministic: bool | None = None,
                          length_threshold: int | None = None, window_size: int | None = None, normalize: bool = True,
                          progress: ProgressFn | None = None, **unknown: Any) -> np.ndarray:
        """Speak `text` with speaker `name` ("default", or one added with add_speaker); mono int16 at 24 kHz.

        Code sampling: temperature, top_p, top_k, repetition_penalty, max_tokens / min_tokens (frames of 2 x 256
        samples); seed makes it reproducible. use_decoder: decode GPT hiddens with the Decoder (else codes with the
        DVAE). refine_text: rewrite the text with the refine model first (adds [uv_break] etc.). speed: 0.25 to 4,
        as ChatTTS's [speed_N] tag. length_threshold / window_size: text splitting; normalize: spoken numbers,
        dates and money. progress(done, total) is called as segments finish.
        """
        return await self._speak(text, name, given(locals()), progress)

    def speak_stream_async(self, text: str, name: str | None = None, *, temperature: float = 0.3, top_p: float = 0.7,
                           top_k: int = 20, repetition_penalty: float = 1.05, max_tokens: int = 2048,
                           min_tokens: int = 0, use_decoder: bool = True, refine_text: bool = False,
                           speed: float = 1.0, seed: int | None = None, deterministic: bool | None = None,
                           length_threshold: int | None = None, window_size: int | None = None, normalize: bool = True,
                           progress: ProgressFn | None = None, **unknown: Any) -> AsyncIterator[np.ndarray]:
        """speak_async's audio as int16 chunks as they are made (the first after 24 frames); closing cancels."""
        return self._speak_stream(text, name, given(locals()), progress)

    async def clone_voice_async(self, text: str, reference_audio: Any, reference_text: str | None = None, *,
                                temperature: float = 0.3, top_p: float = 0.7, top_k: int = 20,
                                repetition_penalty: float = 1.05, max_tokens: int = 2048, min_tokens: int = 0,
                                use_decoder: bool = True, refine_text: bool = False, speed: float = 1.0,
                                seed: int | None = None, deterministic: bool | None = None,
                                length_threshold: int | None = None, window_size: int | None = None,
                                normalize: bool = True, **unknown: Any) -> np.ndarray:
        """Speak `text` in the voice of `reference_audio` (a 24 kHz-resampled recording of 0.5 to 30 s, path or
        bytes; its DVAE codes prompt the GPT), with `reference_text` its transcript; parameters as speak_async."""
        return await self._clone(text, reference_audio, reference_text, given(locals()))

    def clone_voice_stream_async(self, text: str, reference_audio: Any, reference_text: str | None = None, *,
                                 temperature: float = 0.3, top_p: float = 0.7, top_k: int = 20,
                                 repetition_penalty: float = 1.05, max_tokens: int = 2048, min_tokens: int = 0,
                                 use_decoder: bool = True, refine_text: bool = False, speed: float = 1.0,
                                 seed: int | None = None, deterministic: bool | None = None,
                                 length_threshold: int | None = None, window_size: int | None = None,
                                 normalize: bool = True, **unknown: Any) -> AsyncIterator[np.ndarray]:
        """clone_voice_async's audio as int16 chunks as they are made."""
        return self._clone_stream(text, reference_audio, reference_text, given(locals()))

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "backend": self.runtime.code_gen.stats()}

    async def _close(self) -> None:
        await self.runtime.shutdown()
