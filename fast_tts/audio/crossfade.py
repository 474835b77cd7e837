"""Overlap-add crossfades between consecutive audio segments: one streaming joiner, and the whole-clip join on it.

`Crossfader` takes segments that arrive in chunks: chunks inside a segment pass through unchanged; at each seam the
end of one segment and the start of the next are overlap-added. Seam rule: the overlap is
min(fade samples, samples of the earlier segment not already used by its own left overlap, length of the later
segment), so a short segment is never faded twice over the same samples. `crossfade_join` is the same join of whole
segments, and a stream whose every chunk is a segment of its own (`push` then `end_segment`) fades at every chunk.

Windows: "hann", "equal_power", "linear" (curves sampled at sample midpoints), and "hanning": the two halves of
`np.hanning(2 * overlap)`, the join of MegaTTS3's reference (its 0.16 s seams) that ChatTTS's segments use too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from fast_tts.audio.convert import as_mono, to_float32, to_int16
from fast_tts.errors import InvalidInputError

WINDOWS = ("hann", "equal_power", "linear", "hanning")


@lru_cache(maxsize=64)
def _fade_curves(n: int, window: str) -> tuple[np.ndarray, np.ndarray]:
    """(fade_out, fade_in) float64 curves of n samples; hann/linear/hanning sum to 1, equal_power's squares do."""
    if window == "hanning":
        full = np.hanning(2 * n)
        fade_in, fade_out = full[:n], full[n:]
    else:
        t = (np.arange(n, dtype=np.float64) + 0.5) / n
        if window == "hann":
            fade_in = 0.5 - 0.5 * np.cos(np.pi * t)
            fade_out = 1.0 - fade_in
        elif window == "equal_power":
            fade_in = np.sin(0.5 * np.pi * t)
            fade_out = np.cos(0.5 * np.pi * t)
        else:
            fade_in = t
            fade_out = 1.0 - t
    for curve in (fade_out, fade_in):
        curve.setflags(write=False)  # cached and shared between threads
    return fade_out, fade_in


def _check(sample_rate: int, fade_s: float, window: str) -> int:
    """Validate the parameters and return the fade length in samples."""
    if window not in WINDOWS:
        raise InvalidInputError(f"unknown crossfade window {window!r}; choose one of: {', '.join(WINDOWS)}", "window")
    if not fade_s >= 0:
        raise InvalidInputError(f"fade_s must be >= 0, got {fade_s!r}", field="fade_s")
    if sample_rate <= 0:
        raise InvalidInputError(f"sample_rate must be positive, got {sample_rate!r}", field="sample_rate")
    return round(fade_s * sample_rate)


