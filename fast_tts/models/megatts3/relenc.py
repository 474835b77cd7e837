"""Relative-position transformer encoder over phones (used by the duration LM and the DiT's phone encoder).

Layout follows the checkpoints: `emb`, a ConvReluNorm prenet `pre`, `encoder.attn_layers` (windowed relative
attention, window 4, keys/values share one relative table across heads), conv FFNs, channel LayerNorms (eps 1e-4).
Tensors run channels-first (B, C, T) inside, like the checkpoint's 1x1 convolutions expect.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sin_pos_emb(n: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """Parameter-free position table (n, dim): sin then cos of pos * exp(-ln(1e4) * i / (dim/2 - 1))."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, device=device) * -(math.log(10000) / (half - 1)))
    ang = torch.arange(n, device=device)[:, None] * freq[None, :]
    return torch.cat([ang.sin(), ang.cos()], dim=-1)


class ChannelNorm(nn.Module):
    """LayerNorm over the channel axis of (B, C, T) with `gamma`/`beta` parameters."""

    def __init__(self, channels: int, eps: float = 1e-4) -> None:
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.gamma[:, None] + self.beta[:, None]


class ConvReluNorm(nn.Module):
    """Prenet: 3 x (conv k5 -> channel norm -> ReLU), then a 1x1 projection added to the input."""

    def __init__(self, channels: int, kernel: int = 5, n_layers: int = 3) -> None:
        super().__init__()
        self.conv_layers = nn.ModuleList(nn.Conv1d(channels, channels, kernel, padding=kernel // 2)
                                         for _ in range(n_layers))
        self.norm_layers = nn.ModuleList(ChannelNorm(channels) for _ in range(n_layers))
        self.proj = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = x
        for conv, norm in zip(self.conv_layers, self.norm_layers):
            h = torch.relu(norm(conv(h * mask)))
        return (x + self.proj(h)) * mask


class RelAttention(nn.Module):
    """Multi-head self-attention with windowed relative key/value embeddings (1x1 conv projections)."""

    def __init__(self, channels: int, n_heads: int, window: int = 4) -> None:
        super().__init__()
        self.n_heads, self.window, self.d = n_heads, window, channels // n_heads
        self.conv_q = nn.Conv1d(channels, channels, 1)
        self.conv_k = nn.Conv1d(channels, channels, 1)
        self.conv_v = nn.Conv1d(channels, channels, 1)
        self.conv_o = nn.Conv1d(channels, channels, 1)
        self.emb_rel_k = nn.Parameter(torch.zeros(1, 2 * window + 1, self.d))
        self.emb_rel_v = nn.Parameter(torch.zeros(1, 2 * window + 1, self.d))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        b, c, t = x.shape
        q = self.conv_q(x).view(b, self.n_heads, self.d, t).transpose(2, 3)
        k = self.conv_k(x).view(b, self.n_heads, self.d, t).transpose(2, 3)
        v = self.conv_v(x).view(b, self.n_heads, self.d, t).transpose(2, 3)
        w = self.window
        rel = torch.arange(t, device=x.device)[None, :] - torch.arange(t, device=x.device)[:, None]  # j - i
        inside = rel.abs() <= w
        idx = (rel.clamp(-w, w) + w)  # (t, t) index into the 2w+1 table
        scale = 1.0 / math.sqrt(self.d)
        scores = torch.matmul(q, k.transpose(-2, -1)) * scale
        rel_logits = torch.matmul(q, self.emb_rel_k[0].transpose(0, 1))  # (b, h, t, 2w+1)
        rel_logits = torch.gather(rel_logits, 3, idx.expand(b, self.n_heads, t, t)) * inside
        scores = scores + rel_logits * scale
        scores = scores.masked_fill(attn_mask == 0, -1e4)
        p = torch.softmax(scores, dim=-1)
        out = torch.matmul(p, v)
        p_rel = torch.zeros(b, self.n_heads, t, 2 * w + 1, dtype=p.dtype, device=p.device)
        p_rel.scatter_add_(3, idx.expand(b, self.n_heads, t, t), p * inside)
        out = out + torch.matmul(p_rel, self.emb_rel_v[0])
        return self.conv_o(out.transpose(2, 3).reshape(b, c, t))


class ConvFFN(nn.Module):
    """conv k -> ReLU -> 1x1 conv, masked."""

    def __init__(self, channels: int, hidden: int, kernel: int) -> None:
        super().__init__()
        self.conv_1 = nn.Conv1d(channels, hidden, kernel, padding=kernel // 2)
        self.conv_2 = nn.Conv1d(hidden, channels, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.conv_2(torch.relu(self.conv_1(x * mask)) * mask) * mask


class Encoder(nn.Module):
    """Pre-LN stack of relative attention + conv FFN layers with a final channel norm."""

    def __init__(self, channels: int, hidden: int, n_heads: int, n_layers: int, kernel: int) -> None:
        super().__init__()
        self.attn_layers = nn.ModuleList(RelAttention(channels, n_heads) for _ in range(n_layers))
        self.norm_layers_1 = nn.ModuleList(ChannelNorm(channels) for _ in range(n_layers))
        self.ffn_layers = nn.ModuleList(ConvFFN(channels, hidden, kernel) for _ in range(n_layers))
        self.norm_layers_2 = nn.ModuleList(ChannelNorm(channels) for _ in range(n_layers))
        self.last_ln = ChannelNorm(channels)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        attn_mask = mask.unsqueeze(2) * mask.unsqueeze(-1)
        for attn, n1, ffn, n2 in zip(self.attn_layers, self.norm_layers_1, self.ffn_layers, self.norm_layers_2):
            x = x * mask
            x = x + attn(n1(x), attn_mask)
            x = x + ffn(n2(x), mask)
        return self.last_ln(x) * mask


class RelTransformerEncoder(nn.Module):
    """Phone ids (B, T) plus extra embeddings (B, T, C) -> encoded phones (B, T, C)."""

    def __init__(self, n_vocab: int, channels: int, hidden: int, n_heads: int, n_layers: int, kernel: int) -> None:
        super().__init__()
        self.channels = channels
        self.emb = nn.Embedding(n_vocab, channels)
        self.pre = ConvReluNorm(channels)
        self.encoder = Encoder(channels, hidden, n_heads, n_layers, kernel)

    def forward(self, tokens: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        lengths = (tokens > 0).long().sum(-1)
        mask = (torch.arange(tokens.shape[1], device=tokens.device)[None] < lengths[:, None]).to(other.dtype)[:, None]
        x = (self.emb(tokens) * math.sqrt(self.channels) + other).transpose(1, 2)
        x = self.pre(x, mask)
        return self.encoder(x, mask).transpose(1, 2)
