"""AsyncPiperEngine: Piper VITS voices (the bundled `en_US-joe-medium` by default) behind the AsyncEngine surface.

Voice names: every voice file answers to its file stem (`en_US-joe-medium`) and to a short alias, the config's
`dataset` name (`joe`) when no other voice claims it. Multi-speaker models add `<stem>:<speaker>` for each speaker in
their `speaker_id_map` and the bare speaker name when unique. A custom speaker is a named preset (a base voice plus
parameters such as speed), since Piper cannot clone from audio.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fast_tts.audio import resample
from fast_tts.engine.base import PresetSpeakerEngine, ProgressFn, SegmentJob, Voice
from fast_tts.engine.lm import RequestContext
from fast_tts.engine.params import SpeechParams, given
from fast_tts.engine.routed import check_readable
from fast_tts.errors import UnknownVoiceError
from fast_tts.models.piper import PiperRunner, VoiceFile, voice_files


@dataclass(frozen=True)
class PiperVoice:
    """Which voice file a voice speaks with, and which of its speakers (None: a single-speaker model)."""

    key: str
    speaker_id: int | None


class AsyncPiperEngine(PresetSpeakerEngine):
    """Piper voices with sentence-level streaming, `speed` (length scale 1/speed) and `deterministic` output."""

    family = "piper"
    can_clone = False

    def __init__(self, model_path: str | Path | None = None, *, threads_per_request: int = 1, **kw: Any) -> None:
        files = voice_files(model_path)
        self._files = {f.key: f for f in files}
        self._names: dict[str, PiperVoice] = {}
        for f in files:
            self._names[f.key] = PiperVoice(f.key, None)
            for speaker, sid in f.speakers.items():
                self._names[f"{f.key}:{speaker}"] = PiperVoice(f.key, sid)
        for f in files:  # short names only where unambiguous
            shorts = ([f.alias] if f.alias else []) + list(f.speakers)
            for short in shorts:
                taken = sum(short == g.alias or short in g.speakers for g in files) > 1
                if not taken and short not in self._names:
                    self._names[short] = PiperVoice(f.key, f.speakers.get(short))
        first = files[0]
        self.sample_rate = first.sample_rate
        self.default_voice = first.alias if first.alias in self._names else first.key
        self._threads = threads_per_request
        self._runners: dict[str, PiperRunner] = {}
        self._load_lock = threading.Lock()
        super().__init__(**kw)
        self._warm_up(first)

    def _warm_up(self, first: VoiceFile) -> None:
        """Load the default voice now (errors surface at construction) and run it once, with the normalizer, so
        the first request does not pay for FST loading and onnxruntime's first-run allocations."""
        runner = self._runner(first.key)
        if first.language in ("en", "zh"):
            from fast_tts.text.normalize import get_normalizer

            get_normalizer(first.language)
        for phonemes in runner.sentences("Hi.")[:1]:
            runner.synthesize(phonemes, length_scale=1.0, noise_scale=0.0, noise_w=0.0)

    def _runner(self, key: str) -> PiperRunner:
        """The loaded runner for voice file `key` (loaded on first use)."""
        with self._load_lock:
            runner = self._runners.get(key)
            if runner is None:
                f = self._files[key]
                runner = self._runners[key] = PiperRunner(f.model, f.config, threads=self._threads)
            return runner

    def _builtin_voices(self) -> list[str]:
        return list(self._names)

    def _builtin_voice(self, name: str) -> Voice[PiperVoice]:
        if name not in self._names:
            raise UnknownVoiceError(name, self.list_speakers())
        return Voice(name, self._names[name])

    def voice_languages(self, name: str) -> tuple[str, ...]:
        """The language of built-in voice `name`, from its config (empty when the config names none)."""
        language = self._files[self._builtin_voice(name).data.key].language
        return (language,) if language else ()

    def _prepare(self, text: str, voice: Voice[PiperVoice], params: SpeechParams, ctx: RequestContext) -> list[str]:
        """Refuse text in a writing the voice cannot read; normalize with wetext only for languages it knows (en,
        zh); other voices read raw text via espeak."""
        language = self._files[voice.data.key].language
        if language:
            check_readable(text, voice.name, (language,))
        if language not in ("en", "zh"):
            params = dataclasses.replace(params, normalize=False)
        return super()._prepare(text, voice, params, ctx)

    def _synthesize(self, job: SegmentJob) -> Iterator[np.ndarray]:
        """One chunk per sentence of the segment."""
        runner = self._runner(job.voice.data.key)
        noise = 0.0 if job.params.deterministic else None
        for phonemes in runner.sentences(job.segment.text):
            audio = runner.synthesize(phonemes, job.voice.data.speaker_id, length_scale=1.0 / job.params.speed,
                                      noise_scale=noise, noise_w=noise)
            if runner.sample_rate != self.sample_rate:
                audio = resample(audio, runner.sample_rate, self.sample_rate)
            yield audio

    # ----- public API -----------------------------------------------------------------------------------------

    async def speak_async(self, text: str, name: str | None = None, *, speed: float | None = None,
                          seed: int | None = None, deterministic: bool | None = None,
                          length_threshold: int | None = None, window_size: int | None = None,
                          normalize: bool | None = None, progress: ProgressFn | None = None,
                          **unknown: Any) -> np.ndarray:
        """Speak `text` with voice `name` (the default voice when None); mono int16 at `sample_rate`.

        speed: 0.25 to 4 (length scale 1/speed; default 1.0 or the speaker's preset). seed / deterministic:
        noise-free, bit-identical output (Piper's noise cannot be seeded). length_threshold / window_size: text
        splitting (default 50 / 50). normalize: speak numbers, dates and money (default True). progress(done, total)
        is called as segments finish.
        """
        return await self._speak(text, name, given(locals()), progress)

    def speak_stream_async(self, text: str, name: str | None = None, *, speed: float | None = None,
                           seed: int | None = None, deterministic: bool | None = None,
                           length_threshold: int | None = None, window_size: int | None = None,
                           normalize: bool | None = None, progress: ProgressFn | None = None,
                           **unknown: Any) -> AsyncIterator[np.ndarray]:
        """speak_async's audio as int16 chunks, one per sentence as it is made; closing the iterator cancels."""
        return self._speak_stream(text, name, given(locals()), progress)

    async def _close(self) -> None:
        self._runners.clear()
