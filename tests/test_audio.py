"""fast_tts.audio: formats, whole and streaming encoders, reading, resampling, conversions and crossfades."""

from __future__ import annotations

import io
import threading

import av
import numpy as np
import pytest
import soundfile as sf

from fast_tts.audio import (
    FORMATS,
    MEDIA_TYPES,
    Crossfader,
    JoinRule,
    StreamEncoder,
    crossfade_join,
    encode,
    format_from_path,
    read_audio,
    resample,
    to_float32,
    to_int16,
    write_audio,
)
from fast_tts.errors import InvalidInputError

SR = 22050
LOSSY = ("mp3", "opus", "aac")
# Sample rate each format decodes at when the input is 22050 Hz (Opus only takes 48/24/16/12/8 kHz).
DECODED_RATE = {"wav": SR, "flac": SR, "mp3": SR, "aac": SR, "opus": 24000}
# Extra samples a decoder may return beyond the input (encoder delay + padding to a whole frame, no gapless info).
PADDING = {"wav": 0, "flac": 0, "mp3": 2 * 1152, "aac": 2 * 1024, "opus": 0}


def _signal(seconds: float = 1.5, sr: int = SR) -> np.ndarray:
    """A speech-like test signal: a gliding tone with harmonics under a syllable-rate envelope."""
    t = np.arange(int(seconds * sr)) / sr
    f0 = 140 + 60 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    tone = sum(np.sin(k * phase) / k for k in range(1, 6))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2
    return (0.25 * tone * env).astype(np.float32)


