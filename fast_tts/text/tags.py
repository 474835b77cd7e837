"""Control tags such as `[uv_break]`, `[laugh]`, `[speed_5]`: find them so no text step alters or cuts them."""

from __future__ import annotations

import re

TAG_RE = re.compile(r"\[[A-Za-z0-9_]+\]")
"""A control tag: ASCII letters, digits and underscores inside square brackets (ChatTTS style)."""


def split_tags(text: str) -> list[tuple[str, bool]]:
    """Split text into (piece, is_tag) pairs, in order, so callers can treat tags as opaque atoms."""
    pieces: list[tuple[str, bool]] = []
    pos = 0
    for match in TAG_RE.finditer(text):
        if match.start() > pos:
            pieces.append((text[pos : match.start()], False))
        pieces.append((match.group(), True))
        pos = match.end()
    if pos < len(text):
        pieces.append((text[pos:], False))
    return pieces


def strip_tags(text: str) -> str:
    """Remove control tags (for measuring or classifying the spoken words only)."""
    return TAG_RE.sub(" ", text)
