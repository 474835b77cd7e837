"""Decoded-audio caps: an upload that is small compressed but decodes to hours is refused while decoding.

read_audio stops as soon as the decoded length passes `max_seconds`: before decoding anything when the header gives
the length (FLAC, WAV), else while counting decoded frames (here AAC through PyAV). The reader records how far into
the file the decoder got, which shows it stopped early. Over HTTP the refusal is a 413 naming the field.
"""

from __future__ import annotations

import io

import av
import httpx
import numpy as np
import pytest
import soundfile as sf

from fast_tts.audio import read_audio
from fast_tts.audio.files import AudioTooLongError


class _Reader(io.BytesIO):
    """A file object that remembers the furthest byte a decoder read."""

    furthest = 0

    def read(self, size: int | None = -1) -> bytes:  # type: ignore[override]
        data = super().read(size)
        self.furthest = max(self.furthest, self.tell())
        return data

    def readinto(self, buffer) -> int:  # type: ignore[override]
        n = super().readinto(buffer)
        self.furthest = max(self.furthest, self.tell())
        return n


def silent_flac(seconds: int, rate: int = 8000) -> bytes:
    """FLAC of silence: a few hundred bytes per minute, however long."""
    buf = io.BytesIO()
    block = np.zeros(rate * 60, np.int16)
    with sf.SoundFile(buf, "w", samplerate=rate, channels=1, format="FLAC", subtype="PCM_16") as f:
        for _ in range(seconds // 60):
            f.write(block)
    return buf.getvalue()


@pytest.fixture(scope="module")
def three_hours() -> bytes:
    return silent_flac(3 * 3600)


def test_flac_of_hours_is_refused_from_its_header(three_hours: bytes) -> None:
    assert len(three_hours) < 400_000  # small compressed...
    reader = _Reader(three_hours)
    with pytest.raises(AudioTooLongError, match="longer than 60 s"):
        read_audio(reader, max_seconds=60)
    assert reader.furthest < len(three_hours) // 20, reader.furthest  # ...refused before its audio was decoded
    audio, rate = read_audio(silent_flac(120), max_seconds=300)  # under the cap: decoded as usual
    assert rate == 8000 and len(audio) == 120 * 8000


def _aac(seconds: int, rate: int = 8000) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="adts") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        tone = (0.1 * np.sin(np.arange(rate) * 2 * np.pi * 220 / rate)).astype(np.float32)[None, :]
        for _ in range(seconds):
            frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


def _without_length(flac: bytes) -> bytes:
    """The same FLAC with STREAMINFO's total-samples field set to 0 ("unknown"), as a streaming encoder writes it."""
    data = bytearray(flac)
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # STREAMINFO first; its 36-bit count ends at byte 25
    data[21] &= 0xF0
    data[22:26] = b"\0\0\0\0"
    return bytes(data)


def test_decoding_without_a_length_in_the_header_stops_at_the_cap(three_hours: bytes) -> None:
    data = _without_length(three_hours)  # only counting decoded frames can stop this one
    reader = _Reader(data)
    with pytest.raises(AudioTooLongError):
        read_audio(reader, max_seconds=60)
    assert reader.furthest < len(data) // 20, (reader.furthest, len(data))


def test_pyav_decoding_stops_at_the_cap_too() -> None:
    data = _aac(40)  # ADTS: libsndfile cannot read it, PyAV counts its frames
    with pytest.raises(AudioTooLongError):
        read_audio(data, max_seconds=10)
    audio, rate = read_audio(data, max_seconds=60)
    assert rate == 8000 and 39 < len(audio) / rate < 42


@pytest.mark.slow
def test_server_refuses_an_upload_that_decodes_to_hours(tmp_path, three_hours: bytes) -> None:
    pytest.importorskip("fastapi")
    from fast_tts.server.launch import ServerProcess

    args = ["--speakers-dir", str(tmp_path), "--max-upload-mb", "1", "--max-audio-seconds", "60"]
    with ServerProcess(args) as server:
        answer = httpx.post(f"{server.url}/api/speakers", data={"name": "bomb"}, timeout=60,
                            files={"audio": ("long.flac", three_hours, "audio/flac")})
        assert answer.status_code == 413, answer.text
        assert answer.json()["error"]["code"] == "audio_too_long" and answer.json()["error"]["param"] == "audio"
        short = httpx.post(f"{server.url}/api/speakers", data={"name": "clip"}, timeout=60,
                           files={"audio": ("short.flac", silent_flac(60), "audio/flac")})
        assert short.status_code == 400  # decoded fine; the bundled Piper voice then cannot clone from audio
        assert short.json()["error"]["code"] == "unsupported_operation"
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
