"""Language detection: "zh", "en" or "mixed", from the share of CJK characters and Latin words."""

from __future__ import annotations

from typing import Literal

from fast_tts.text.script import CJK_RE, LATIN_WORD_RE
from fast_tts.text.tags import strip_tags

Language = Literal["zh", "en", "mixed"]

MIXED_MIN_SHARE = 0.2
"""The minority script must hold at least this share of the units for a text to count as "mixed"."""


def detect_language(text: str) -> Language:
    """Classify text as zh, en or mixed; control tags are ignored.

    Units: one per CJK character (kana and hangul included), one per Latin word. The text is "mixed" when both
    scripts occur and the minority holds at least 20% of the units (so one loan word such as "iPhone" in a Chinese
    sentence stays "zh"); otherwise the majority wins. Text with neither (digits, punctuation, empty) is "en".
    """
    spoken = strip_tags(text)
    cjk = len(CJK_RE.findall(spoken))
    latin = len(LATIN_WORD_RE.findall(spoken))
    total = cjk + latin
    if total == 0:
        return "en"
    if min(cjk, latin) / total >= MIXED_MIN_SHARE:
        return "mixed"
    return "zh" if cjk > latin else "en"
