"""Sample conversions (int16 <-> float32), mono shaping and soxr resampling."""

from __future__ import annotations

import numpy as np
import soxr

from fast_tts.errors import InvalidInputError

_INT16_SCALE = 32768.0


def as_mono(audio: np.ndarray, field: str = "audio") -> np.ndarray:
    """Return a 1-D view of mono audio; (1, n) and (n, 1) are accepted, true multi-channel is rejected."""
    arr = np.asarray(audio)
    if arr.ndim == 1:
        return arr
    if arr.ndim == 2 and 1 in arr.shape:
        return arr.reshape(-1)
    if arr.ndim == 0:
        raise InvalidInputError("audio must be a 1-D array of samples, got a scalar", field=field)
    raise InvalidInputError(f"audio must be mono (1-D), got shape {arr.shape}", field=field)


def to_float32(audio: np.ndarray) -> np.ndarray:
    """Convert mono samples to float32 in [-1, 1]: int16 is divided by 32768, int32 by 2**31, floats are cast."""
    arr = as_mono(audio)
    if arr.dtype == np.float32:
        return arr
    if arr.dtype == np.int16:
        return arr.astype(np.float32) / np.float32(_INT16_SCALE)
    if arr.dtype == np.int32:
        return (arr.astype(np.float64) / 2147483648.0).astype(np.float32)
    if arr.dtype == np.uint8:
        return (arr.astype(np.float32) - 128.0) / np.float32(128.0)
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float32)
    raise InvalidInputError(f"unsupported sample type {arr.dtype}", field="audio")


def to_int16(audio: np.ndarray, *, scale: float = _INT16_SCALE, truncate: bool = False) -> np.ndarray:
    """Convert mono samples to int16, clipped to the int16 range.

    By default floats are scaled by 32768 and rounded half-to-even, so to_int16(to_float32(x)) == x for every int16
    x and +1.0 clips to 32767. `scale=32767, truncate=True` is the rule of reference wav writers that compute
    `(x * 32767).astype(int16)` (MegaTTS3's): the product in the input's precision, cut toward zero.
    """
    arr = as_mono(audio)
    if arr.dtype == np.int16:
        return arr
    if not np.issubdtype(arr.dtype, np.floating):
        arr = to_float32(arr)
    scaled = np.trunc(arr * scale) if truncate else np.rint(arr.astype(np.float32) * np.float32(scale))
    np.nan_to_num(scaled, copy=False, nan=0.0)
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def _check_rate(value: int, name: str) -> int:
    """Validate a sample rate or bit rate: a positive integer."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise InvalidInputError(f"{name} must be a positive integer, got {value!r}", field=name)
    return int(value)


def resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample mono audio with soxr (high quality); int16 in gives int16 out, anything else float32 out."""
    sr_in = _check_rate(sr_in, "sr_in")
    sr_out = _check_rate(sr_out, "sr_out")
    arr = as_mono(audio)
    if arr.dtype != np.int16:
        arr = to_float32(arr)
    if sr_in == sr_out or arr.size == 0:
        return arr.copy()
    return soxr.resample(np.ascontiguousarray(arr), sr_in, sr_out, quality="HQ")
