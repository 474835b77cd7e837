"""Text normalization with wetext (WeTextProcessing FSTs): numbers, dates, times, money, units spoken as words."""

from __future__ import annotations

import functools
import logging
import re
import threading
from itertools import pairwise
from typing import Any, Literal

from fast_tts.errors import InvalidInputError, MissingDependencyError
from fast_tts.text.language import detect_language
from fast_tts.text.script import CJK_CHARS, CJK_PUNCT
from fast_tts.text.split import SENTENCE_END_RE
from fast_tts.text.tags import split_tags

log = logging.getLogger(__name__)

_LANGS = ("zh", "en", "mixed")
_RUN_RE = re.compile(
    f"(?P<zh>[{CJK_CHARS}{CJK_PUNCT}]+)|(?P<en>[A-Za-z\u00c0-\u024f]+)|(?P<n>[^{CJK_CHARS}{CJK_PUNCT}A-Za-z\u00c0-\u024f]+)"
)
_SPACES_RE = re.compile(r"\s+")
_ESCAPED_RE = re.compile(r'\\(["\\])')
# Thousands separators: the Chinese FST sometimes reads "1,000" digit by digit, so they are dropped before it.
_GROUPED_RE = re.compile(r"\b\d{1,3}(?:,\d{3})+\b")
# Amounts with cents: the English FST says "$5.50" as "five point five dollars"; we spell major and minor units.
_CENTS_RE = re.compile(r"([$£€])(\d{1,3}(?:,\d{3})+|\d+)\.(\d\d)\b(?!\s*(?:[kKmMbB]\b|thousand|million|billion))")
_CURRENCY_UNITS = {"$": ("dollar", "dollars", "cent", "cents"), "€": ("euro", "euros", "cent", "cents")}
_CURRENCY_UNITS["£"] = ("pound", "pounds", "penny", "pence")
# The English FST drops the "one" of 1,000 to 1,999 ("thousand five hundred"); we write "1 thousand 500" for it.
_ONE_THOUSAND_RE = re.compile(r"(?<![\d,.])([$£€]?)1,(\d{3})(?![\d,]|\.\d)")
_NUMBER_RE = re.compile(r"\d+(?:[.,:/]\d+)*")
# Full-width digits, letters and percent sign read like their ASCII forms; CJK punctuation is left as written.
_FULL_WIDTH = {
    c: c - 0xFEE0 for r in ((0xFF10, 0xFF19), (0xFF21, 0xFF3A), (0xFF41, 0xFF5A)) for c in range(r[0], r[1] + 1)
}
_FULL_WIDTH[0xFF05] = ord("%")


class _CachedNormalizer:
    """One wetext TN normalizer per language, loaded once and used under a lock (wetext shares FST objects)."""

    def __init__(self, lang: Literal["zh", "en"]) -> None:
        try:
            from wetext import Normalizer
        except ImportError as exc:  # pragma: no cover - wetext is a hard dependency
            raise MissingDependencyError("text normalization needs the 'wetext' package: pip install wetext") from exc
        self.lang = lang
        self._normalizer: Any = Normalizer(lang=lang, operator="tn")
        self._lock = threading.Lock()
        # Repeated sentences (the same prompt sent again, refrains) skip the FST; lru_cache is thread-safe.
        self._memo = functools.lru_cache(maxsize=4096)(self._normalize)

    def __call__(self, text: str) -> str:
        """Normalize one run, from the memo when the same run was seen before."""
        return self._memo(text)

    def _normalize(self, text: str) -> str:
        """Normalize one run; if the FST rejects it, retry word by word, then read only the numbers of a bad word."""
        try:
            with self._lock:
                spoken = self._normalizer.normalize(text)
            return _ESCAPED_RE.sub(r"\1", spoken)  # wetext backslash-escapes quotes and backslashes
        except Exception:  # wetext raises bare AssertionError/RuntimeError on input its FST cannot read
            pass
        words = text.split(" ")
        if len(words) > 1:
            return " ".join(self(w) if w else w for w in words)
        if _NUMBER_RE.fullmatch(text) or not _NUMBER_RE.search(text):
            log.warning("wetext (%s) could not normalize %r; kept as written", self.lang, text)
            return text
        return _SPACES_RE.sub(" ", _NUMBER_RE.sub(lambda m: f" {self(m.group())} ", text)).strip()


_cache: dict[str, _CachedNormalizer] = {}
_cache_lock = threading.Lock()


