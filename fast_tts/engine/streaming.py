"""Seamless streaming for non-causal vocoders: decode overlapping windows of a growing frame sequence.

A vocoder (ChatTTS Decoder + Vocos) sees context on both sides, so decoding a stream chunk by chunk with hard cuts
clicks at every seam, and re-decoding the whole prefix per chunk (the reference ChatTTS) costs quadratic time. Here
chunk i covers frames [s_i, e_i): it is decoded from a window with `left` frames of context before and `right`
after, and its audio runs `fade` samples past e_i so that it crossfades into chunk i+1. Concatenating the stream
therefore equals one full decode except within a few milliseconds of each seam.

Frame f of a window starting at frame a maps to samples starting at `hop * (f - a)`; `length_of(n)` gives the
samples a decode of n frames yields (ChatTTS: (2n - 1) * 256, WaveVAE: 960 n).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from fast_tts.audio import Crossfader


@dataclass(frozen=True)
class StreamPlan:
    """Chunking of a streamed decode, in frames (and `fade` in samples)."""

    first: int = 24  # frames in the first chunk: small, for a fast first audio
    chunk: int = 96  # frames in later chunks
    left: int = 16  # context frames decoded before a chunk
    right: int = 12  # context frames decoded after a chunk (waits for them, except at the end)
    fade: int = 512  # crossfade samples at each seam

    def __post_init__(self) -> None:
        if min(self.first, self.chunk, self.right) < 1 or self.left < 0 or self.fade < 0:
            raise ValueError(f"invalid stream plan {self}")


def stream_windows(
    frames: Iterable[torch.Tensor],
    decode: Callable[[torch.Tensor], np.ndarray],
    hop: int,
    length_of: Callable[[int], int],
    sample_rate: int,
    plan: StreamPlan = StreamPlan(),
) -> Iterator[np.ndarray]:
    """Yield float32 audio chunks for `frames`, an iterable of frame blocks (k, C), as they arrive (blocking)."""
    tail = hop - length_of(1)  # samples a decode yields short of hop * frames (ChatTTS: 256, WaveVAE: 0)
    if plan.fade > plan.right * hop - tail:
        raise ValueError("the fade must fit inside the right context")
    got: list[torch.Tensor] = []
    count = 0
    start, end = 0, plan.first
    joiner = Crossfader(sample_rate, plan.fade / sample_rate)

    def emit(final: bool) -> np.ndarray:
        """Decode the next chunk's window; every chunk is a segment of the joiner, so each seam is crossfaded."""
        nonlocal start, end
        seq = torch.cat(got) if len(got) > 1 else got[0]
        got[:] = [seq]
        stop = count if final else end
        a = max(0, start - plan.left)
        b = count if final else min(count, stop + plan.right)
        wav = decode(seq[a:b])
        lo = hop * (start - a)
        hi = len(wav) if final else hop * (stop - a) + plan.fade
        start, end = stop, stop + plan.chunk
        piece = joiner.push(np.asarray(wav[lo:hi], dtype=np.float32))
        return np.concatenate([piece, joiner.end_segment()])

    for block in frames:
        if block.shape[0] == 0:
            continue
        got.append(block)
        count += block.shape[0]
        while count >= end + plan.right:
            out = emit(final=False)
            if out.size:
                yield out
    if count:
        out = emit(final=True)
        if out.size:
            yield out
    rest = joiner.flush()
    if rest.size:
        yield rest
