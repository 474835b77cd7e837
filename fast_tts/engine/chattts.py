"""AsyncChatTTSEngine: ChatTTS behind the AsyncEngine surface, on the continuous-batching torch backend.

A request's segments all go to the code backend at once (a few in flight per request), so long texts run
concurrently with each other and with other requests; each segment streams through the windowed decoder, and
segments are joined with a short crossfade. Voices: "default" (a fixed speaker drawn from the model's speaker
statistics), and custom speakers made from a speaker string, a seed, or reference audio (cloning through the DVAE
encoder), persisted in the speaker store. The GPT runs in bf16 where the CPU or GPU supports it (`dtype="auto"`);
pass dtype="float32" for output identical to the reference.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fast_tts.audio import read_audio, to_int16
from fast_tts.engine.base import AsyncEngine, Voice
from fast_tts.engine.chattts_runtime import SAMPLE_RATE, ChatTTSRuntime, CodeRequest, code_sampling
from fast_tts.models.chattts.loader import load_chattts
from fast_tts.engine.streaming import SegmentJoiner
from fast_tts.errors import InvalidInputError, ModelLoadError, UnknownVoiceError
from fast_tts.models.chattts.normalizer import Normalizer
from fast_tts.models.chattts.speaker import decode_speaker, sample_random_speaker

DEFAULT_VOICE_SEED = 2


class AsyncChatTTSEngine(AsyncEngine):
    """ChatTTS engine with the reference-004 surface (speak, stream, clone, named speakers)."""

    family = "chattts"
    can_clone = True
    sample_rate = SAMPLE_RATE
    default_voice = "default"
    crossfade_s = 0.05
    family_params = {
        "temperature": 0.3,
        "top_p": 0.7,
        "top_k": 20,
        "repetition_penalty": 1.05,
        "max_tokens": 2048,
        "min_tokens": 0,
        "use_decoder": True,
        "refine_text": False,
    }

    def __init__(
        self,
        model_path: str | Path,
        *,
        device: str | None = None,
        dtype: str = "auto",
        backend: str = "torch",
        max_batch: int = 8,
        max_concurrency: int = 8,
        segments_in_flight: int = 4,
        spk_stat: str | None = None,
        residual_scale_base: str = "levels_minus_1",
        compile: bool = False,
        backend_options: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(max_concurrency=max_concurrency, **kw)
        if model_path is None:
            raise ModelLoadError("AsyncChatTTSEngine needs model_path: a folder with the ChatTTS asset/ layout")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        models = load_chattts(model_path, device=device, spk_stat=spk_stat, residual_scale_base=residual_scale_base)
        self.runtime = ChatTTSRuntime(models, backend=backend, dtype=dtype, device=device, max_batch=max_batch,
                                      compile=compile, backend_options=backend_options)
        self.normalizer = Normalizer()
        self.segments_in_flight = segments_in_flight
        self._default = self._default_speaker()

    # ----- voices ----------------------------------------------------------------------------------------------

    def _default_speaker(self) -> dict[str, Any]:
        models = self.runtime.models
        if models.spk_std is None:  # no statistics: the model picks a voice per utterance ([empty_spk])
            return {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(DEFAULT_VOICE_SEED)
            return {"spk_emb": sample_random_speaker(models.spk_std, models.spk_mean)}

    def _builtin_voices(self) -> list[str]:
        return ["default"]

    def _builtin_voice(self, name: str) -> Voice:
        if name != "default":
            raise UnknownVoiceError(name, self._builtin_voices())
        return Voice("default", dict(self._default))

    def _make_speaker(
        self, name: str, audio: Any, reference_text: str | None, options: dict[str, Any]
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """A speaker from reference audio (cloned), a speaker string (`spk_emb=`), or a seed (`seed=`)."""
        unknown = set(options) - {"spk_emb", "seed"}
        if unknown:
            raise InvalidInputError(f"unknown speaker option {sorted(unknown)[0]!r}", field=sorted(unknown)[0])
        meta: dict[str, Any] = {}
        if audio is not None:
            meta.update(self._clone_data(audio, reference_text))
        if options.get("spk_emb") is not None:
            decode_speaker(options["spk_emb"], self.runtime.hidden_size)  # validates
            meta["spk_emb"] = options["spk_emb"]
        elif options.get("seed") is not None:
            models = self.runtime.models
            if models.spk_std is None:
                raise InvalidInputError("this checkpoint has no speaker statistics to draw from", field="seed")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(options["seed"]))
                meta["spk_emb"] = sample_random_speaker(models.spk_std, models.spk_mean)
        if not meta:
            raise InvalidInputError("give reference audio, a speaker string (spk_emb) or a seed", field="audio")
        return {}, meta

    def _speaker_voice(self, name: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Voice:
        return Voice(name, {k: meta[k] for k in ("spk_emb", "spk_smp", "txt_smp") if meta.get(k)})

    def _clone_data(self, audio: Any, reference_text: str | None) -> dict[str, Any]:
        wav, _ = read_audio(audio, target_sr=SAMPLE_RATE)
        if wav.size < SAMPLE_RATE // 2:
            raise InvalidInputError("reference audio is shorter than 0.5 s", field="audio")
        if wav.size > 30 * SAMPLE_RATE:
            raise InvalidInputError("reference audio is longer than 30 s; trim it", field="audio")
        data = {"spk_smp": self.runtime.audio_prompt(wav)}
        if reference_text:
            data["txt_smp"] = self.normalizer(reference_text)
        return data

    def _clone_voice(self, reference_audio: Any, reference_text: str | None) -> Voice:
        return Voice("clone", self._clone_data(reference_audio, reference_text))

    # ----- synthesis -------------------------------------------------------------------------------------------

    def _check_params(self, params: dict[str, Any]) -> None:
        if not isinstance(params["max_tokens"], int) or not 1 <= params["max_tokens"] <= 4096:
            raise InvalidInputError("max_tokens must be an integer from 1 to 4096", field="max_tokens")
        params["speed_tag"] = f"[speed_{min(9, max(0, round(5 * params['speed'])))}]"
        if params["deterministic"] and params["seed"] is None:
            params["seed"] = 0
        self._sampling(params, {})  # validates the sampling fields

    def _sampling(self, params: dict[str, Any], voice: dict[str, Any]) -> Any:
        return code_sampling(
            params["temperature"], params["top_p"], params["top_k"], params["repetition_penalty"],
            params["min_tokens"], params["max_tokens"], self.runtime.eos_code, params["seed"], True,
            bool(params["use_decoder"]),
        )

    def _prepare(self, text: str, voice: Voice, params: dict[str, Any]) -> list[str]:
        """Split first (reference-004 windows), then ChatTTS's normalizer per segment (wetext, homophones)."""
        from fast_tts.text import split_text

        segments = split_text(text, length_threshold=params["length_threshold"], window_size=params["window_size"])
        cleaned = [self.normalizer(s, do_text_normalization=bool(params["normalize"])) for s in segments]
        return [s for s in cleaned if s.strip()]

    async def _produce(
        self, text: str, voice: Voice, params: dict[str, Any]
    ) -> AsyncIterator[tuple[np.ndarray, int, int]]:
        segments = await self._run(self._prepare, text, voice, params)
        if not segments:
            raise InvalidInputError("input text has nothing that can be spoken", field="input")
        if params["refine_text"]:
            refine = code_sampling(0.7, 0.7, 20, 1.0, 0, 384, self.runtime.models.tokenizer.eos_id, params["seed"],
                                   True, False)
            ids = await self.runtime.refine(segments, refine)
            segments = [self.runtime.models.tokenizer.decode(i) for i in ids]
        sampling = self._sampling(params, voice.data)
        data = voice.data
        requests = [
            CodeRequest(s, sampling, data.get("spk_emb"), data.get("spk_smp"), data.get("txt_smp"), params["speed_tag"])
            for s in segments
        ]
        use_decoder = bool(params["use_decoder"])
        gate = asyncio.Semaphore(self.segments_in_flight)
        queues: list[asyncio.Queue] = [asyncio.Queue() for _ in requests]

        async def pump(index: int) -> None:
            async with gate:
                try:
                    async for chunk in self.runtime.stream(requests[index], use_decoder):
                        queues[index].put_nowait(chunk)
                except Exception as exc:  # delivered in order to the consumer
                    queues[index].put_nowait(exc)
                finally:
                    queues[index].put_nowait(None)

        tasks = [asyncio.ensure_future(pump(i)) for i in range(len(requests))]
        joiner = SegmentJoiner(int(self.crossfade_s * self.sample_rate))
        total = len(requests)
        try:
            for index, q in enumerate(queues):
                while (chunk := await q.get()) is not None:
                    if isinstance(chunk, Exception):
                        raise chunk
                    out = joiner.push(chunk)
                    if out.size:
                        yield to_int16(out), index, total
                joiner.end_segment()
                yield np.zeros(0, dtype=np.int16), index + 1, total
            tail = joiner.flush()
            if tail.size:
                yield to_int16(tail), total, total
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "backend": self.runtime.code_gen.stats()}

    async def shutdown(self) -> None:
        if not self._closed:
            await super().shutdown()
            await self.runtime.shutdown()
