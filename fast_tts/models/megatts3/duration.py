"""MegaTTS3 duration LM: a rel-transformer linguistic encoder and a 28-layer rotary AR decoder over duration tokens.

The prompt (reference phones with their aligned durations) is run once, teacher-forced and in parallel, into a
`DurationPrompt` (per-layer K/V); each segment copies it into a preallocated cache and decodes greedily.
Keys are cached after rotary (positions equal cache indices, so this matches re-rotating every step).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fast_tts.models.megatts3.phones import (
    LONG_PAUSE,
    SHORT_PAUSE,
    length_regulate,
    mel2ph_to_dur,
)
from fast_tts.models.megatts3.relenc import RelTransformerEncoder, sin_pos_emb


@dataclass(frozen=True)
class DurationConfig:
    """The duration_lm/config.yaml values the architecture depends on."""

    txt_hidden: int = 512
    hidden: int = 384
    layers: int = 28
    code_size: int = 256
    heads: int = 8
    enc_ffn: int = 1024
    enc_heads: int = 2
    enc_layers: int = 4
    enc_kernel: int = 3
    ph_dict_size: int = 174
    tone_dict_size: int = 20

    @classmethod
    def from_yaml(cls, cfg: Mapping[str, Any]) -> DurationConfig:
        """Read the upstream hparams names; unsupported variants raise ValueError naming the key."""
        for key, want in (("use_pos_embed", False), ("use_post_ln", False), ("mega_use_char", False)):
            if bool(cfg.get(key, want)) != want:
                raise ValueError(f"duration_lm config: {key}={cfg.get(key)!r} is not supported")
        if cfg.get("use_rot_embed") is False:
            raise ValueError("duration_lm config: use_rot_embed=false is not supported")
        sizes = cfg.get("ling_label_dict_size") or [20]
        return cls(
            txt_hidden=int(cfg.get("dur_txt_hs", 512)), hidden=int(cfg.get("dur_model_hidden_size", 384)),
            layers=int(cfg.get("dur_model_layers", 28)), code_size=int(cfg.get("dur_code_size", 256)),
            enc_ffn=int(cfg.get("ffn_hidden_size", 1024)), enc_heads=int(cfg.get("num_heads", 2)),
            enc_layers=int(cfg.get("enc_layers", 4)), enc_kernel=int(cfg.get("enc_ffn_kernel_size", 3)),
            tone_dict_size=int(sizes[0]),
        )


@dataclass
class DurationPrompt:
    """Duration-LM state after the reference: rotated keys and values (layers, heads, N_ref, d), and its tokens."""

    keys: torch.Tensor
    values: torch.Tensor
    ctx_tokens: torch.Tensor  # (1, N_ref) = clamp(dur_ref, max=code_size-1) + 1
    prompt_logits: torch.Tensor


def rope_tables(positions: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """NeoX rotate-half cos/sin (T, dim), theta_i = 10000^(-2i/dim)."""
    theta = torch.pow(10000, -torch.arange(0, dim, 2, dtype=torch.float, device=positions.device) / dim)
    ang = positions.float()[:, None] * theta[None, :]
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


class SelfAttention(nn.Module):
    """`in_proj_weight` (q, k, v stacked, no bias) and `out_proj` (no bias), 8 heads."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.d = heads, dim // heads
        self.in_proj_weight = nn.Parameter(torch.zeros(3 * dim, dim))
        self.out_proj = nn.Linear(dim, dim, bias=False)


class FFN(nn.Module):
    """Conv1d k=1 (kept as `ffn_1.1` for the checkpoint) -> GELU -> Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.ffn_1 = nn.Sequential(nn.Identity(), nn.Conv1d(dim, hidden, 1))
        self.ffn_2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.ffn_1[1]
        return self.ffn_2(F.gelu(F.linear(x, conv.weight[:, :, 0], conv.bias)))


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(dim)
        self.self_attn = SelfAttention(dim, heads)
        self.layer_norm2 = nn.LayerNorm(dim)
        self.ffn = FFN(dim, 4 * dim)


class _Op(nn.Module):
    """Holds the layer under `op`, the checkpoint's nesting."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.op = DecoderLayer(dim, heads)


