"""Vocos vocoder (ConvNeXt backbone + ISTFT head on `torch.istft`): mel (B, 100, F) -> 24 kHz wav."""

from __future__ import annotations

import torch
from torch import nn

from fast_tts.models.chattts.blocks import ConvNeXtBlock, masked
from fast_tts.models.chattts.config import VocosConfig
from fast_tts.models.chattts.mel import MelSpectrogramFeatures


class _Backbone(nn.Module):
    def __init__(self, cfg: VocosConfig) -> None:
        super().__init__()
        self.embed = nn.Conv1d(cfg.n_mels, cfg.dim, 7, padding=3)
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.convnext = nn.ModuleList(
            ConvNeXtBlock(cfg.dim, cfg.intermediate_dim, kernel=7, dilation=1, scale_name="gamma")
            for _ in range(cfg.num_layers)
        )
        self.final_layer_norm = nn.LayerNorm(cfg.dim, eps=1e-6)

    def forward(self, mel: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.norm(self.embed(masked(mel, mask)).transpose(1, 2)).transpose(1, 2)
        for block in self.convnext:
            x = block(x, mask)
        return self.final_layer_norm(x.transpose(1, 2))  # (B, F, dim)


class _ISTFT(nn.Module):
    def __init__(self, n_fft: int) -> None:
        super().__init__()
        self.register_buffer("window", torch.hann_window(n_fft))


class _Head(nn.Module):
    def __init__(self, cfg: VocosConfig) -> None:
        super().__init__()
        self.n_fft, self.hop_length = cfg.n_fft, cfg.hop_length
        self.out = nn.Linear(cfg.dim, cfg.n_fft + 2)
        self.istft = _ISTFT(cfg.n_fft)

    def spectrum(self, x: torch.Tensor) -> torch.Tensor:
        """Complex STFT (B, n_fft/2+1, F) from backbone features (B, F, dim): magnitude exp-clipped at 100."""
        mag, phase = self.out(x).transpose(1, 2).chunk(2, dim=1)
        mag = torch.clip(torch.exp(mag), max=1e2)
        return mag * (torch.cos(phase) + 1j * torch.sin(phase))

    def to_wav(self, spec: torch.Tensor) -> torch.Tensor:
        """Centred inverse STFT: F frames -> (F - 1) * hop samples."""
        return torch.istft(spec, self.n_fft, self.hop_length, self.n_fft, self.istft.window, center=True)


class Vocos(nn.Module):
    """Checkpoint names follow `asset/Vocos.safetensors` (`feature_extractor` is kept for a strict load)."""

    def __init__(self, cfg: VocosConfig) -> None:
        super().__init__()
        self.feature_extractor = MelSpectrogramFeatures(cfg.n_fft, cfg.hop_length, cfg.n_mels)
        self.backbone = _Backbone(cfg)
        self.head = _Head(cfg)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Wavs (B, (F - 1) * hop) for a mel batch (B, 100, F) whose rows all have F valid frames."""
        return self.head.to_wav(self.head.spectrum(self.backbone(mel, None)))

    def decode(self, mel: torch.Tensor) -> torch.Tensor:
        """Wavs (B, (F - 1) * hop) of a mel batch (B, 100, F) (the reference's `chat.vocos.decode`)."""
        return self.forward(mel)

    def decode_packed(self, mel: torch.Tensor, mask: torch.Tensor, spans: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Wavs of rows packed along time in mel (1, 100, F): row i is frames [start, start + n) of `spans`, `mask`
        (1, 1, F) is 1 on row frames; (n - 1) * hop samples each, as if decoded alone (the gaps between rows must
        be at least as wide as the convolutions reach: 3 frames here)."""
        spec = self.head.spectrum(self.backbone(mel, mask))
        return [self.head.to_wav(spec[:, :, s : s + n])[0] if n > 1 else mel.new_zeros(0) for s, n in spans]
