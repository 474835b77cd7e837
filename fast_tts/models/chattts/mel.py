"""Mel front end of ChatTTS (torchaudio-compatible, on `torch.stft`), plus the HTK filterbank the checkpoints store."""

from __future__ import annotations

import math

import torch
from torch import nn


def htk_mel_filterbank(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int) -> torch.Tensor:
    """Triangular HTK-scale filterbank (n_freqs, n_mels), unnormalised: what ChatTTS checkpoints store as `fb`."""
    freqs = torch.linspace(0, sample_rate // 2, n_freqs)
    mel_lo = 2595.0 * math.log10(1.0 + f_min / 700.0)
    mel_hi = 2595.0 * math.log10(1.0 + f_max / 700.0)
    mel_pts = torch.linspace(mel_lo, mel_hi, n_mels + 2)
    hz_pts = 700.0 * (10.0 ** (mel_pts / 2595.0) - 1.0)
    widths = hz_pts[1:] - hz_pts[:-1]
    dist = hz_pts.unsqueeze(0) - freqs.unsqueeze(1)  # (n_freqs, n_mels + 2)
    rising = (-1.0 * dist[:, :-2]) / widths[:-1]
    falling = dist[:, 2:] / widths[1:]
    return torch.max(torch.zeros(1), torch.min(rising, falling))


class _Spectrogram(nn.Module):
    """Holds the analysis window under the checkpoint name `window`."""

    def __init__(self, n_fft: int) -> None:
        super().__init__()
        self.register_buffer("window", torch.hann_window(n_fft))


class _MelScale(nn.Module):
    """Holds the filterbank under the checkpoint name `fb`."""

    def __init__(self, n_freqs: int, n_mels: int) -> None:
        super().__init__()
        self.register_buffer("fb", torch.zeros(n_freqs, n_mels))


class _MelSpec(nn.Module):
    """Magnitude (power 1) mel spectrogram: centred STFT with reflect padding, then the stored filterbank."""

    def __init__(self, n_fft: int, hop_length: int, n_mels: int) -> None:
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        self.spectrogram = _Spectrogram(n_fft)
        self.mel_scale = _MelScale(n_fft // 2 + 1, n_mels)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        shape = wav.shape
        spec = torch.stft(
            wav.reshape(-1, shape[-1]),
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.n_fft,
            window=self.spectrogram.window,
            center=True,
            pad_mode="reflect",
            normalized=False,
            onesided=True,
            return_complex=True,
        ).abs()
        spec = spec.reshape(shape[:-1] + spec.shape[-2:])
        return torch.matmul(spec.transpose(-1, -2), self.mel_scale.fb).transpose(-1, -2)


class MelSpectrogramFeatures(nn.Module):
    """log(clamp(mel, 1e-5)) of a 24 kHz waveform (..., samples) -> (..., n_mels, frames)."""

    def __init__(self, n_fft: int = 1024, hop_length: int = 256, n_mels: int = 100) -> None:
        super().__init__()
        self.mel_spec = _MelSpec(n_fft, hop_length, n_mels)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.clip(self.mel_spec(wav), min=1e-5))
