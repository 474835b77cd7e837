"""Reading audio from files or bytes (soundfile, then PyAV) and writing encoded audio to files."""

from __future__ import annotations

import io
import os
from pathlib import Path

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


def _read_soundfile(data: bytes | str) -> tuple[np.ndarray, int]:
    """Decode with libsndfile (wav, flac, ogg/opus/vorbis, mp3, aiff...): frames x channels float32."""
    src = io.BytesIO(data) if isinstance(data, bytes) else data
    with sf.SoundFile(src) as f:
        sr = f.samplerate
        blocks = [b for b in f.blocks(blocksize=1 << 16, dtype="float32", always_2d=True)]
    if not blocks:
        return np.zeros((0, 1), np.float32), sr
    return np.concatenate(blocks), sr


def _read_av(data: bytes | str) -> tuple[np.ndarray, int]:
    """Decode the first audio stream with PyAV (mp3, m4a/aac, ogg, webm...): frames x channels float32."""
    src = io.BytesIO(data) if isinstance(data, bytes) else data
    with av.open(src, "r") as container:
        if not container.streams.audio:
            raise ValueError("no audio stream")
        stream = container.streams.audio[0]
        resampler = None
        planes: list[np.ndarray] = []
        sr = stream.codec_context.sample_rate
        for frame in container.decode(stream):
            if resampler is None:
                sr = frame.sample_rate
                resampler = av.AudioResampler(format="fltp", layout=frame.layout, rate=sr)
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


def read_audio(source: str | Path | bytes, target_sr: int | None = None) -> tuple[np.ndarray, int]:
    """Decode an audio file or in-memory bytes to float32 mono (channels averaged), resampled if target_sr is set."""
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
    else:
        raise InvalidInputError(f"audio must be a path or bytes, got {type(source).__name__}", field="audio")

    try:
        frames, sr = _read_soundfile(data)
    except Exception:  # libsndfile cannot read it (mp3 in old builds, m4a, aac...): try FFmpeg
        try:
            frames, sr = _read_av(data)
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
