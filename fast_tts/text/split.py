"""Long-text splitting: sentence ends first, clause punctuation next, word boundaries last; tags never cut."""

from __future__ import annotations

import re
from collections.abc import Callable
from itertools import pairwise

from fast_tts.errors import InvalidInputError
from fast_tts.text.script import CJK_CHARS, UNIT_RE
from fast_tts.text.tags import TAG_RE, strip_tags

_CLOSERS = "\"'”’）)》」』】"
# A period after these titles and abbreviations does not end the sentence ("Dr. Smith", "e.g. this").
_ABBREVIATIONS = ("Mr", "Mrs", "Ms", "Dr", "Prof", "St", "Jr", "Sr", "vs", "e.g", "i.e")
_NOT_ABBREVIATION = "".join(f"(?<!\\b{re.escape(a)})" for a in _ABBREVIATIONS)
# ASCII . ! ? ; end a sentence only before a space, the end, CJK or a tag (so 3.14 and U.S.A stay whole).
SENTENCE_END_RE = re.compile(
    f"[。！？；…]+[{_CLOSERS}]*|{_NOT_ABBREVIATION}[.!?;]+[{_CLOSERS}]*(?=\\s|$|[{CJK_CHARS}]|\\[)|\\n+"
)
# ASCII , and : cut a clause only when no digit follows (1,000 and 10:30 stay whole).
_CLAUSE_END_RE = re.compile(f"(?:[，、：]|[,:](?!\\d))+[{_CLOSERS}]*")
# Atoms for a hard cut: tags (never entered) and spoken units (a cut may start before one).
_ATOM_RE = re.compile(f"{TAG_RE.pattern}|{UNIT_RE.pattern}")

LengthFn = Callable[[str], int]
Span = tuple[int, int]


def text_length(text: str) -> int:
    """Spoken units: a CJK character, a Latin (or other alphabetic) word, or a number counts 1; tags count 0."""
    return len(UNIT_RE.findall(strip_tags(text)))


def _has_content(piece: str) -> bool:
    """True when the piece has something to say (not only punctuation, spaces or tags)."""
    return UNIT_RE.search(strip_tags(piece)) is not None


def _spans_at(text: str, start: int, end: int, pattern: re.Pattern[str]) -> list[Span]:
    """Contiguous spans of text[start:end] cut after each match of pattern; content-less spans join a neighbour."""
    cuts = [m.end() for m in pattern.finditer(text, start, end) if start < m.end() < end]
    bounds = [start, *cuts, end]
    spans: list[Span] = []
    for s, e in pairwise(bounds):
        if spans and not _has_content(text[s:e]):
            spans[-1] = (spans[-1][0], e)  # punctuation-only: merge into the previous piece
        elif spans and not _has_content(text[spans[-1][0] : spans[-1][1]]):
            spans[-1] = (spans[-1][0], e)  # a content-less first piece joins the next one
        else:
            spans.append((s, e))
    return spans


def _pack(text: str, bounds: list[int], window: int, length_fn: LengthFn) -> list[Span]:
    """Greedily join consecutive pieces (between bounds) while the joined text measures at most window."""
    packed: list[Span] = []
    start, end = bounds[0], bounds[0]
    for b in bounds[1:]:
        if end > start and length_fn(text[start:b]) > window:
            packed.append((start, end))
            start = end
        end = b
    if end > start:
        packed.append((start, end))
    return packed


def _long_sentence_bounds(text: str, span: Span, window: int, length_fn: LengthFn) -> list[int]:
    """Cut candidates inside an over-long sentence: clause ends, and word boundaries inside over-long clauses."""
    bounds = [span[0]]
    for s, e in _spans_at(text, span[0], span[1], _CLAUSE_END_RE):
        if length_fn(text[s:e]) > window:
            starts = [m.start() for m in _ATOM_RE.finditer(text, s, e) if not TAG_RE.fullmatch(m.group())]
            bounds.extend(starts[1:])  # a tag stays glued to the word before it
        bounds.append(e)
    return bounds


def split_sentences(text: str) -> list[str]:
    """Sentences of text (cut after 。！？；.!?; and line breaks), stripped, punctuation-only ones merged back."""
    return [p for s, e in _spans_at(text, 0, len(text), SENTENCE_END_RE) if (p := text[s:e].strip())]


def split_text(
    text: str, length_threshold: int = 50, window_size: int = 50, length_fn: LengthFn | None = None
) -> list[str]:
    """Split long text into segments for synthesis, with the length_threshold / window_size semantics of reference 004.

    A text measuring at most length_threshold stays one segment. Longer text is cut at sentence ends and sentences
    are packed greedily into windows of at most window_size units. A sentence longer than the window is cut at
    clause punctuation (，,、：:), and a clause still too long at word boundaries (never inside a word, number or
    tag); its pieces are packed on their own, so segments do not straddle the sentence end. Nothing is dropped:
    joining the segments gives back the text except the whitespace at the cuts. Blank text gives [].
    """
    if length_threshold < 0:
        raise InvalidInputError("length_threshold must be >= 0", field="length_threshold")
    if window_size < 1:
        raise InvalidInputError("window_size must be >= 1", field="window_size")
    measure = length_fn or text_length
    if not text.strip():
        return []
    if measure(text) <= length_threshold:
        return [text.strip()]
    spans: list[Span] = []
    bounds = [0]
    for s, e in _spans_at(text, 0, len(text), SENTENCE_END_RE):
        if measure(text[s:e]) <= window_size:
            bounds.append(e)
            continue
        spans.extend(_pack(text, bounds, window_size, measure))
        spans.extend(_pack(text, _long_sentence_bounds(text, (s, e), window_size, measure), window_size, measure))
        bounds = [e]
    spans.extend(_pack(text, bounds, window_size, measure))
    return [p for s, e in spans if (p := text[s:e].strip())]
