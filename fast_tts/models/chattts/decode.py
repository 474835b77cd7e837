"""Batched decoding of generated rows to audio with per-row lengths (no padding frame reaches any row's audio)."""

from __future__ import annotations

import torch

from fast_tts.models.chattts.loader import ChatTTSModels

HOP = 256


def pad_rows(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (T_b, C) -> zero-padded batch (B, C, T_max) and lengths (B,)."""
    lengths = torch.tensor([r.shape[0] for r in rows], dtype=torch.long)
    width = int(lengths.max()) if len(rows) else 0
    batch = rows[0].new_zeros(len(rows), rows[0].shape[1], width)
    for b, r in enumerate(rows):
        batch[b, :, : r.shape[0]] = r.t()
    return batch, lengths


def wav_length(tokens: int) -> int:
    """Samples of a row of `tokens` GPT steps: 2 mel frames per step, centred ISTFT -> (2T - 1) * 256 (0 for T = 0)."""
    return max(2 * tokens - 1, 0) * HOP


@torch.inference_mode()
def rows_to_mel(models: ChatTTSModels, rows: list[torch.Tensor], use_decoder: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Mel (B, 100, 2 T_max) and frame counts (B,) for hidden rows (T, H) (use_decoder) or code rows (T, 4)."""
    device = models.vocos.head.out.weight.device
    if use_decoder:
        batch, lengths = pad_rows([r.to(device, torch.float32) for r in rows])
        mel = models.decoder(batch, lengths.to(device))
    else:
        batch, lengths = pad_rows([r.to(device, torch.long) for r in rows])
        mel = models.dvae(batch, lengths=lengths.to(device))
    return mel, 2 * lengths.to(device)


@torch.inference_mode()
def decode_rows(models: ChatTTSModels, rows: list[torch.Tensor], use_decoder: bool = True) -> list[torch.Tensor]:
    """One float32 wav of `wav_length(T_b)` samples per row, each equal to decoding that row alone."""
    keep = [i for i, r in enumerate(rows) if r.shape[0] > 0]
    out = [torch.zeros(0) for _ in rows]
    if keep:
        mel, frames = rows_to_mel(models, [rows[i] for i in keep], use_decoder)
        for i, wav in zip(keep, models.vocos.decode_rows(mel, frames)):
            out[i] = wav
    return out
