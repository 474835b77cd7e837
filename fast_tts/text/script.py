"""Character classes (CJK vs Latin) shared by language detection, normalization and splitting."""

from __future__ import annotations

import re

# Han ideographs (BMP + extension planes), kana, hangul: each character is one spoken unit.
CJK_CHARS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002fa1f"
# CJK punctuation and full-width forms: written only in CJK text, so they side with it.
CJK_PUNCT = "\u3000-\u303f\uff00-\uffef"
CJK_RE = re.compile(f"[{CJK_CHARS}]")
LATIN_WORD_RE = re.compile(r"[A-Za-z\u00c0-\u024f]+(?:['\u2019][A-Za-z\u00c0-\u024f]+)*")
_LETTER = f"(?:(?![{CJK_CHARS}])[^\\W\\d_])"
# One spoken unit: a CJK character, a number such as 12.5 or 10:30, or a word in any other alphabetic script.
UNIT_RE = re.compile(f"[{CJK_CHARS}]|\\d+(?:[.,:/]\\d+)*|{_LETTER}+(?:['\u2019]{_LETTER}+)*")
