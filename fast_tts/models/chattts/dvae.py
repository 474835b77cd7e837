"""The DVAE (codes <-> mel, `asset/DVAE.safetensors`) and the GPT-hidden decoder (`asset/Decoder.safetensors`)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fast_tts.errors import InvalidInputError
from fast_tts.models.chattts.blocks import ConvStack, double_frames, length_mask, masked
from fast_tts.models.chattts.config import ConvStackConfig, DVAEConfig
from fast_tts.models.chattts.mel import MelSpectrogramFeatures
from fast_tts.models.chattts.quantizer import GFSQ

N_MELS = 100
MIN_SAMPLES = 512  # the centred STFT reflect-pads n_fft / 2 samples, so shorter input cannot be analysed


def _stack(cfg: ConvStackConfig) -> ConvStack:
    return ConvStack(cfg.idim, cfg.odim, cfg.hidden, cfg.n_layer, cfg.bn_dim)


def _frame_mask(lengths: torch.Tensor | None, steps: int, dtype: torch.dtype) -> torch.Tensor | None:
    """Mask over the doubled frames (2 mel frames per token) for per-row token lengths."""
    if lengths is None or bool((lengths == steps).all()):
        return None
    return length_mask(lengths * 2, 2 * steps, dtype)


class MelDecoder(nn.Module):
    """GPT hidden states (B, H, T) -> Vocos mel (B, 100, 2T): frame doubling, conv decoder, out_conv, times coef."""

    def __init__(self, cfg: ConvStackConfig) -> None:
        super().__init__()
        self.register_buffer("coef", torch.ones(1, N_MELS, 1))
        self.decoder = _stack(cfg)
        self.out_conv = nn.Conv1d(cfg.idim, N_MELS, 3, 1, 1, bias=False)

    def forward(self, hiddens: torch.Tensor, lengths: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """`lengths` (B,) in tokens keeps padding tokens out of each row's frames (they come back as zeros); or give
        the frame `mask` (B, 1, 2T) itself (rows packed along time, see decode.py)."""
        mask = mask if mask is not None else _frame_mask(lengths, hiddens.shape[-1], hiddens.dtype)
        y = self.decoder(double_frames(hiddens), mask)
        return masked(self.out_conv(masked(y, mask)) * self.coef, mask)


class DVAE(nn.Module):
    """Discrete VAE: codes (B, 4, T) -> mel (B, 100, 2T) (`decode`), 24 kHz wav -> codes (`encode`)."""

    def __init__(self, cfg: DVAEConfig) -> None:
        super().__init__()
        self.register_buffer("coef", torch.ones(1, N_MELS, 1))
        width = cfg.encoder.idim
        self.downsample_conv = nn.Sequential(
            nn.Conv1d(N_MELS, width, 3, 1, 1), nn.GELU(), nn.Conv1d(width, width, 4, 2, 1), nn.GELU()
        )
        self.preprocessor_mel = MelSpectrogramFeatures(1024, 256, N_MELS)
        self.encoder = _stack(cfg.encoder)
        self.decoder = _stack(cfg.decoder)
        self.out_conv = nn.Conv1d(cfg.decoder.idim, N_MELS, 3, 1, 1, bias=False)
        self.vq_layer = GFSQ(cfg.vq_dim, cfg.levels, cfg.groups, cfg.residuals, cfg.residual_scale_base)

    def forward(self, inp: torch.Tensor, mode: str = "decode", lengths: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """mode "decode": mel (B, 100, 2T) for codes (B, 4, T), `lengths` (B,) in tokens or the frame `mask` as for
        `MelDecoder`; mode "encode": codes (B, 4, T) of a wav, as `encode` (the reference's call convention)."""
        if mode == "encode":
            return self.encode(inp)
        if mode != "decode":
            raise InvalidInputError(f"mode must be 'encode' or 'decode', got {mode!r}", field="mode")
        codes = inp
        mask = mask if mask is not None else _frame_mask(lengths, codes.shape[-1], self.coef.dtype)
        feats = double_frames(self.vq_layer.decode(codes))
        y = self.decoder(feats, mask)
        return masked(self.out_conv(masked(y, mask)) * self.coef, mask)

    def log_mel(self, wav: torch.Tensor) -> torch.Tensor:
        """log-mel (..., 100, frames) of a 24 kHz wav (..., samples), before the division by coef."""
        return self.preprocessor_mel(wav)

    def encoder_features(self, wav: torch.Tensor) -> torch.Tensor:
        """Encoder output (B, vq_dim, T) for a wav (samples,) or (B, samples): log-mel / coef, downsample, encoder."""
        if wav.dim() not in (1, 2):
            raise InvalidInputError(f"wav must be 1-D (samples) or 2-D (batch, samples), got shape {tuple(wav.shape)}",
                                    field="wav")
        if wav.shape[-1] <= MIN_SAMPLES:
            raise InvalidInputError(f"wav too short: {wav.shape[-1]} samples, need more than {MIN_SAMPLES}",
                                    field="wav")
        mel = self.log_mel(wav if wav.dim() == 2 else wav[None])
        x = self.downsample_conv(mel / self.coef)
        return self.encoder(x)

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """Code indices (B, 4, T) for a 24 kHz wav (samples,) or (B, samples)."""
        return self.vq_layer.encode(self.encoder_features(wav))

    @torch.inference_mode()
    def sample_audio(self, wav: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Codes (4, T) of one 1-D 24 kHz wav (what the reference's `chat.dvae.sample_audio` returns)."""
        tensor = wav if isinstance(wav, torch.Tensor) else torch.as_tensor(np.asarray(wav, dtype=np.float32))
        if tensor.dim() != 1:
            raise InvalidInputError(f"wav must be 1-D (samples), got shape {tuple(tensor.shape)}", field="wav")
        return self.encode(tensor.float())[0]
