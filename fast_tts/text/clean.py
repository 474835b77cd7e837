"""Replace what TTS models cannot voice (book-title and corner brackets, line breaks) with plain punctuation."""

from __future__ import annotations

import re

from fast_tts.text.script import CJK_CHARS
from fast_tts.text.tags import split_tags

# Brackets and typographic quotes only mark titles or quotations: they carry no sound, so they go.
_SILENT_MARKS = re.compile("[《》〈〉「」『』【】〔〕“”]")
_DASHES = re.compile("(?:—|--)+")  # em dashes; the en dash of ranges (10–20) stays
_ELLIPSIS = re.compile("(?:……|…|\\.{3,})+")
_LINE_BREAK = re.compile(r"[ \t]*[\r\n]+[\s]*")
_SPACES = re.compile(r"[ \t\u3000]+")
_PUNCT_END = tuple("。！？；，、：.!?;,:")
_REPEATS = re.compile("([，。！？；,])\\1+")
_CJK = re.compile(f"[{CJK_CHARS}]")


def _pause(before: str) -> str:
    """The comma that fits the script of the text before a removed line break or dash."""
    return "，" if before and _CJK.match(before[-1]) else ", "


def _clean_piece(piece: str) -> str:
    """Clean one stretch of text that holds no control tag."""
    piece = _SILENT_MARKS.sub("", piece)
    piece = _ELLIPSIS.sub(lambda m: "。" if m.start() and _CJK.match(piece[m.start() - 1]) else "...", piece)
    out: list[str] = []
    pos = 0
    for m in re.finditer(f"{_LINE_BREAK.pattern}|{_DASHES.pattern}", piece):
        out.append(piece[pos : m.start()])
        before = "".join(out).rstrip()
        if not before or before.endswith(_PUNCT_END):
            out.append(" " if before and before[-1].isascii() else "")
        else:
            out.append(_pause(before))
        pos = m.end()
    out.append(piece[pos:])
    return _REPEATS.sub(r"\1", _SPACES.sub(" ", "".join(out)))


def clean_for_tts(text: str) -> str:
    """Make a segment sayable: drop 《》「」“” and similar marks, turn line breaks and dashes into pauses.

    A line break or dash becomes a comma (，after CJK, ", " after Latin) unless punctuation already ends the text
    before it; 《》「」『』【】〈〉“” are removed; …… becomes 。 after CJK; control tags are left as they are.
    """
    cleaned = "".join(piece if is_tag else _clean_piece(piece) for piece, is_tag in split_tags(text))
    return cleaned.strip()
