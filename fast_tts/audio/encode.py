"""Whole-file and streaming encoders for wav, pcm, flac, mp3, opus (Ogg) and aac (ADTS).

A StreamEncoder keeps one encoder open across chunks, so the bytes it returns, concatenated, form one valid file.
"""

from __future__ import annotations

import struct
import threading
from typing import Protocol

import av
import numpy as np
import soxr

from fast_tts.audio.convert import _check_rate, to_float32, to_int16
from fast_tts.audio.formats import MEDIA_TYPES, check_format

# (container, codec, sample format fed to the codec, default bit rate) for the formats PyAV encodes.
_AV_CODECS: dict[str, tuple[str, str, str, int | None]] = {
    "mp3": ("mp3", "libmp3lame", "fltp", 64_000),
    "opus": ("ogg", "libopus", "flt", 32_000),
    "aac": ("adts", "aac", "fltp", 64_000),
    "flac": ("flac", "flac", "s16", None),
}

# Largest size field a RIFF header can hold: readers take it as "until end of stream".
_UNKNOWN_SIZE = 0xFFFFFFFF


def wav_header(sample_rate: int, num_samples: int | None) -> bytes:
    """A 44-byte PCM 16-bit mono WAV header; num_samples None writes unknown (0xFFFFFFFF) sizes for streaming."""
    if num_samples is None:
        data_size = riff_size = _UNKNOWN_SIZE
    else:
        data_size = num_samples * 2
        riff_size = min(36 + data_size, _UNKNOWN_SIZE)
    fmt_chunk = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
    return b"RIFF" + struct.pack("<I", riff_size) + b"WAVE" + fmt_chunk + b"data" + struct.pack("<I", data_size)


class _Codec(Protocol):
    def write(self, chunk: np.ndarray) -> bytes: ...

    def close(self) -> bytes: ...


class _PcmCodec:
    """Raw little-endian signed 16-bit samples, optionally behind a WAV header."""

    def __init__(self, sample_rate: int, wav: bool) -> None:
        self._header = wav_header(sample_rate, None) if wav else b""

    def write(self, chunk: np.ndarray) -> bytes:
        out = self._header + to_int16(chunk).astype("<i2", copy=False).tobytes()
        self._header = b""
        return out

    def close(self) -> bytes:
        out, self._header = self._header, b""
        return out


class _Sink:
    """A write-only file object that collects what the muxer writes; seekable only for whole-file encoding.

    In streaming mode bytes are handed out and dropped as they come, so a long stream does not pile up in memory.
    """

    def __init__(self, seekable: bool) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._seekable = seekable

    def write(self, data: bytes) -> int:
        data = bytes(data)
        if not self._seekable:
            self._buf += data
            self._pos += len(data)
            return len(data)
        end = self._pos + len(data)
        if end > len(self._buf):
            self._buf.extend(b"\0" * (end - len(self._buf)))
        self._buf[self._pos : end] = data
        self._pos = end
        return len(data)

    def seekable(self) -> bool:
        return self._seekable

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if not self._seekable:
            raise OSError("stream is not seekable")
        base = {0: 0, 1: self._pos, 2: len(self._buf)}[whence]
        self._pos = base + offset
        return self._pos

    def take(self, final: bool = False) -> bytes:
        """New bytes since the last take; a seekable sink gives everything at the end only (headers get rewritten)."""
        if self._seekable and not final:
            return b""
        out = bytes(self._buf)
        self._buf.clear()
        return out


def _encoder_rate(codec: av.Codec, sample_rate: int) -> int:
    """The input rate itself when the codec takes it, else the lowest supported rate above it (else the highest)."""
    rates = codec.audio_rates
    if not rates or sample_rate in rates:
        return sample_rate
    higher = sorted(r for r in rates if r >= sample_rate)
    return higher[0] if higher else max(rates)


