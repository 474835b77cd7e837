"""Overlap-add crossfades between consecutive audio segments, for whole clips and for streams.

Overlap rule (shared by both): between segment i and i+1 the overlap is
min(fade samples, samples of segment i not already used by its left overlap, len(segment i+1)),
so a short segment is never faded twice over the same samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from fast_tts.audio.convert import as_mono, to_float32
from fast_tts.errors import InvalidInputError

WINDOWS = ("hann", "equal_power", "linear")


@lru_cache(maxsize=64)
def _fade_curves(n: int, window: str) -> tuple[np.ndarray, np.ndarray]:
    """(fade_out, fade_in) float32 curves of n samples; hann/linear sum to 1, equal_power's squares sum to 1."""
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
    curves = fade_out.astype(np.float32), fade_in.astype(np.float32)
    for curve in curves:
        curve.setflags(write=False)  # cached and shared between threads
    return curves


def _mix(tail: np.ndarray, head: np.ndarray, window: str, out_dtype: np.dtype) -> np.ndarray:
    """Crossfade `tail` (fading out) into `head` (fading in); both the same length."""
    fade_out, fade_in = _fade_curves(len(tail), window)
    if out_dtype == np.int16:
        mixed = tail.astype(np.float32) * fade_out + head.astype(np.float32) * fade_in
        return np.clip(np.rint(mixed), -32768, 32767).astype(np.int16)
    return to_float32(tail) * fade_out + to_float32(head) * fade_in


def _check(sample_rate: int, fade_s: float, window: str) -> int:
    """Validate the parameters and return the fade length in samples."""
    if window not in WINDOWS:
        raise InvalidInputError(f"unknown crossfade window {window!r}; choose one of: {', '.join(WINDOWS)}", "window")
    if not fade_s >= 0:
        raise InvalidInputError(f"fade_s must be >= 0, got {fade_s!r}", field="fade_s")
    if sample_rate <= 0:
        raise InvalidInputError(f"sample_rate must be positive, got {sample_rate!r}", field="sample_rate")
    return int(round(fade_s * sample_rate))


def _common_dtype(segments: Sequence[np.ndarray]) -> np.dtype:
    """int16 when every segment is int16, else float32."""
    return np.dtype(np.int16) if all(s.dtype == np.int16 for s in segments) else np.dtype(np.float32)


def crossfade_join(
    segments: Sequence[np.ndarray], sample_rate: int, fade_s: float = 0.05, window: str = "hann"
) -> np.ndarray:
    """Join mono segments with an overlap-add crossfade of up to fade_s seconds; int16 in gives int16 out."""
    fade = _check(sample_rate, fade_s, window)
    segs = [as_mono(s) for s in segments]
    if not segs:
        return np.zeros(0, np.float32)
    if len(segs) == 1:
        return segs[0]
    dtype = _common_dtype(segs)
    segs = [s if s.dtype == dtype else to_float32(s) for s in segs]
    overlaps = []
    left = 0  # samples at the start of the previous segment already used by its own left overlap
    for prev, nxt in zip(segs, segs[1:]):
        ov = min(fade, len(prev) - left, len(nxt))
        overlaps.append(ov)
        left = ov
    out = np.empty(sum(len(s) for s in segs) - sum(overlaps), dtype)
    pos = 0  # where the current segment starts in `out`
    for i, seg in enumerate(segs):
        ov_in = overlaps[i - 1] if i > 0 else 0
        if ov_in:
            out[pos : pos + ov_in] = _mix(out[pos : pos + ov_in], seg[:ov_in], window, dtype)
        out[pos + ov_in : pos + len(seg)] = seg[ov_in:]
        pos += len(seg) - (overlaps[i] if i < len(overlaps) else 0)
    return out


class StreamCrossfader:
    """Streaming twin of crossfade_join: emit each chunk minus a held tail, fade that tail into the next chunk.

    push(c1) + push(c2) + ... + flush() == crossfade_join([c1, c2, ...]) sample for sample.
    Not thread-safe: one producer per instance.
    """

    def __init__(self, sample_rate: int, fade_s: float = 0.05, window: str = "hann") -> None:
        self.fade = _check(sample_rate, fade_s, window)
        self.window = window
        self._tail: np.ndarray | None = None
        self._dtype: np.dtype | None = None

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Add the next chunk; returns the audio that is final now (may be empty)."""
        seg = as_mono(chunk)
        if self._dtype is None:
            self._dtype = np.dtype(np.int16) if seg.dtype == np.int16 else np.dtype(np.float32)
        if seg.dtype != self._dtype:
            if self._dtype == np.int16:
                raise InvalidInputError("StreamCrossfader got float audio after int16 chunks", field="audio")
            seg = to_float32(seg)
        if self._tail is None:  # first chunk: nothing to fade into
            start = seg
            ov = 0
        else:
            ov = min(len(self._tail), len(seg))
            start_free = self._tail[: len(self._tail) - ov]
            mixed = _mix(self._tail[len(self._tail) - ov :], seg[:ov], self.window, self._dtype)
            start = np.concatenate([start_free, mixed, seg[ov:]])
        keep = min(self.fade, len(seg) - ov)
        self._tail = start[len(start) - keep :].copy()
        return start[: len(start) - keep]

    def flush(self) -> np.ndarray:
        """End of stream: return the held tail unchanged."""
        tail = self._tail if self._tail is not None else np.zeros(0, self._dtype or np.float32)
        self._tail = None
        self._dtype = None
        return tail