class Crossfader:
    """Join a stream of segments, each arriving as chunks, with overlap-add crossfades at the segment seams.

    `push` returns the audio that is final now; `end_segment` marks a seam; `flush` ends the stream and returns the
    rest. The output dtype is `dtype`, or else that of the first chunk (int16 stays int16, mixed with rounding;
    anything else becomes float32). Not thread-safe: one producer per instance.
    """

    def __init__(self, sample_rate: int, fade_s: float = 0.05, window: str = "hann",
                 dtype: type | np.dtype | None = None) -> None:
        self.fade = _check(sample_rate, fade_s, window)
        self.window = window
        self._fixed = np.dtype(dtype) if dtype is not None else None
        self._reset()

    def _reset(self) -> None:
        self._dtype: np.dtype | None = self._fixed
        self._tail: np.ndarray | None = None  # end of the previous segment, waiting for the next one's head
        self._seg = self._empty()  # the current segment's samples not emitted yet
        self._seg_len = 0  # samples of the current segment so far
        self._left = 0  # samples at its start used by its left overlap (never held for the right one)

    def _empty(self) -> np.ndarray:
        return np.zeros(0, self._dtype or np.float32)

    def _cast(self, chunk: np.ndarray) -> np.ndarray:
        seg = as_mono(chunk)
        if self._dtype is None:
            self._dtype = np.dtype(np.int16) if seg.dtype == np.int16 else np.dtype(np.float32)
            self._seg = self._seg.astype(self._dtype)
        if seg.dtype == self._dtype:
            return seg
        if self._dtype == np.int16:
            raise InvalidInputError("Crossfader got float audio after int16 chunks", field="audio")
        return to_float32(seg).astype(self._dtype) if self._dtype != np.float32 else to_float32(seg)

    def _mix(self, tail: np.ndarray, head: np.ndarray) -> np.ndarray:
        """Overlap-add in the output's precision (float32 for int16 output, then rounded)."""
        work = np.float32 if self._dtype == np.int16 else self._dtype
        fade_out, fade_in = (c.astype(work) for c in _fade_curves(len(tail), self.window))
        mixed = tail.astype(work) * fade_out + head.astype(work) * fade_in
        if self._dtype == np.int16:
            return np.clip(np.rint(mixed), -32768, 32767).astype(np.int16)
        return mixed

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Add audio of the current segment; returns what is final now (may be empty)."""
        data = self._cast(chunk)
        self._seg = np.concatenate([self._seg, data]) if self._seg.size else data
        self._seg_len += len(data)
        out = []
        if self._tail is not None:  # the seam waits until this segment is as long as the held tail
            if self._seg_len < len(self._tail):
                return self._empty()
            out.append(self._seam(len(self._tail)))
        keep = min(self.fade, self._seg_len - self._left, len(self._seg))
        cut = len(self._seg) - keep
        out.append(self._seg[:cut])
        self._seg = self._seg[cut:]
        return np.concatenate(out) if len(out) > 1 else out[0]

    def _seam(self, overlap: int) -> np.ndarray:
        """Emit the held tail's free part and overlap its last `overlap` samples with this segment's first ones."""
        tail = self._tail
        free = tail[: len(tail) - overlap]
        mixed = self._mix(tail[len(tail) - overlap :], self._seg[:overlap])
        self._tail = None
        self._left = overlap
        self._seg = self._seg[overlap:]
        return np.concatenate([free, mixed])

    def end_segment(self) -> np.ndarray:
        """The current segment is complete: its end is held to fade into the next. Returns what became final."""
        out = self._empty()
        if self._tail is not None:  # a segment shorter than the held tail: it overlaps the tail's end entirely
            out = self._seam(self._seg_len)
        self._tail, self._seg = self._seg, self._empty()
        self._seg_len, self._left = 0, 0
        return out

    def flush(self) -> np.ndarray:
        """End of the stream: the rest, the last segment's end unfaded; the joiner is then ready for a new stream."""
        parts = [self.end_segment()]
        if self._tail is not None:
            parts.append(self._tail)
        out = np.concatenate(parts)
        self._reset()
        return out


def crossfade_join(segments: Sequence[np.ndarray], sample_rate: int, fade_s: float = 0.05, window: str = "hann",
                   dtype: type | np.dtype | None = None) -> np.ndarray:
    """Join whole mono segments with overlap-add crossfades of up to fade_s seconds; int16 in gives int16 out when
    every segment is int16, else float32 (or `dtype`)."""
    _check(sample_rate, fade_s, window)
    segs = [as_mono(s) for s in segments]
    if not segs:
        return np.zeros(0, dtype or np.float32)
    if len(segs) == 1 and dtype is None:
        return segs[0]
    if dtype is None:
        dtype = np.int16 if all(s.dtype == np.int16 for s in segs) else np.float32
    joiner = Crossfader(sample_rate, fade_s, window, dtype)
    out = []
    for seg in segs:
        out.append(joiner.push(seg))
        out.append(joiner.end_segment())
    out.append(joiner.flush())
    return np.concatenate(out)


@dataclass(frozen=True)
class JoinRule:
    """How a family's segments become one stream: the crossfade at segment seams, the precision of the join, and
    the conversion to int16 (`to_int16`'s scale and rounding)."""

    fade_s: float = 0.0
    window: str = "hann"
    dtype: type = np.float32
    int16_scale: float = 32768.0
    int16_truncate: bool = False

    def joiner(self, sample_rate: int) -> Crossfader:
        """A streaming joiner for one request."""
        return Crossfader(sample_rate, self.fade_s, self.window, self.dtype)

    def join(self, segments: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        """Whole segments joined by this rule (float, in `dtype`)."""
        return crossfade_join(segments, sample_rate, self.fade_s, self.window, self.dtype)

    def int16(self, audio: np.ndarray) -> np.ndarray:
        """Joined audio as int16."""
        return to_int16(audio, scale=self.int16_scale, truncate=self.int16_truncate)
