"""ChatTTS text normalizer: the reference 0.2.5 pipeline, with our wetext normalizers as zh/en defaults.

Order of the steps, each as in the reference: language fn per text segment between [tags] -> zh half-width to
full-width punctuation -> invalid-character check -> punctuation simplifier -> homophone map (per UTF-16 unit) ->
deletion of what is still invalid. Deliberate differences: an unbalanced "[" or "]" is plain text (the reference
drops or reorders text around it), and empty text gives "" (the reference raises with a language fn registered).
"""

from __future__ import annotations

import logging
import os
import re
import string
from collections.abc import Callable

from fast_tts.errors import InvalidInputError
from fast_tts.models.chattts.homophones import HomophoneMap

logger = logging.getLogger(__name__)

_CJK = re.compile(r"[\u4e00-\u9fff]")
_ENGLISH_WORD = re.compile(r"\b[A-Za-z]+\b")
# What ChatTTS can read: CJK ideographs, Latin letters, four punctuation marks and the space.
_INVALID = re.compile(r"[^\u4e00-\u9fffA-Za-z，。、,\. ]")
# Tags that do not count as invalid characters.
_WORD_TAG = re.compile(r"\[[\w_]+\]")
# Spans kept intact by the language fns and by the final deletion: "[" up to the next "]" with no "[" inside.
_BRACKET_TAG = re.compile(r"(\[[^\[\]]*\])")

# Half-width ASCII punctuation -> its full-width form (U+FF01..U+FF5E), except brackets and underscore (tags), and
# with the Chinese full stop and curly quotes where Chinese text uses them.
_HALF_TO_FULL = str.maketrans(
    {c: chr(ord(c) + 0xFEE0) for c in string.punctuation if c not in "[]_"} | {".": "。", '"': "“", "'": "‘"}
)
# Punctuation ChatTTS cannot read -> a pause it can: a comma, or a full stop for exclamation marks.
_SIMPLIFY = str.maketrans(
    {c: "，" for c in "：；（）【】『』「」《》－"} | {"！": "。"} | {c: "," for c in ":;()<>-"} | {"!": "."}
)

_PROBE = "test string 测试字符串"


def detect_language(text: str) -> str:
    """"zh" when CJK characters outnumber English words, else "en" (the reference rule)."""
    return "zh" if len(_CJK.findall(text)) > len(_ENGLISH_WORD.findall(text)) else "en"


def _map_outside_tags(text: str, fn: Callable[[str], str]) -> str:
    """Apply `fn` to the text before each bracket tag (even when empty, as the reference does) and to a non-empty
    tail; tags and their order stay as they are."""
    pieces = _BRACKET_TAG.split(text)
    last = len(pieces) - 1
    return "".join(p if i % 2 or (i == last and not p) else fn(p) for i, p in enumerate(pieces))


def _wetext_normalizer(lang: str) -> Callable[[str], str]:
    """Our wetext frontend for one language, imported on first use."""

    def normalize(text: str) -> str:
        from fast_tts.text import normalize as wetext_normalize

        return wetext_normalize(text, lang)

    normalize.__qualname__ = f"wetext_normalizer_{lang}"
    return normalize


class Normalizer:
    """Text cleanup before ChatTTS tokenization: `normalizer(text, do_text_normalization, ..., lang)` -> str.

    `map_file_path` is any JSON {char: char} map (None: the map fast_tts ships, built by tools/build_homophones.py).
    With `use_default_normalizers` (the default) zh and en use our wetext frontend so that digits, dates and units
    are spoken; `register` replaces a default. With it False no language normalizer is registered, which is the
    reference's behaviour (digits are then dropped as invalid characters).
    """

    def __init__(
        self,
        map_file_path: str | os.PathLike[str] | None = None,
        use_default_normalizers: bool = True,
        logger: logging.Logger = logger,
    ) -> None:
        self.logger = logger
        self.homophones_map = HomophoneMap.load(map_file_path)
        self.normalizers: dict[str, Callable[[str], str]] = {}
        self._defaults: set[str] = set()
        if use_default_normalizers:
            for lang in ("zh", "en"):
                self.normalizers[lang] = _wetext_normalizer(lang)
                self._defaults.add(lang)

    def __call__(
        self,
        text: str,
        do_text_normalization: bool = True,
        do_homophone_replacement: bool = True,
        lang: str | None = None,
    ) -> str:
        """Normalize one text; tags such as [uv_break] pass through every step unchanged."""
        if not isinstance(text, str):
            raise InvalidInputError(f"text must be a str, got {type(text).__name__}", field="text")
        if do_text_normalization:
            lang = detect_language(text) if lang is None else lang
            fn = self.normalizers.get(lang)
            if fn is not None:
                text = _map_outside_tags(text, fn)
            if lang == "zh":
                text = text.translate(_HALF_TO_FULL)
        invalid = set(_INVALID.findall(_WORD_TAG.sub("", text)))
        if invalid:
            self.logger.debug("invalid characters: %s", sorted(invalid))
            text = text.translate(_SIMPLIFY)
        if do_homophone_replacement:
            if self.logger.isEnabledFor(logging.DEBUG):
                self.logger.debug("homophones: %s", self.homophones_map.replacements(text))
            text = self.homophones_map(text)
        if invalid:
            text = _map_outside_tags(text, lambda piece: _INVALID.sub("", piece))
        return text

    @property
    def defaults(self) -> tuple[str, ...]:
        """Languages still served by our default normalizers (`register` replaces one, `unregister` removes one)."""
        return tuple(sorted(self._defaults))

    def register(self, name: str, normalizer: Callable[[str], str]) -> bool:
        """Add a language fn (str -> str) under `name`; False if a user fn holds the name or the fn fails a probe."""
        if name in self.normalizers and name not in self._defaults:
            self.logger.warning("normalizer %r is already registered", name)
            return False
        try:
            probe = normalizer(_PROBE)
        except Exception as e:  # a user fn may raise anything: report it and refuse, as the reference does
            self.logger.warning("normalizer %r failed on a probe string: %r", name, e)
            return False
        if not isinstance(probe, str):
            self.logger.warning("normalizer %r must map str to str, got %s", name, type(probe).__name__)
            return False
        self.normalizers[name] = normalizer
        self._defaults.discard(name)
        return True

    def unregister(self, name: str) -> None:
        """Remove the fn under `name` (a default one included); unknown names are ignored."""
        self.normalizers.pop(name, None)
        self._defaults.discard(name)
