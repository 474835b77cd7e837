"""MegaTTS3 reference front end: reading a reference (wav and WaveVAE latent), prompt padding, loudness, 24 -> 16 kHz,
and the Whisper-style log-mel (own filterbank)."""

from __future__ import annotations

import io
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fast_tts.audio import read_audio
from fast_tts.errors import InvalidInputError

SAMPLE_RATE = 24000
WHISPER_SR = 16000
N_FFT, HOP, N_MELS = 400, 160, 80
TAIL_PAD = 12000  # 0.5 s of silence appended to every prompt


def read_reference(reference_audio: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """A reference's 24 kHz float32 wav and its WaveVAE latent (None when not given), from reference 004's
    (wav, npy latent) pair or a bare wav: the wav a path or bytes, the latent a .npy path, bytes or an array."""
    if isinstance(reference_audio, (tuple, list)):
        if len(reference_audio) != 2:
            raise InvalidInputError("reference_audio must be (wav, npy latent)", field="reference_audio")
        wav_source, latent_source = reference_audio
    else:
        wav_source, latent_source = reference_audio, None
    wav, _ = read_audio(wav_source, target_sr=SAMPLE_RATE)
    return np.asarray(wav, dtype=np.float32), None if latent_source is None else read_latent(latent_source)


def read_latent(source: Any) -> np.ndarray:
    """A .npy latent from a path, bytes or an array."""
    if isinstance(source, np.ndarray):
        return source.astype(np.float32)
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            arr = np.load(io.BytesIO(bytes(source)), allow_pickle=False)
        else:
            arr = np.load(Path(source), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"cannot read the reference latent (.npy): {exc}", field="reference_audio") from exc
    return np.asarray(arr, dtype=np.float32)


def pad_prompt(wav: np.ndarray, win_size: int = 960) -> np.ndarray:
    """Zero-pad to length = win_size-1 (mod win_size) when short of it, then append 0.5 s of zeros (upstream rule)."""
    wav = np.asarray(wav, dtype=np.float32)
    rem = len(wav) % win_size
    if rem < win_size - 1:
        wav = np.pad(wav, (0, win_size - 1 - rem))
    return np.pad(wav, (0, TAIL_PAD)).astype(np.float32)


def loudness(wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """ITU-R BS.1770 integrated loudness (LUFS) via pyloudnorm, measured in float64."""
    import pyloudnorm

    return float(pyloudnorm.Meter(sample_rate).integrated_loudness(np.asarray(wav, dtype=np.float64)))


def to_16k(wav: np.ndarray, sr_in: int = SAMPLE_RATE) -> np.ndarray:
    """Resample to 16 kHz with soxr HQ, length ceil(n*16000/sr_in) (what librosa's soxr_hq path returns)."""
    import soxr

    wav = np.asarray(wav, dtype=np.float32)
    out = soxr.resample(wav, sr_in, WHISPER_SR, quality="HQ").astype(np.float32)
    n = math.ceil(len(wav) * WHISPER_SR / sr_in)
    if len(out) < n:
        out = np.pad(out, (0, n - len(out)))
    return out[:n]


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, f / f_sp)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    """Inverse of `_hz_to_mel`."""
    m = np.asarray(m, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@lru_cache(maxsize=4)
def mel_filters(sample_rate: int = WHISPER_SR, n_fft: int = N_FFT, n_mels: int = N_MELS) -> torch.Tensor:
    """Slaney-scale, Slaney-normalised triangular filterbank (n_mels, 1 + n_fft//2), float32, fmin 0, fmax sr/2."""
    fft_freqs = np.linspace(0, sample_rate / 2, 1 + n_fft // 2)
    mel_pts = np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), n_mels + 2)
    hz_pts = _mel_to_hz(mel_pts)
    widths = np.diff(hz_pts)
    ramps = hz_pts[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (hz_pts[2:] - hz_pts[:-2]))[:, None]
    return torch.from_numpy(weights.astype(np.float32))


def log_mel(wav_16k: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Whisper log-mel (80, frames): |STFT|^2 (hann 400, hop 160, last frame dropped), log10, floor max-8, (x+4)/4."""
    audio = torch.as_tensor(np.asarray(wav_16k, dtype=np.float32))
    window = torch.hann_window(N_FFT)
    spec = torch.stft(audio, N_FFT, HOP, window=window, return_complex=True)
    power = spec[..., :-1].abs() ** 2
    mel = mel_filters() @ power
    logm = torch.clamp(mel, min=1e-10).log10()
    logm = torch.maximum(logm, logm.max() - 8.0)
    return (logm + 4.0) / 4.0


def prompt_mel(wav_24k_padded: np.ndarray, frames_multiple: int = 8) -> tuple[np.ndarray, torch.Tensor]:
    """16 kHz audio and its log-mel (1, 80, T) truncated to a multiple of `frames_multiple` frames."""
    wav16 = to_16k(wav_24k_padded)
    mel = log_mel(wav16)
    t = mel.shape[-1] // frames_multiple * frames_multiple
    return wav16, mel[None, :, :t]
