"""MegaTTS3 phone/tone ids: the merged-id code shared by the G2P and the aligner, and the aligner stream split."""

from __future__ import annotations

import torch

PAD, EOS, UNK = 0, 1, 2
SIL = 145
ZH_FIRST, ZH_LAST = 3, 100  # Chinese phones in the phone dictionary
MERGED_FIRST, MERGED_LAST = 200, 788  # merged Chinese phone+tone ids
EN_TONE = 3
TONE_IDS = (4, 11, 12, 13, 14, 15)  # tone dictionary ids of Mandarin tones 1..6
ALIGN_BOS, ALIGN_EOS, ALIGN_TIME0 = 798, 799, 800
LONG_PAUSE = (148, 153, 166, 145)  # 。 ！ ？ sil: at least 64 frames
SHORT_PAUSE = (163, 165)  # ， ；: at least 32 frames


def split_merged(merged: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode merged ids into (phone, tone); ids outside 200..788 pass through with tone 3 (floor division as
    upstream)."""
    merged = torch.as_tensor(merged, dtype=torch.long)
    is_zh = (merged >= MERGED_FIRST) & (merged <= MERGED_LAST)
    rel = merged - MERGED_FIRST - 1
    k = torch.remainder(rel, 6) + 1
    zh_tone = torch.where(k == 1, torch.full_like(k, TONE_IDS[0]), k + 9)
    phone = torch.where(is_zh, torch.div(rel, 6, rounding_mode="floor") + ZH_FIRST, merged)
    tone = torch.where(is_zh, zh_tone, torch.full_like(merged, EN_TONE))
    return phone, tone


def merge(phone: torch.Tensor, tone: torch.Tensor, pad_bos_eos: bool = True) -> torch.Tensor:
    """Encode (phone, tone) into merged ids; Chinese phones take 200 + (ph-3)*6 + k; optional 798 ... 799 framing."""
    phone = torch.as_tensor(phone, dtype=torch.long)
    tone = torch.as_tensor(tone, dtype=torch.long)
    k = tone.clone()
    for i, tid in enumerate(TONE_IDS):
        k[tone == tid] = i + 1
    is_zh = (phone >= ZH_FIRST) & (phone <= ZH_LAST)
    merged = torch.where(is_zh, (phone - ZH_FIRST) * 6 + MERGED_FIRST + k, phone)
    if pad_bos_eos:
        bos = merged.new_full(merged.shape[:-1] + (1,), ALIGN_BOS)
        eos = merged.new_full(merged.shape[:-1] + (1,), ALIGN_EOS)
        merged = torch.cat([bos, merged, eos], dim=-1)
    return merged


def split_stream(stream: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split an aligner stream `[merged, 800+end, merged, 800+end, ...]` into phones, tones and frame durations."""
    stream = torch.as_tensor(stream, dtype=torch.long).flatten()
    if stream.numel() % 2:
        raise ValueError(f"aligner stream has odd length {stream.numel()}; expected phone/end-frame pairs")
    stream = torch.where(stream >= ALIGN_TIME0, stream - ALIGN_TIME0, stream)
    phone, tone = split_merged(stream[0::2])
    ends = stream[1::2]
    dur = ends - torch.cat([ends.new_zeros(1), ends[:-1]])
    return phone, tone, dur


def length_regulate(dur: torch.Tensor) -> torch.Tensor:
    """Frame -> 1-based phone index (B, sum(dur)) from durations (B, N), with upstream's cumsum-mask semantics."""
    dur = torch.as_tensor(dur, dtype=torch.long)
    if dur.dim() == 1:
        dur = dur[None]
    ends = dur.cumsum(1)
    starts = ends - dur
    total = int(dur.sum(-1).max())
    pos = torch.arange(max(total, 0), device=dur.device)[None, None]
    mask = (pos >= starts[:, :, None]) & (pos < ends[:, :, None])
    idx = torch.arange(1, dur.shape[1] + 1, device=dur.device)[None, :, None]
    return (idx * mask.long()).sum(1)


def mel2ph_to_dur(mel2ph: torch.Tensor, n_phones: int) -> torch.Tensor:
    """Per-phone frame counts (B, n_phones) of a 1-based frame->phone map (index 0 = padding, dropped)."""
    mel2ph = torch.as_tensor(mel2ph, dtype=torch.long)
    if mel2ph.dim() == 1:
        mel2ph = mel2ph[None]
    dur = mel2ph.new_zeros(mel2ph.shape[0], n_phones + 1).scatter_add(1, mel2ph, torch.ones_like(mel2ph))
    return dur[:, 1:]


def fix_total(dur: torch.Tensor, total: int) -> torch.Tensor:
    """Make aligner durations sum to `total`: add the shortfall to the last phone, or take 1 from each phone in turn."""
    dur = dur.clone()
    diff = int(dur.sum()) - total
    if diff < 0:
        dur[-1] -= diff
    elif diff > 0:
        n = dur.numel()
        rounds, rest = divmod(diff, n)
        dur -= rounds
        dur[:rest] -= 1
    return dur