class _AvCodec:
    """One PyAV container + encoder kept open for the whole stream; resamples with soxr when the codec needs it."""

    def __init__(self, fmt: str, sample_rate: int, seekable: bool, bitrate: int | None) -> None:
        container_fmt, codec_name, self._sample_fmt, default_bitrate = _AV_CODECS[fmt]
        codec = av.Codec(codec_name, "w")
        self.rate = _encoder_rate(codec, sample_rate)
        self._resampler = (
            soxr.ResampleStream(sample_rate, self.rate, 1, dtype="float32", quality="HQ")
            if self.rate != sample_rate
            else None
        )
        self._sink = _Sink(seekable)
        options = {"flush_packets": "1"}
        if fmt == "mp3":
            options["id3v2_version"] = "0"
        if fmt == "opus" and not seekable:
            options["page_duration"] = "100000"  # close an Ogg page every 100 ms instead of 1 s
        self._container = av.open(self._sink, "w", format=container_fmt, options=options)
        stream = self._container.add_stream(codec_name, rate=self.rate)
        stream.layout = "mono"
        stream.codec_context.format = self._sample_fmt
        if bitrate or default_bitrate:
            stream.codec_context.bit_rate = bitrate or default_bitrate
        self._stream = stream
        self._container.start_encoding()

    def _encode(self, samples: np.ndarray | None) -> None:
        """Encode samples (None flushes the encoder) and mux every packet it gives."""
        if samples is None:
            packets = self._stream.encode(None)
        else:
            if samples.size == 0:
                return
            frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format=self._sample_fmt, layout="mono")
            frame.sample_rate = self.rate
            packets = self._stream.encode(frame)
        self._container.mux(packets)

    def _prepare(self, chunk: np.ndarray, last: bool) -> np.ndarray:
        """Resample when needed and convert to the codec's sample type."""
        samples = np.clip(np.nan_to_num(to_float32(chunk), nan=0.0), -1.0, 1.0)
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(np.ascontiguousarray(samples), last=last)
        if self._sample_fmt == "s16":
            return to_int16(samples)
        return np.ascontiguousarray(samples, dtype=np.float32)

    def write(self, chunk: np.ndarray) -> bytes:
        self._encode(self._prepare(chunk, last=False))
        return self._sink.take()

    def close(self) -> bytes:
        if self._resampler is not None:
            self._encode(self._prepare(np.zeros(0, np.float32), last=True))
        self._encode(None)
        self._container.close()
        return self._sink.take(final=True)


def _make_codec(fmt: str, sample_rate: int, seekable: bool, bitrate: int | None) -> _Codec:
    """Pick the codec implementation for a canonical format name."""
    if fmt in ("wav", "pcm"):
        return _PcmCodec(sample_rate, wav=fmt == "wav")
    return _AvCodec(fmt, sample_rate, seekable, bitrate)


class StreamEncoder:
    """Encode audio chunk by chunk; every byte string returned, concatenated in order, is one valid file.

    `write` may return b"" while the codec buffers; `close` returns the rest. Thread-safe per instance.
    """

    def __init__(self, fmt: str, sample_rate: int, bitrate: int | None = None) -> None:
        self.format = check_format(fmt)
        self.sample_rate = _check_rate(sample_rate, "sample_rate")
        self.media_type = MEDIA_TYPES[self.format]
        if bitrate is not None:
            _check_rate(bitrate, "bitrate")
        self._lock = threading.Lock()
        self._closed = False
        self._codec = _make_codec(self.format, self.sample_rate, seekable=False, bitrate=bitrate)

    def write(self, chunk: np.ndarray) -> bytes:
        """Encode one chunk of mono int16 or float audio and return the bytes ready so far."""
        with self._lock:
            if self._closed:
                raise ValueError("write() after close() on a StreamEncoder")
            return self._codec.write(chunk)

    def close(self) -> bytes:
        """Flush the encoder and return the final bytes; later calls return b""."""
        with self._lock:
            if self._closed:
                return b""
            self._closed = True
            return self._codec.close()

    def __enter__(self) -> StreamEncoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def encode(audio: np.ndarray, sample_rate: int, fmt: str, bitrate: int | None = None) -> bytes:
    """Encode a whole mono clip to one file in memory (exact sizes in WAV/FLAC headers, gapless info in MP3)."""
    fmt = check_format(fmt)
    sample_rate = _check_rate(sample_rate, "sample_rate")
    if bitrate is not None:
        _check_rate(bitrate, "bitrate")
    if fmt == "wav":
        samples = to_int16(audio)
        return wav_header(sample_rate, samples.size) + samples.astype("<i2", copy=False).tobytes()
    if fmt == "pcm":
        return to_int16(audio).astype("<i2", copy=False).tobytes()
    codec = _make_codec(fmt, sample_rate, seekable=True, bitrate=bitrate)
    return codec.write(audio) + codec.close()
