"""Reading audio from files or bytes (soundfile, then PyAV) and writing encoded audio to files."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
import soundfile as sf

from fast_tts.audio.convert import _check_rate, resample
from fast_tts.audio.encode import encode
from fast_tts.audio.formats import check_format, format_from_path
from fast_tts.errors import InvalidInputError


def write_audio(
    audio: np.ndarray, path: str | Path, sample_rate: int, fmt: str | None = None
) -> Path:
    """Encode mono audio and write it to `path` (format from the extension unless given); returns the path."""
    fmt = check_format(fmt, field="format") if fmt is not None else format_from_path(path)
    data = encode(audio, sample_rate, fmt)
    target = Path(path)
    try:
        with open(target, "wb") as fh:
            fh.write(data)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise InvalidInputError(f"cannot write audio to {str(target)!r}: {reason}", field="output") from exc
    return target


Source = str | Path | bytes | BinaryIO
_MAX_RATE = 768_000  # no real recording is sampled faster; a header that says so would defeat the duration cap


class AudioTooLongError(InvalidInputError):
    """Decoding was stopped: the audio is longer than the caller's limit (a small file can decode to hours)."""

    def __init__(self, limit_s: float) -> None:
        super().__init__(f"audio is longer than {limit_s:g} s once decoded (the limit)", field="audio")
        self.limit_s = limit_s


class _Budget:
    """Counts decoded frames against a duration limit and stops the decoder as soon as it is passed."""

    def __init__(self, max_seconds: float | None) -> None:
        self.max_seconds = max_seconds
        self.frames = 0

    def check_rate(self, sr: int) -> None:
        if self.max_seconds is not None and not 0 < sr <= _MAX_RATE:
            raise InvalidInputError(f"audio declares an implausible sample rate ({sr} Hz)", field="audio")

    def take(self, frames: int, sr: int) -> None:
        self.frames += frames
        if self.max_seconds is not None and self.frames > self.max_seconds * sr:
            raise AudioTooLongError(self.max_seconds)


def _opened(data: bytes | str | BinaryIO) -> str | BinaryIO:
    if isinstance(data, bytes):
        return io.BytesIO(data)
    if not isinstance(data, str):
        data.seek(0)
    return data


def _read_soundfile(data: bytes | str | BinaryIO, budget: _Budget) -> tuple[np.ndarray, int]:
    """Decode with libsndfile (wav, flac, ogg/opus/vorbis, mp3, aiff...): frames x channels float32."""
    with sf.SoundFile(_opened(data)) as f:
        sr = f.samplerate
        budget.check_rate(sr)
        limit = budget.max_seconds
        if limit is not None and 0 < f.frames < (1 << 62) and f.frames > limit * sr:  # the header's length says so:
            raise AudioTooLongError(limit)  # refuse before decoding anything
        blocks = []
        for block in f.blocks(blocksize=1 << 16, dtype="float32", always_2d=True):
            budget.take(len(block), sr)  # headers can lie: count what is really decoded too
            blocks.append(block)
    if not blocks:
        return np.zeros((0, 1), np.float32), sr
    return np.concatenate(blocks), sr


def _read_av(data: bytes | str | BinaryIO, budget: _Budget) -> tuple[np.ndarray, int]:
    """Decode the first audio stream with PyAV (mp3, m4a/aac, ogg, webm...): frames x channels float32."""
    with av.open(_opened(data), "r") as container:
        if not container.streams.audio:
            raise ValueError("no audio stream")
        stream = container.streams.audio[0]
        resampler = None
        planes: list[np.ndarray] = []
        sr = stream.codec_context.sample_rate
        for frame in container.decode(stream):
            if resampler is None:
                sr = frame.sample_rate
                budget.check_rate(sr)
                resampler = av.AudioResampler(format="fltp", layout=frame.layout, rate=sr)
            budget.take(frame.samples, sr)
            planes.extend(f.to_ndarray() for f in resampler.resample(frame))
        if resampler is not None:
            planes.extend(f.to_ndarray() for f in resampler.resample(None))
    if not sr:
        raise ValueError("no sample rate")
    if not planes:
        return np.zeros((0, 1), np.float32), sr
    return np.concatenate(planes, axis=1).T.astype(np.float32, copy=False), sr


def _reason(error: Exception) -> str:
    """The short reason of a decoder error, without object reprs."""
    return getattr(error, "strerror", None) or getattr(error, "error_string", None) or str(error)


def read_audio(
    source: Source, target_sr: int | None = None, *, max_seconds: float | None = None
) -> tuple[np.ndarray, int]:
    """Decode an audio file, in-memory bytes or a binary file object to float32 mono (channels averaged), resampled
    if target_sr is set. With `max_seconds`, decoding stops with AudioTooLongError as soon as the audio passes it
    (before decoding anything when the header tells the length), so a tiny file that decodes to hours costs little.
    """
    if target_sr is not None:
        target_sr = _check_rate(target_sr, "target_sr")
    if isinstance(source, (bytearray, memoryview)):
        source = bytes(source)
    if isinstance(source, bytes):
        if not source:
            raise InvalidInputError("audio is empty (0 bytes)", field="audio")
        data: bytes | str = source
        what = f"{len(source)} bytes"
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise InvalidInputError(f"audio file not found: {str(path)!r}", field="audio")
        if path.stat().st_size == 0:
            raise InvalidInputError(f"audio file is empty: {str(path)!r}", field="audio")
        data = str(path)
        what = repr(str(path))
    elif hasattr(source, "read") and hasattr(source, "seek"):
        data = source
        what = "the audio stream"
    else:
        raise InvalidInputError(f"audio must be a path or bytes, got {type(source).__name__}", field="audio")

    try:
        frames, sr = _read_soundfile(data, _Budget(max_seconds))
    except InvalidInputError:  # too long, or an impossible rate: the file is readable, and refused
        raise
    except Exception:  # libsndfile cannot read it (mp3 in old builds, m4a, aac...): try FFmpeg
        try:
            frames, sr = _read_av(data, _Budget(max_seconds))
        except InvalidInputError:
            raise
        except Exception as av_error:
            raise InvalidInputError(
                f"could not decode audio from {what}: not a supported audio file ({_reason(av_error)})",
                field="audio",
            ) from av_error
    mono = frames.mean(axis=1, dtype=np.float32) if frames.shape[1] > 1 else frames[:, 0]
    mono = np.ascontiguousarray(mono, dtype=np.float32)
    if target_sr is not None and target_sr != sr:
        return resample(mono, sr, target_sr), target_sr
    return mono, sr