class DurationLM(nn.Module):
    """ARDurPredictor ('dur_model' wrapper key): phones/tones -> per-phone duration tokens."""

    def __init__(self, cfg: DurationConfig = DurationConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = RelTransformerEncoder(cfg.ph_dict_size, cfg.txt_hidden, cfg.enc_ffn, cfg.enc_heads,
                                             cfg.enc_layers, cfg.enc_kernel)
        self.char_empty_embed = nn.Embedding(1, cfg.txt_hidden)  # stored upstream; unused without char input
        self.ling_label_embed_layers = nn.ModuleDict({"tone": nn.Embedding(cfg.tone_dict_size + 3, cfg.txt_hidden)})
        self.enc_proj = nn.Linear(cfg.txt_hidden, cfg.hidden)
        self.code_emb = nn.Embedding(cfg.code_size + 2, cfg.hidden)
        self.layers = nn.ModuleList(_Op(cfg.hidden, cfg.heads) for _ in range(cfg.layers))
        self.layer_norm = nn.LayerNorm(cfg.hidden)
        self.project_out_dim = nn.Linear(cfg.hidden, cfg.code_size + 1)

    @property
    def bos(self) -> int:
        return self.cfg.code_size + 1

    def linguistic(self, ph: torch.Tensor, tone: torch.Tensor) -> torch.Tensor:
        """Linguistic features (B, N, hidden) of phones and tones."""
        nonpad = (ph > 0).float()[:, :, None]
        other = self.ling_label_embed_layers["tone"](tone) + sin_pos_emb(ph.shape[1], self.cfg.txt_hidden, ph.device)
        x = self.encoder(ph, other * nonpad) * nonpad
        return self.enc_proj(x)

    def _run(self, x: torch.Tensor, start: int, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Run T inputs (1, T, H) at positions start.. writing K/V into the cache; causal within the chunk."""
        t = x.shape[1]
        end = start + t
        cos, sin = rope_tables(torch.arange(start, end, device=x.device), self.cfg.hidden // self.cfg.heads)
        causal = t > 1
        mask = None
        if causal and start > 0:
            mask = torch.arange(end, device=x.device)[None, :] <= torch.arange(start, end, device=x.device)[:, None]
            causal = False
        for i, wrap in enumerate(self.layers):
            layer = wrap.op
            attn = layer.self_attn
            h = layer.layer_norm1(x)
            q, k, v = F.linear(h, attn.in_proj_weight).view(1, t, 3, attn.heads, attn.d).permute(2, 0, 3, 1, 4)
            keys[i, :, start:end] = apply_rope(k, cos, sin)[0]
            values[i, :, start:end] = v[0]
            out = F.scaled_dot_product_attention(apply_rope(q, cos, sin), keys[i, None, :, :end],
                                                 values[i, None, :, :end], attn_mask=mask, is_causal=causal)
            x = x + attn.out_proj(out.transpose(1, 2).reshape(1, t, -1))
            x = x + layer.ffn(layer.layer_norm2(x))
        return self.project_out_dim(self.layer_norm(x))

    def _cache(self, n: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (self.cfg.layers, self.cfg.heads, n, self.cfg.hidden // self.cfg.heads)
        return like.new_zeros(shape), like.new_zeros(shape)

    @torch.inference_mode()
    def make_prompt(self, ph_ref: torch.Tensor, tone_ref: torch.Tensor, mel2ph_ref: torch.Tensor) -> DurationPrompt:
        """Teacher-forced pass over the reference (inputs BOS, ctx[0..N-2]) that fills the prompt state."""
        n = ph_ref.shape[1]
        ctx = mel2ph_to_dur(mel2ph_ref, n).clamp(max=self.cfg.code_size - 1) + 1
        ctx = ctx[:, (ph_ref[0] > 0)]
        x_ling = self.linguistic(ph_ref, tone_ref)[:, (ph_ref[0] > 0)]
        inputs = torch.cat([ctx.new_full((1, 1), self.bos), ctx[:, :-1]], dim=1)
        keys, values = self._cache(ctx.shape[1], x_ling)
        logits = self._run(self.code_emb(inputs) + x_ling, 0, keys, values)
        return DurationPrompt(keys, values, ctx, logits)

    @torch.inference_mode()
    def predict(self, prompt: DurationPrompt, ph: torch.Tensor, tone: torch.Tensor,
                return_logits: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Greedy duration tokens (1, L) for one segment's phones, continuing from the prompt state."""
        x_ling = self.linguistic(ph, tone)[:, (ph[0] > 0)]
        n_ref, steps = prompt.keys.shape[2], x_ling.shape[1]
        keys, values = self._cache(n_ref + steps, x_ling)
        keys[:, :, :n_ref] = prompt.keys
        values[:, :, :n_ref] = prompt.values
        token = prompt.ctx_tokens[:, -1:]
        out, all_logits = [], []
        for step in range(steps):
            logits = self._run(self.code_emb(token) + x_ling[:, step:step + 1], n_ref + step, keys, values)
            pred = logits[:, -1].argmax(-1, keepdim=True)
            if step > 0:
                pred = pred.clamp_min(1)
            out.append(pred)
            all_logits.append(logits)
            token = pred
        tokens = torch.cat(out, dim=1)
        return (tokens, torch.cat(all_logits, 1)) if return_logits else tokens

    @torch.inference_mode()
    def teacher_forced(self, prompt: DurationPrompt, ph: torch.Tensor, tone: torch.Tensor,
                       tokens_in: torch.Tensor) -> torch.Tensor:
        """Logits (1, K, code_size+1) for given decoder inputs after the prompt (K <= number of phones)."""
        x_ling = self.linguistic(ph, tone)[:, (ph[0] > 0)]
        n_ref, k = prompt.keys.shape[2], tokens_in.shape[1]
        keys, values = self._cache(n_ref + k, x_ling)
        keys[:, :, :n_ref] = prompt.keys
        values[:, :, :n_ref] = prompt.values
        return self._run(self.code_emb(tokens_in) + x_ling[:, :k], n_ref, keys, values)


def postprocess(raw: torch.Tensor, ph: torch.Tensor, *, is_first: bool, is_final: bool, dur_disturb: float = 0.1,
                dur_alpha: float = 1.0, code_size: int = 256, frames_multiple: int = 8,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Duration tokens -> frames per phone (1, L), in the reference's order (crossfade pad, disturb, pauses, ...)."""
    dur = (raw - 1).clamp(0, code_size - 1)
    if is_final:
        dur[:, -1] = dur[:, -1].clamp(64, 128)
    else:
        dur[:, -1] = dur[:, -1] + 32
    d = dur.float()
    choice = (torch.rand(d.shape, generator=generator) > 0.5).float().to(d.device)
    r = (1 + torch.rand(d.shape, generator=generator) * dur_disturb).to(d.device)
    d = d * r * choice + d / r * (1 - choice)
    d = torch.round(d * dur_alpha).clamp(0, 127)
    for tok in LONG_PAUSE:
        d[ph == tok] = d[ph == tok].clamp_min(64)
    for tok in SHORT_PAUSE:
        d[ph == tok] = d[ph == tok].clamp_min(32)
    if is_first:
        d[:, 0] = 8
    npad = frames_multiple - int(d.sum()) % frames_multiple
    if npad < frames_multiple:
        d[:, -1] += npad
    return d.long()


def durations_to_mel2ph(dur: torch.Tensor) -> torch.Tensor:
    """Frame -> phone map (1, sum(dur)) of integer durations."""
    return length_regulate(dur)