def _decode_av(data: bytes) -> tuple[np.ndarray, int]:
    """Decode with FFmpeg (PyAV) only: float32 mono samples and the decoder's rate."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        frames = [f.to_ndarray().astype(np.float32).reshape(-1) for f in container.decode(stream)]
        rate = stream.codec_context.sample_rate
    samples = np.concatenate(frames)
    if np.issubdtype(frames[0].dtype, np.integer):
        samples = samples / 32768.0
    return samples, rate


def _stream(fmt: str, audio: np.ndarray, sizes: list[int]) -> tuple[bytes, list[bytes]]:
    """Feed audio through a StreamEncoder in chunks of the given sizes (cycled); returns all bytes and each piece."""
    enc = StreamEncoder(fmt, SR)
    pieces, pos, i = [], 0, 0
    while pos < len(audio):
        n = sizes[i % len(sizes)]
        pieces.append(enc.write(audio[pos : pos + n]))
        pos, i = pos + n, i + 1
    pieces.append(enc.close())
    return b"".join(pieces), pieces


def _aligned_corr(a: np.ndarray, b: np.ndarray, max_lag: int = 4000) -> float:
    """Pearson correlation of a and b after shifting b by the lag (within max_lag) that lines them up best."""
    n = len(a) + len(b)
    xc = np.fft.irfft(np.fft.rfft(a, n) * np.conj(np.fft.rfft(b, n)), n)
    lags = np.r_[0 : max_lag + 1, n - max_lag : n]
    lag = int(lags[np.argmax(xc[lags])])
    lag = lag if lag <= max_lag else lag - n
    a2, b2 = (a[lag:], b) if lag >= 0 else (a, b[-lag:])
    m = min(len(a2), len(b2))
    return float(np.corrcoef(a2[:m], b2[:m])[0, 1])


def test_format_names_and_media_types() -> None:
    assert FORMATS == ("wav", "mp3", "opus", "aac", "flac", "pcm")
    assert MEDIA_TYPES == {
        "wav": "audio/wav",
        "mp3": "audio/mpeg",
        "opus": "audio/opus",
        "aac": "audio/aac",
        "flac": "audio/flac",
        "pcm": "audio/pcm",
    }
    assert format_from_path("a/b.MP3") == "mp3"
    assert format_from_path("x.ogg") == "opus"
    assert format_from_path("x.raw") == "pcm"
    with pytest.raises(InvalidInputError) as err:
        format_from_path("speech.xyz")
    assert err.value.field == "output" and ".wav" in str(err.value)


@pytest.mark.parametrize("bad", ["ogg", "m4a", "", "WAVE"])
def test_unknown_format_is_rejected(bad: str) -> None:
    for call in (lambda: encode(np.zeros(10, np.float32), SR, bad), lambda: StreamEncoder(bad, SR)):
        with pytest.raises(InvalidInputError) as err:
            call()
        assert err.value.field == "response_format"
        assert all(f in str(err.value) for f in FORMATS)


def test_format_name_is_case_insensitive() -> None:
    assert encode(np.zeros(4, np.int16), SR, " WAV ")[:4] == b"RIFF"


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "pcm"])
def test_encode_decodes_to_same_rate_and_duration(fmt: str) -> None:
    audio = _signal()
    data = encode(audio, SR, fmt)
    decoded, rate = read_audio(data)
    assert rate == DECODED_RATE[fmt]
    expected = round(len(audio) * rate / SR)
    assert expected <= len(decoded) <= expected + PADDING[fmt] + 2
    reference = audio if rate == SR else resample(audio, SR, rate)
    assert _aligned_corr(decoded, reference) > 0.95
    if fmt in ("wav", "flac"):
        np.testing.assert_array_equal(to_int16(decoded), to_int16(audio))
    if fmt in ("wav", "flac"):  # the other decoder agrees
        samples, av_rate = _decode_av(data)
        assert av_rate == SR and len(samples) == len(audio)


def test_pcm_is_raw_s16le() -> None:
    audio = _signal(0.2)
    data = encode(audio, SR, "pcm")
    np.testing.assert_array_equal(np.frombuffer(data, "<i2"), to_int16(audio))
    assert encode(to_int16(audio), SR, "pcm") == data


def test_wav_header_has_exact_sizes() -> None:
    audio = to_int16(_signal(0.1))
    data = encode(audio, SR, "wav")
    assert data[:4] == b"RIFF" and data[8:16] == b"WAVEfmt "
    assert int.from_bytes(data[4:8], "little") == len(data) - 8
    assert int.from_bytes(data[40:44], "little") == 2 * len(audio)
    info = sf.info(io.BytesIO(data))
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (SR, 1, len(audio), "PCM_16")


@pytest.mark.parametrize("fmt", ["wav", "flac", "pcm"])
def test_empty_audio_gives_an_empty_file(fmt: str) -> None:
    data = encode(np.zeros(0, np.float32), SR, fmt)
    if fmt == "pcm":
        assert data == b""
    else:
        decoded, rate = read_audio(data)
        assert rate == SR and decoded.size == 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_streamed_chunks_form_one_file_equal_to_whole(fmt: str) -> None:
    audio = _signal(2.0)
    whole = encode(audio, SR, fmt)
    sizes = [SR // 4, 0, 1, 3001, 777, 12000]
    streamed, _ = _stream(fmt, audio, sizes)
    if fmt == "pcm":
        assert streamed == whole
        return
    a, rate_a = _decode_av(streamed)
    b, rate_b = _decode_av(whole)
    assert rate_a == rate_b
    if fmt in ("wav", "flac"):
        np.testing.assert_array_equal(a, b)  # lossless: bit for bit
        np.testing.assert_array_equal(read_audio(streamed)[0], read_audio(whole)[0])  # libsndfile too
    else:
        assert abs(len(a) - len(b)) <= PADDING[fmt] + 2
        assert _aligned_corr(a, b) > 0.97


@pytest.mark.parametrize("fmt", FORMATS)
def test_stream_gives_first_bytes_early(fmt: str) -> None:
    audio = _signal(2.0)
    quarter = SR // 4
    _, pieces = _stream(fmt, audio, [quarter])
    if fmt in ("wav", "pcm", "flac"):
        assert pieces[0], "the first 0.25 s chunk must give bytes"
        if fmt == "wav":
            assert pieces[0][:4] == b"RIFF" and pieces[0][4:8] == b"\xff\xff\xff\xff"
    else:
        assert any(pieces[:4]), "a lossy stream must give bytes within 1 s of audio"
    assert sum(map(len, pieces[:-1])) > 0.5 * sum(map(len, pieces))  # not everything held until close


def test_stream_encoder_close_semantics() -> None:
    enc = StreamEncoder("mp3", SR)
    enc.write(_signal(0.3))
    assert enc.close()
    assert enc.close() == b""
    with pytest.raises(ValueError):
        enc.write(np.zeros(10, np.float32))
    with StreamEncoder("wav", SR) as enc2:
        head = enc2.write(np.zeros(0, np.int16))
    assert head[:4] == b"RIFF"


def test_stream_encoder_is_thread_safe_per_instance() -> None:
    enc = StreamEncoder("wav", SR)
    chunk_len, per_thread = 257, 20
    first = [enc.write(np.zeros(0, np.int16))]  # header
    results: list[bytes] = []
    lock = threading.Lock()

    def producer(value: int) -> None:
        for _ in range(per_thread):
            out = enc.write(np.full(chunk_len, value, np.int16))
            with lock:
                results.append(out)

    threads = [threading.Thread(target=producer, args=(v,)) for v in (100, 200, 300, 400)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    decoded = to_int16(read_audio(b"".join(first + results) + enc.close())[0])
    assert len(decoded) == 4 * per_thread * chunk_len
    blocks = decoded.reshape(-1, chunk_len)
    assert all(len(set(block.tolist())) == 1 for block in blocks)  # each chunk landed whole, never interleaved


def test_separate_encoders_in_threads_match_serial() -> None:
    audio = _signal(1.0)
    serial = _stream("mp3", audio, [4096])[0]
    out: list[bytes] = [b""] * 3

    def job(i: int) -> None:
        out[i] = _stream("mp3", audio, [4096])[0]

    threads = [threading.Thread(target=job, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == [serial] * 3


def test_write_audio_and_errors(tmp_path) -> None:
    audio = _signal(0.5)
    path = write_audio(audio, tmp_path / "speech.flac", SR)
    decoded, rate = read_audio(path)
    assert rate == SR
    np.testing.assert_array_equal(to_int16(decoded), to_int16(audio))
    forced = write_audio(audio, tmp_path / "speech.bin", SR, fmt="mp3")
    assert read_audio(forced)[1] == SR
    with pytest.raises(InvalidInputError) as err:
        write_audio(audio, tmp_path / "no" / "such" / "dir.wav", SR)
    assert err.value.field == "output" and "No such file" in str(err.value)
    with pytest.raises(InvalidInputError) as err:
        write_audio(audio, tmp_path, SR, fmt="wav")  # a directory
    assert err.value.field == "output"
    with pytest.raises(InvalidInputError):
        write_audio(audio, tmp_path / "speech.xyz", SR)


def test_read_audio_downmixes_and_resamples(tmp_path) -> None:
    mono = _signal(0.5)
    stereo = np.stack([mono, np.zeros_like(mono)], axis=1)
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, SR, subtype="FLOAT")
    decoded, rate = read_audio(str(path))
    assert decoded.dtype == np.float32 and decoded.ndim == 1 and rate == SR
    np.testing.assert_allclose(decoded, mono / 2, atol=1e-7)
    resampled, rate = read_audio(path.read_bytes(), target_sr=16000)
    assert rate == 16000 and abs(len(resampled) - len(mono) * 16000 / SR) <= 1


def test_read_audio_falls_back_to_pyav_for_aac() -> None:
    audio = _signal(1.0)
    data = encode(audio, SR, "aac")
    with pytest.raises(sf.LibsndfileError):
        sf.read(io.BytesIO(data))  # libsndfile cannot read ADTS: this exercises the PyAV path
    decoded, rate = read_audio(data)
    assert rate == SR and _aligned_corr(decoded, audio) > 0.95


def test_read_audio_reads_stereo_m4a_through_pyav() -> None:
    audio = _signal(1.0)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=SR)
        stream.layout = "stereo"
        frame = av.AudioFrame.from_ndarray(np.stack([audio, np.zeros_like(audio)]), format="fltp", layout="stereo")
        frame.sample_rate = SR
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    decoded, rate = read_audio(buf.getvalue(), target_sr=16000)
    assert rate == 16000 and decoded.ndim == 1
    reference = resample(audio, SR, 16000) / 2  # left + silent right, averaged
    assert _aligned_corr(decoded, reference) > 0.95
    assert 0.8 < np.std(decoded) / np.std(reference) < 1.2


@pytest.mark.parametrize(
    "source, needle",
    [
        (b"", "empty"),
        (b"this is plainly some text, not audio at all" * 10, "could not decode"),
        (np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes(), "could not decode"),
        ("/no/such/file.wav", "not found"),
    ],
)
def test_read_audio_rejects_non_audio(source, needle: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        read_audio(source)
    assert err.value.field == "audio" and needle in str(err.value)


def test_read_audio_rejects_empty_file(tmp_path) -> None:
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(InvalidInputError, match="empty"):
        read_audio(tmp_path / "empty.wav")


@pytest.mark.parametrize("sr_in, sr_out", [(22050, 24000), (24000, 16000), (44100, 22050)])
def test_resample_keeps_length_and_pitch(sr_in: int, sr_out: int) -> None:
    t = np.arange(sr_in) / sr_in
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    out = resample(tone, sr_in, sr_out)
    assert out.dtype == np.float32 and abs(len(out) - sr_out) <= 1
    spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out))))
    peak_hz = np.argmax(spectrum) * sr_out / len(out)
    assert abs(peak_hz - 1000) < 2
    as_int = resample(to_int16(tone), sr_in, sr_out)
    assert as_int.dtype == np.int16 and len(as_int) == len(out)
    same = resample(tone, sr_in, sr_in)
    np.testing.assert_array_equal(same, tone)
    with pytest.raises(InvalidInputError):
        resample(tone, 0, sr_out)


def test_int16_float_conversions() -> None:
    every = np.arange(-32768, 32768, dtype=np.int16)
    np.testing.assert_array_equal(to_int16(to_float32(every)), every)  # lossless round trip
    assert to_float32(np.array([-32768], np.int16))[0] == -1.0
    clipped = to_int16(np.array([1.5, 1.0, -1.0, -2.0, np.nan], np.float32))
    assert clipped.tolist() == [32767, 32767, -32768, -32768, 0]
    # rounding: half to even on the 32768 scale
    assert to_int16(np.array([0.5, 1.5, 2.5], np.float64) / 32768).tolist() == [0, 2, 2]
    assert to_float32(np.zeros((1, 5), np.float64)).shape == (5,)
    with pytest.raises(InvalidInputError):
        to_float32(np.zeros((2, 5), np.float32))


def test_crossfade_join_basics() -> None:
    assert crossfade_join([], SR).size == 0
    seg = _signal(0.3)
    assert crossfade_join([seg], SR) is seg
    fade = int(0.05 * SR)
    ones = [np.ones(2000, np.float32), np.ones(3000, np.float32)]
    for window in ("hann", "linear"):  # amplitude-complementary: a constant stays constant
        joined = crossfade_join(ones, SR, 0.05, window)
        assert len(joined) == 5000 - fade
        np.testing.assert_allclose(joined, 1.0, atol=1e-6)
    a, b = np.ones(2000, np.float32), -np.ones(2000, np.float32)
    joined = crossfade_join([a, b], SR, 0.05, "equal_power")
    assert joined[2000 - fade - 1] == 1.0 and joined[2000] == -1.0
    assert np.all(np.diff(joined[2000 - fade - 1 : 2001]) <= 0)  # a smooth monotone ramp, no click
    np.testing.assert_array_equal(crossfade_join([a, b], SR, 0.0), np.concatenate([a, b]))


def test_crossfade_overlap_is_clipped_to_short_neighbours() -> None:
    fade = int(0.05 * SR)  # 1102 samples
    segs = [np.ones(3000, np.float32), np.full(300, 0.5, np.float32), np.ones(3000, np.float32)]
    joined = crossfade_join(segs, SR, 0.05)
    # the 300-sample middle segment overlaps its left neighbour fully and leaves nothing for the right one
    assert len(joined) == 3000 + 300 + 3000 - 300 - 0
    assert fade > 300
    ints = crossfade_join([to_int16(s) for s in segs], SR, 0.05)
    assert ints.dtype == np.int16 and len(ints) == len(joined)


@pytest.mark.parametrize("window", ["hann", "equal_power", "hanning"])
@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_a_stream_of_one_chunk_segments_equals_crossfade_join(window: str, dtype) -> None:
    rng = np.random.default_rng(1)
    lengths = [5000, 300, 0, 1102, 1, 8000, 40, 2500]
    chunks = [rng.uniform(-0.8, 0.8, n).astype(np.float32) for n in lengths]
    if dtype == np.int16:
        chunks = [to_int16(c) for c in chunks]
    fader = Crossfader(SR, 0.05, window)
    outputs = []
    for c in chunks:
        outputs += [fader.push(c), fader.end_segment()]
    streamed = np.concatenate(outputs + [fader.flush()])
    expected = crossfade_join(chunks, SR, 0.05, window)
    assert streamed.dtype == expected.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(streamed, expected)
    assert len(outputs[0]) == 5000 - int(0.05 * SR)  # the first chunk goes out at once, less its tail
    assert fader.flush().size == 0


@pytest.mark.parametrize("sizes", [[1], [7, 2000], [1102, 1], [3000]])
def test_segments_in_chunks_join_as_whole_segments(sizes: list[int]) -> None:
    """However a segment's audio is cut into chunks, the joined stream is the join of the whole segments."""
    rng = np.random.default_rng(2)
    segments = [rng.uniform(-0.8, 0.8, n).astype(np.float32) for n in (4000, 700, 3000, 20, 2500)]
    fader = Crossfader(SR, 0.05)
    out = []
    for seg in segments:
        pos = 0
        while pos < len(seg):
            for size in sizes:
                out.append(fader.push(seg[pos : pos + size]))
                pos += size
        out.append(fader.end_segment())
    out.append(fader.flush())
    np.testing.assert_allclose(np.concatenate(out), crossfade_join(segments, SR, 0.05), atol=1e-6)


