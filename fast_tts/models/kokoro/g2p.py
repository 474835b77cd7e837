"""Mandarin text to Kokoro phonemes: jieba words, pypinyin readings (with 一/不 tone changes), IPA with tone arrows.

This is the G2P Kokoro v1.0 was trained with for Chinese (misaki's `zh` legacy path); we drive misaki's word-level
functions ourselves so that a character pypinyin cannot read is skipped with a warning instead of failing the
whole clause. Input is expected to be normalised already (numbers spelled out by fast_tts.text.normalize).
"""

from __future__ import annotations

import logging
import re

from fast_tts.errors import MissingDependencyError
from fast_tts.models.kokoro.files import ZH_EXTRA

log = logging.getLogger(__name__)

_HAN_RUN = re.compile("([\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]+)")
_KEEP_OUTSIDE_HAN = re.compile(r"[^,.!?;:\"()“” ]+")  # what Kokoro cannot say outside Chinese words: dropped
_NON_SYLLABIC = "\u032f"  # pinyin_to_ipa marks diphthong glides; Kokoro's vocabulary has no such symbol


class ChineseG2P:
    """Callable: Chinese text -> a Kokoro phoneme string. Thread-safe after construction (it loads jieba)."""

    def __init__(self) -> None:
        try:
            import jieba
            from misaki.zh import ZHG2P
        except ImportError as exc:
            raise MissingDependencyError(f"the Mandarin voice needs misaki[zh] and jieba: {ZH_EXTRA}") from exc
        jieba.setLogLevel(logging.WARNING)  # it logs its dictionary load to stderr otherwise
        jieba.initialize()
        self._cut = jieba.lcut
        self._word = ZHG2P.word2ipa
        self._punctuation = ZHG2P.map_punctuation

    def __call__(self, text: str) -> str:
        """Phonemes for `text`: one space-separated group per word, punctuation mapped to , . ! ? ; : as Kokoro's."""
        out = []
        for i, piece in enumerate(_HAN_RUN.split(self._punctuation(text))):
            if i % 2:
                out.append(" ".join(filter(None, (self._read(word) for word in self._cut(piece)))))
            else:
                out.append(_KEEP_OUTSIDE_HAN.sub("", piece))
        return re.sub(r" {2,}", " ", "".join(out)).strip().replace(_NON_SYLLABIC, "")

    def _read(self, word: str) -> str:
        """IPA of one word; character by character when pypinyin has no reading for the word as a whole."""
        try:
            return self._word(word)
        except ValueError:
            if len(word) == 1:
                log.warning("no Mandarin reading for %r; skipped", word)
                return ""
            return "".join(self._read(char) for char in word)
