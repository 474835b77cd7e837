"""Batched decoding of generated rows to audio with per-row lengths (no padding frame reaches any row's audio).

Rows of one length run as a batch. Uneven rows are packed along time into one sequence with a few zero frames
between them, and the zero frames are masked before every convolution, so each row computes what it computes alone
while the batch costs the sum of the lengths instead of rows x the longest (a third less work for lengths spread
evenly up to twice the shortest); the padded layout `rows_to_mel` returns is for inspection.
"""

from __future__ import annotations

import torch

from fast_tts.models.chattts.loader import ChatTTSModels

HOP = 256
GAP_TOKENS = 3  # zero tokens (6 mel frames) between packed rows: as wide as the widest convolution reaches (6 frames)


def wav_length(tokens: int) -> int:
    """Samples of a row of `tokens` GPT steps: 2 mel frames per step, centred ISTFT -> (2T - 1) * 256 (0 for T = 0)."""
    return max(2 * tokens - 1, 0) * HOP


def pack_rows(rows: list[torch.Tensor], gap: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Rows (T_b, C) -> one sequence (1, C, sum T_b + gap * (B - 1)) with `gap` zero steps between rows, and each
    row's (start, length)."""
    spans, start = [], 0
    for r in rows:
        spans.append((start, r.shape[0]))
        start += r.shape[0] + gap
    packed = rows[0].new_zeros(1, rows[0].shape[1], start - gap)
    for r, (s, n) in zip(rows, spans):
        packed[0, :, s : s + n] = r.t()
    return packed, spans


def decode_device(models: ChatTTSModels) -> torch.device:
    """Where the audio decoders run (their linears may be prepacked ones, without a `weight`)."""
    return next(models.vocos.parameters()).device


@torch.inference_mode()
def packed_mel(models: ChatTTSModels, rows: list[torch.Tensor], use_decoder: bool
               ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """Mel (1, 100, F) of non-empty rows packed along time, its frame mask (1, 1, F) and each row's frame span, for
    hidden rows (T, H) (use_decoder) or code rows (T, 4)."""
    device = decode_device(models)
    dtype = torch.float32 if use_decoder else torch.long
    packed, spans = pack_rows([r.to(device, dtype) for r in rows], GAP_TOKENS)
    frame_spans = [(2 * s, 2 * n) for s, n in spans]
    mask = torch.zeros(1, 1, 2 * packed.shape[-1], device=device)
    for s, n in frame_spans:
        mask[..., s : s + n] = 1
    mel = models.decoder(packed, mask=mask) if use_decoder else models.dvae(packed, mask=mask)
    return mel, mask, frame_spans


@torch.inference_mode()
def rows_to_mel(models: ChatTTSModels, rows: list[torch.Tensor],
                use_decoder: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Mel (B, 100, 2 T_max), zero past each row's end, and frame counts (B,) (rows must be non-empty)."""
    mel, _, spans = packed_mel(models, rows, use_decoder)
    out = mel.new_zeros(len(rows), mel.shape[1], max(n for _, n in spans))
    for b, (s, n) in enumerate(spans):
        out[b, :, :n] = mel[0, :, s : s + n]
    return out, torch.tensor([n for _, n in spans], device=mel.device)


@torch.inference_mode()
def decode_rows(models: ChatTTSModels, rows: list[torch.Tensor], use_decoder: bool = True) -> list[torch.Tensor]:
    """One float32 wav of `wav_length(T_b)` samples per row, each equal to decoding that row alone."""
    keep = [i for i, r in enumerate(rows) if r.shape[0] > 0]
    out = [torch.zeros(0) for _ in rows]
    if len({rows[i].shape[0] for i in keep}) == 1 and rows[keep[0]].shape[0] > 1:
        device = decode_device(models)
        batch = torch.stack([rows[i].t() for i in keep]).to(device, torch.float32 if use_decoder else torch.long)
        mel = models.decoder(batch) if use_decoder else models.dvae(batch)
        for i, wav in zip(keep, models.vocos(mel)):
            out[i] = wav
    elif keep:
        mel, mask, spans = packed_mel(models, [rows[i] for i in keep], use_decoder)
        for i, wav in zip(keep, models.vocos.decode_packed(mel, mask.to(mel.dtype), spans)):
            out[i] = wav
    return out
