"""Seamless streaming for non-causal vocoders: decode overlapping windows of a growing frame sequence.

A vocoder (ChatTTS Decoder + Vocos, MegaTTS3 WaveVAE) sees context on both sides, so decoding a stream chunk by
chunk with hard cuts clicks at every seam, and re-decoding the whole prefix per chunk (the reference ChatTTS) costs
quadratic time. Here chunk i covers frames [s_i, e_i): it is decoded from a window with `left` frames of context
before and `right` after, and its audio runs `fade` samples past e_i so that it crossfades into chunk i+1.
Concatenating the stream therefore equals one full decode except within a few milliseconds of each seam.

Frame f of a window starting at frame a maps to samples starting at `hop * (f - a)`; `length_of(n)` gives the
samples a decode of n frames yields (ChatTTS: (2n - 1) * 256, WaveVAE: 960 n).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import numpy as np
import torch

from fast_tts.audio import StreamCrossfader


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


async def stream_windows(
    frames: AsyncIterator[torch.Tensor],
    decode: Callable[[torch.Tensor], Awaitable[np.ndarray]],
    hop: int,
    length_of: Callable[[int], int],
    sample_rate: int,
    plan: StreamPlan = StreamPlan(),
) -> AsyncIterator[np.ndarray]:
    """Yield float32 audio chunks for `frames`, an async iterator of frame blocks (k, C), as they arrive."""
    tail = hop - length_of(1)  # samples a decode yields short of hop * frames (ChatTTS: 256, WaveVAE: 0)
    if plan.fade > plan.right * hop - tail:
        raise ValueError("the fade must fit inside the right context")
    got: list[torch.Tensor] = []
    count = 0
    start, end = 0, plan.first
    joiner = StreamCrossfader(sample_rate, plan.fade / sample_rate) if plan.fade else None

    async def emit(final: bool) -> np.ndarray:
        nonlocal start, end
        seq = torch.cat(got) if len(got) > 1 else got[0]
        got[:] = [seq]
        stop = count if final else end
        a = max(0, start - plan.left)
        b = count if final else min(count, stop + plan.right)
        wav = await decode(seq[a:b])
        lo = hop * (start - a)
        hi = len(wav) if final else hop * (stop - a) + plan.fade
        piece = np.asarray(wav[lo:hi], dtype=np.float32)
        start, end = stop, stop + plan.chunk
        return piece

    def join(piece: np.ndarray) -> np.ndarray:
        return joiner.push(piece) if joiner is not None else piece

    async for block in frames:
        if block.shape[0] == 0:
            continue
        got.append(block)
        count += block.shape[0]
        while count >= end + plan.right:
            out = join(await emit(final=False))
            if out.size:
                yield out
    if count:
        out = join(await emit(final=True))
        if out.size:
            yield out
    if joiner is not None:
        tail = joiner.flush()
        if tail.size:
            yield tail


class SegmentJoiner:
    """Join consecutive segments, each arriving as a stream of chunks, with a Hann crossfade at segment seams.

    Chunks inside a segment pass through unchanged (they are already seamless); the last `fade` samples of a segment
    are held back and overlap-added with the first `fade` samples of the next, using the halves of
    `np.hanning(2 * fade)` (MegaTTS3's 0.16 s join is `fade` = 3840 at 24 kHz).
    """

    def __init__(self, fade: int, dtype: type = np.float32) -> None:
        self.fade = fade
        self.dtype = dtype
        window = np.hanning(2 * fade).astype(dtype) if fade else np.zeros(0, dtype=dtype)
        self._fade_in, self._fade_out = window[:fade], window[fade:]
        self._hold = np.zeros(0, dtype=dtype)  # end of the current segment, not final yet
        self._tail: np.ndarray | None = None  # end of the previous segment, waiting for the next head

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Add audio of the current segment; returns what is final now."""
        buf = np.concatenate([self._hold, np.asarray(chunk, dtype=self.dtype)])
        if self._tail is not None:
            n = len(self._tail)
            if len(buf) < n:
                self._hold = buf
                return np.zeros(0, dtype=self.dtype)
            buf[:n] = self._tail * self._fade_out[-n:] + buf[:n] * self._fade_in[:n]
            self._tail = None
        cut = max(len(buf) - self.fade, 0)
        self._hold = buf[cut:]
        return buf[:cut]

    def end_segment(self) -> None:
        """The current segment is complete: its held end will fade into the next segment."""
        if self._tail is not None:  # a segment shorter than the fade: keep the old tail, append it plainly
            self._hold = np.concatenate([self._tail, self._hold])
            self._tail = None
        self._tail, self._hold = self._hold, np.zeros(0, dtype=self.dtype)

    def flush(self) -> np.ndarray:
        """End of the stream: the last segment's end, unfaded."""
        parts = [p for p in (self._tail, self._hold) if p is not None]
        self._tail, self._hold = None, np.zeros(0, dtype=self.dtype)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=self.dtype)
