"""KokoroPipeline: the language-aware half of Kokoro (G2P, clause chunks, pauses) over the language-blind model.

Text goes out in chunks the listener can start on early: the first clause alone (or, for a listener waiting on the
first audio, its first few words alone, so that audio comes after one short model call), then the following clauses
packed up to a sentence end. Each clause's audio ends with a pause that fits its closing punctuation; the model's
own padding silence is trimmed away.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from fast_tts.models.kokoro.files import MAX_TOKENS
from fast_tts.models.kokoro.model import KokoroModel
from fast_tts.text.tags import strip_tags

_CLAUSE_END = re.compile("[，、；：,;:]+|[。！？!?…]+|(?<!\\d)\\.(?!\\d)|\\n+")
_SENTENCE_END = re.compile("[。！？!?…\\n.]")
PACK_TOKENS = 200
"""Phoneme tokens a later chunk may pack (about 8 s of speech): fewer model calls, prosody across commas."""
LEAD_TOKENS = 16
"""Phoneme tokens (three or four syllables) after which the first clause of a text is cut at a word gap: a model
call costs a fixed part plus about as much as the audio it makes, so a short first piece brings the first audio
forward."""
CLAUSE_PAUSE_S = 0.15
SENTENCE_PAUSE_S = 0.3
_LEAD_S = 0.03  # silence kept before a chunk's first sound
_THRESHOLD = 0.01  # amplitude under which the model's padding counts as silence


@dataclass(frozen=True)
class KokoroResult:
    """One chunk: the text it says, the phonemes it was made from, and its audio (float32 at the model's rate)."""

    graphemes: str
    phonemes: str
    audio: np.ndarray


def clauses(text: str) -> list[str]:
    """Clauses of `text`, each with its closing punctuation; nothing is dropped but surrounding spaces."""
    cuts = [0, *(m.end() for m in _CLAUSE_END.finditer(text)), len(text)]
    return [p for s, e in itertools.pairwise(cuts) if (p := text[s:e].strip())]


def _pause(graphemes: str) -> float:
    """Seconds of silence after a chunk: longer after a sentence end than after a comma, none mid-phrase."""
    end = graphemes.rstrip()[-1:]
    if _SENTENCE_END.match(end):
        return SENTENCE_PAUSE_S
    return CLAUSE_PAUSE_S if _CLAUSE_END.match(end) else 0.0


class KokoroPipeline:
    """Callable: (text, voice, speed) -> KokoroResult per chunk. `g2p` decides the language; the model does not."""

    def __init__(self, model: KokoroModel, g2p: Callable[[str], str]) -> None:
        self.model = model
        self.g2p = g2p
        self.sample_rate = model.sample_rate

    def _token_chunks(self, graphemes: str, lead: bool) -> Iterator[tuple[str, list[int]]]:
        """(phonemes, tokens) pieces of a pack, cut at word gaps where one model call cannot take it all, and, for
        the `lead` pack, after the first LEAD_TOKENS tokens when it is more than half as long again."""
        phonemes = self.g2p(graphemes)
        tokens = self.model.tokens(phonemes)
        if len(tokens) <= MAX_TOKENS - 2 and not (lead and 2 * len(tokens) > 3 * LEAD_TOKENS):
            yield phonemes, tokens
            return
        piece = ""
        limit = LEAD_TOKENS if lead else MAX_TOKENS - 2
        for word in phonemes.split(" "):
            joined = f"{piece} {word}".strip()
            if piece and len(self.model.tokens(joined)) > limit:
                yield piece, self.model.tokens(piece)
                joined, limit = word, MAX_TOKENS - 2
            piece = joined[: 4 * MAX_TOKENS]
        if piece:
            yield piece, self.model.tokens(piece)[: MAX_TOKENS - 2]

    def _packs(self, text: str) -> Iterator[str]:
        """The first clause alone, then clauses packed up to a sentence end and about PACK_TOKENS phonemes."""
        pack = ""
        for index, clause in enumerate(clauses(strip_tags(text))):
            if index == 0:
                yield clause
                continue
            joined = f"{pack}{clause}"
            if pack and len(self.g2p(joined)) > PACK_TOKENS:
                yield pack
                joined = clause
            pack = joined
            if _SENTENCE_END.match(clause[-1]):
                yield pack
                pack = ""
        if pack:
            yield pack

    def __call__(self, text: str, voice: str, speed: float = 1.0, *, quick_start: bool = False
                 ) -> Iterator[KokoroResult]:
        """Speak `text` chunk by chunk; a pack's last piece carries the pause after it, earlier pieces none.
        quick_start: cut the first clause after its first words (an extra model call, for a listener waiting)."""
        for index, graphemes in enumerate(self._packs(text)):
            pieces = list(self._token_chunks(graphemes, lead=quick_start and index == 0))
            for number, (phonemes, tokens) in enumerate(pieces, 1):
                audio = self.model.synthesize(tokens, voice, speed)
                pause = _pause(graphemes) / speed if number == len(pieces) else 0.0
                yield KokoroResult(graphemes, phonemes, self._trim(audio, pause))

    def _trim(self, audio: np.ndarray, pause_s: float) -> np.ndarray:
        """Cut the model's padding to _LEAD_S before the first sound and `pause_s` after the last."""
        loud = np.flatnonzero(np.abs(audio) > _THRESHOLD)
        if loud.size == 0:
            return audio[:0]
        rate = self.sample_rate
        start = max(0, loud[0] - int(_LEAD_S * rate))
        tail = int(0.05 * rate)  # the release of the last sound, before the pause proper
        end = min(audio.size, loud[-1] + tail)
        pause = np.zeros(int(pause_s * rate), np.float32)
        return np.concatenate([audio[start:end], pause])