def get_normalizer(lang: Literal["zh", "en"]) -> _CachedNormalizer:
    """The process-wide cached normalizer for zh or en (the first call loads the FSTs, later calls are free)."""
    normalizer = _cache.get(lang)
    if normalizer is None:
        with _cache_lock:
            normalizer = _cache.get(lang)
            if normalizer is None:
                normalizer = _cache[lang] = _CachedNormalizer(lang)
    return normalizer


def normalize(text: str, lang: str | None = None) -> str:
    """Spell out numbers, dates, times, money, units and percentages as words; control tags pass untouched.

    lang=None detects the language of the whole text. "zh": everything goes through the Chinese FST (Latin words
    pass through, numbers are read in Chinese). "en": Latin text and numbers go through the English FST, CJK runs
    through the Chinese one. "mixed": the text is cut into CJK and Latin runs, and a stretch of digits/symbols joins
    the run of the next word (the unit or classifier after a number decides how it is read: "3个" -> 三个,
    "3 apples" -> three apples), or of the previous word at the end of a sentence.
    """
    if lang is not None and lang not in _LANGS:
        raise InvalidInputError(f"lang must be one of {', '.join(_LANGS)} or None, got {lang!r}", field="lang")
    text = text.translate(_FULL_WIDTH)
    mode = lang or detect_language(text)
    out: list[str] = []
    for piece, is_tag in split_tags(text):
        if is_tag:
            out.append(piece)
            continue
        # Sentence by sentence: FST time grows faster than linearly with input length; line breaks end sentences.
        cuts = [0, *(m.end() for m in SENTENCE_END_RE.finditer(piece)), len(piece)]
        for s, e in pairwise(cuts):
            out.extend(_apply(label, run) for label, run in _label_runs(piece[s:e], mode))
    return "".join(out)


def _label_runs(sentence: str, mode: str) -> list[tuple[str, str]]:
    """Cut a sentence into maximal runs that go to the same normalizer ("zh" or "en")."""
    tokens = [(m.lastgroup or "n", m.group()) for m in _RUN_RE.finditer(sentence)]
    labels: list[str] = []
    for i, (kind, _) in enumerate(tokens):
        if mode == "zh":
            labels.append("zh")
        elif kind != "n":
            labels.append(kind)
        elif mode == "en":
            labels.append("en")
        else:
            after = next((k for k, _ in tokens[i + 1 :] if k != "n"), None)
            before = next((k for k, _ in reversed(tokens[:i]) if k != "n"), None)
            labels.append(after or before or "en")
    runs: list[tuple[str, str]] = []
    for label, (_, chunk) in zip(labels, tokens, strict=True):
        if runs and runs[-1][0] == label:
            runs[-1] = (label, runs[-1][1] + chunk)
        else:
            runs.append((label, chunk))
    return runs


def _apply(label: str, run: str) -> str:
    """Run one normalizer on a run, keeping the run's outer whitespace (wetext strips it)."""
    core = run.strip()
    if not core:
        return run
    if label == "zh":
        if not any(c.isdigit() for c in core):
            return run  # the Chinese FST only rewrites text with digits
        core = _GROUPED_RE.sub(lambda m: m.group().replace(",", ""), core)
    else:
        core = _CENTS_RE.sub(_say_cents, _SPACES_RE.sub(" ", core))  # the English FST rejects runs of spaces
        core = _ONE_THOUSAND_RE.sub(_say_one_thousand, core)
    lead = run[: len(run) - len(run.lstrip())]
    trail = run[len(run.rstrip()) :]
    return lead + get_normalizer(label)(core) + trail  # type: ignore[arg-type]


def _say_cents(match: re.Match[str]) -> str:
    """ "$5.50" -> "5 dollars and 50 cents", left for the English FST to read the two numbers."""
    one, many, minor_one, minor_many = _CURRENCY_UNITS[match.group(1)]
    whole, cents = match.group(2), int(match.group(3))
    major = f"{whole} {one if whole == '1' else many}"
    minor = f"{cents} {minor_one if cents == 1 else minor_many}"
    if cents == 0:
        return major
    return minor if whole == "0" else f"{major} and {minor}"


def _say_one_thousand(match: re.Match[str]) -> str:
    """ "1,500" -> "1 thousand 500" and "$1,000" -> "1 thousand dollars", which the English FST reads in full."""
    rest = int(match.group(2))
    words = "1 thousand" + (f" {rest}" if rest else "")
    return f"{words} {_CURRENCY_UNITS[match.group(1)][1]}" if match.group(1) else words