def test_join_rule_of_the_megatts3_reference() -> None:
    """float64 halves of np.hanning(2w) at each seam, then x * 32767 cut toward zero: the reference's combine."""
    rule = JoinRule(0.01, "hanning", np.float64, int16_scale=32767.0, int16_truncate=True)
    w = int(0.01 * SR)
    a, b = np.linspace(-0.9, 0.9, 2000), np.linspace(0.9, -0.9, 3000)
    win = np.hanning(2 * w)
    want = np.concatenate([a[:-w], a[-w:] * win[w:] + b[:w] * win[:w], b[w:]])
    got = rule.join([a, b], SR)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(rule.int16(got), (want * 32767).astype(np.int16))


def test_crossfade_rejects_bad_window() -> None:
    with pytest.raises(InvalidInputError):
        crossfade_join([np.zeros(10), np.zeros(10)], SR, window="kaiser")
    with pytest.raises(InvalidInputError):
        Crossfader(SR, fade_s=-1)


def test_stream_encoder_validates_and_sanitises() -> None:
    assert StreamEncoder("opus", SR).media_type == "audio/opus"
    with pytest.raises(InvalidInputError) as err:
        StreamEncoder("mp3", 0)
    assert err.value.field == "sample_rate"
    with pytest.raises(InvalidInputError) as err:
        encode(np.zeros(10, np.float32), SR, "mp3", bitrate=-5)
    assert err.value.field == "bitrate"
    with pytest.raises(InvalidInputError):
        encode(np.zeros((2, 100), np.float32), SR, "wav")  # stereo is not mono
    wild = _signal(1.0) * 3
    wild[::50] = np.nan
    for fmt in LOSSY:
        decoded, _ = read_audio(encode(wild, SR, fmt))
        assert np.all(np.isfinite(decoded)) and np.max(np.abs(decoded)) < 1.5


def test_crossfader_promotes_to_float_after_float_start() -> None:
    chunks = [np.full(3000, 0.25, np.float32), np.full(3000, 8192, np.int16)]
    fader = Crossfader(SR, 0.05)
    streamed = np.concatenate([x for c in chunks for x in (fader.push(c), fader.end_segment())] + [fader.flush()])
    np.testing.assert_array_equal(streamed, crossfade_join(chunks, SR, 0.05))
    np.testing.assert_allclose(streamed, 0.25, atol=1e-6)
    fader.push(np.zeros(10, np.int16))  # after flush a new stream starts, here in int16
    with pytest.raises(InvalidInputError):
        fader.push(np.zeros(10, np.float32))
