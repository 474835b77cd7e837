"""Script runs: cut text into stretches written in one writing system, so each can go to a voice that reads it.

The writing of a letter comes from its Unicode name (CJK ideographs are "han", kana "kana", hangul "hangul", the
rest the name's first word: "latin", "cyrillic", "greek", ...). A sentence with any kana is Japanese, so its
kanji are "kana" too. Digits, punctuation, spaces, symbols and control tags belong to no writing and join a
neighbour: a number joins the first word after it in its sentence (the unit or classifier decides how it is read:
"3个" goes with the Chinese, "3 apples" with the English), or the word before it at a sentence's end; punctuation
and spaces join the run before them.
"""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import dataclass
from itertools import pairwise

from fast_tts.text.split import SENTENCE_END_RE
from fast_tts.text.tags import split_tags

LANGUAGE_SCRIPTS: dict[str, frozenset[str]] = {
    "zh": frozenset({"han"}),
    "ja": frozenset({"kana", "han"}),
    "ko": frozenset({"hangul"}),
    **{lang: frozenset({"cyrillic"}) for lang in ("ru", "uk", "bg", "be", "kk", "mk", "mn")},
    "sr": frozenset({"cyrillic", "latin"}),
    "el": frozenset({"greek"}),
    **{lang: frozenset({"arabic"}) for lang in ("ar", "fa", "ur")},
    "he": frozenset({"hebrew"}),
    **{lang: frozenset({"devanagari"}) for lang in ("hi", "ne", "mr")},
    "ka": frozenset({"georgian"}),
    "th": frozenset({"thai"}),
    "ml": frozenset({"malayalam"}),
    "te": frozenset({"telugu"}),
}
"""The writings a voice of each language reads; a language not listed reads Latin script."""

LANGUAGE_NAMES = {"zh": "Chinese", "en": "English", "ja": "Japanese", "ko": "Korean"}
_SCRIPT_NAMES = {"han": "Chinese", "kana": "Japanese", "hangul": "Korean", "latin": "Latin-script"}


@dataclass(frozen=True)
class ScriptRun:
    """A stretch of text and the writing it is in (None: no letters at all, such as "123" or "!")."""

    script: str | None
    text: str


def scripts_of_language(language: str) -> frozenset[str]:
    """The writings a voice speaking `language` (a code such as "en", "zh", "ru") can read."""
    return LANGUAGE_SCRIPTS.get(language.split("-")[0].split("_")[0].lower(), frozenset({"latin"}))


def script_name(script: str | None) -> str:
    """How messages name a writing: "Chinese", "Japanese", "Korean", "Latin-script", "Cyrillic", ..."""
    if script is None:
        return "letterless"
    return _SCRIPT_NAMES.get(script, script.capitalize())


@functools.lru_cache(maxsize=8192)
def script_of(char: str) -> str | None:
    """The writing of one character, or None for a non-letter (digit, punctuation, space, symbol, mark)."""
    if not char.isalpha():
        return None
    name = unicodedata.name(char, "")
    if name.startswith(("CJK ", "IDEOGRAPHIC")):
        return "han"
    if "HIRAGANA" in name or "KATAKANA" in name:
        return "kana"
    if "HANGUL" in name:
        return "hangul"
    words = name.split(" ")
    first = words[1] if words[0] in ("FULLWIDTH", "HALFWIDTH") and len(words) > 1 else words[0]
    return first.lower() or None


@dataclass
class _Token:
    """Letters of one writing (with their combining marks), a control tag, or a stretch of other characters."""

    script: str | None
    text: str
    digits: bool = False
    tag: bool = False


def _tokens(sentence: str) -> list[_Token]:
    """The sentence as tokens, in order."""
    tokens: list[_Token] = []
    for piece, is_tag in split_tags(sentence):
        if is_tag:
            tokens.append(_Token(None, piece, tag=True))
            continue
        for char in piece:
            script = script_of(char)
            last = tokens[-1] if tokens and not tokens[-1].tag else None
            if script is None and last is not None and last.script and unicodedata.category(char)[0] == "M":
                script = last.script  # a vowel sign or accent stays with its letter
            if last is not None and last.script == script:
                last.text += char
                last.digits = last.digits or char.isdigit()
            else:
                tokens.append(_Token(script, char, script is None and char.isdigit()))
    return tokens


def _lead_length(text: str) -> int:
    """Length of the punctuation and spaces that open a non-letter stretch (they end the run before it)."""
    for i, char in enumerate(text):
        if not (char.isspace() or unicodedata.category(char)[0] in "PZ"):
            return i
    return len(text)


def _sentence_runs(sentence: str) -> list[ScriptRun]:
    """Label one sentence's tokens with the writing that reads them and merge neighbours of one writing."""
    tokens = _tokens(sentence)
    if any(t.script == "kana" for t in tokens):
        for token in tokens:
            if token.script == "han":
                token.script = "kana"
    pieces: list[tuple[str | None, str]] = []
    lettered = [i for i, t in enumerate(tokens) if t.script is not None]
    for i, token in enumerate(tokens):
        script, text = token.script, token.text
        if script is not None:
            pieces.append((script, text))
            continue
        before = next((tokens[j].script for j in reversed(lettered) if j < i), None)
        after = next((tokens[j].script for j in lettered if j > i), None)
        lead = _lead_length(text) if token.digits else len(text)
        if lead:
            pieces.append((before or after, text[:lead]))
        if lead < len(text):
            pieces.append((after or before, text[lead:]))
    return _merge(pieces)


def _merge(pieces: list[tuple[str | None, str]]) -> list[ScriptRun]:
    """Join consecutive pieces of one writing; letterless pieces join the run before them (or after, at the start)."""
    runs: list[list] = []
    for script, text in pieces:
        if runs and (runs[-1][0] == script or script is None):
            runs[-1][1] += text
        elif runs and runs[-1][0] is None:
            runs[-1] = [script, runs[-1][1] + text]
        else:
            runs.append([script, text])
    return [ScriptRun(script, text) for script, text in runs]


def split_scripts(text: str) -> list[ScriptRun]:
    """Cut text into runs of one writing each; joining the runs' text gives back `text` exactly.

    Sentences are labelled on their own (a number looks for its unit only inside its sentence); a sentence without
    letters joins the run before it. Text without any letter is one run with script None; empty text gives [].
    """
    ends = (m.end() for m in SENTENCE_END_RE.finditer(text))
    cuts = [0, *(len(text) - len(text[end:].lstrip()) for end in ends), len(text)]  # spaces end the sentence
    pieces: list[tuple[str | None, str]] = []
    for s, e in pairwise(dict.fromkeys(cuts)):
        pieces.extend((run.script, run.text) for run in _sentence_runs(text[s:e]))
    return _merge(pieces)
