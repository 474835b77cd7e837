"""MegaTTS3 diffusion transformer: phone/tone conditioning, AdaLN-zero blocks with interleaved RoPE, 3-row CFG, sampler.

Per segment the conditioning (phone encoder, frame expansion, `ling_pre_net`, local prompt condition and their input
projections) is computed once by `condition`; each sampler step then only runs the 24 blocks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fast_tts.models.megatts3.relenc import RelTransformerEncoder, sin_pos_emb

DIM, HEADS, LAYERS, FFN = 1024, 16, 24, 2048
LATENT, LOCAL, MASK_DIM = 32, 512, 16
CFG_PHONE, CFG_TONE = 301, 31
VALID_TONES = (0, 4, 11, 12, 13, 14, 15)
NoiseFn = Callable[[tuple[int, ...]], torch.Tensor]


@dataclass
class DiTInputs:
    """CFG-batched inputs: rows (spk+txt, txt, uncond)."""

    phone: torch.Tensor  # (3, N)
    tone: torch.Tensor  # (3, N)
    lat_ctx: torch.Tensor  # (3, T_lat, 32), rows 1-2 zero
    ctx_mask: torch.Tensor  # (3, T_lat, 1)
    mel2ph: torch.Tensor  # (3, 4*T_lat)


@dataclass
class Condition:
    """What stays fixed across sampler steps of one segment."""

    cond: torch.Tensor  # prenet(local_cond) + x_ling, (3, T, DIM)
    keep: torch.Tensor  # 1 - ctx_mask, (3, T, 1)
    cos: torch.Tensor
    sin: torch.Tensor


def prepare_inputs(mel2ph_ref: torch.Tensor, mel2ph_pred: torch.Tensor, ph_ref: torch.Tensor, tone_ref: torch.Tensor,
                   ph_pred: torch.Tensor, tone_pred: torch.Tensor, prompt_latent: torch.Tensor,
                   frames_multiple: int = 8, vae_stride: int = 4) -> DiTInputs:
    """Concatenate prompt and target, clean tones, and build the three CFG rows."""
    mel2ph = torch.cat([mel2ph_ref, mel2ph_pred + ph_ref.shape[1]], dim=1)
    mel2ph = mel2ph[:, : mel2ph.shape[1] // frames_multiple * frames_multiple].repeat(3, 1)
    ph = torch.cat([ph_ref, ph_pred], dim=1)
    tone = torch.cat([tone_ref, tone_pred], dim=1).clone()
    valid = torch.zeros_like(tone, dtype=torch.bool)
    for t in VALID_TONES:
        valid |= tone == t
    tone[~valid] = 3
    phone = torch.cat([ph, ph, torch.full_like(ph, CFG_PHONE)], dim=0)
    tone = torch.cat([tone, tone, torch.full_like(tone, CFG_TONE)], dim=0)
    t_lat = mel2ph.shape[1] // vae_stride
    n_ctx = prompt_latent.shape[1]
    lat = prompt_latent.new_zeros(3, t_lat, prompt_latent.shape[2])
    lat[0, :n_ctx] = prompt_latent[0, :t_lat]
    mask = prompt_latent.new_zeros(3, t_lat, 1)
    mask[:, :n_ctx] = 1
    return DiTInputs(phone, tone, lat, mask, mel2ph)


def sway_schedule(steps: int) -> torch.Tensor:
    """t_k = u - (cos(pi/2 u) - 1 + u) for u = linspace(0, 1, steps+1), float32."""
    u = torch.linspace(0, 1, steps + 1, dtype=torch.float32)
    return u - (torch.cos(torch.pi / 2 * u) - 1 + u)


def interleaved_rope(n: int, dim: int = DIM // HEADS,
                     device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin (n, dim/2) of positions 0..n-1 for pairwise (complex) rotary, theta 1e4."""
    freqs = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, device=device)[: dim // 2].float() / dim))
    ang = torch.outer(torch.arange(n, device=device).float(), freqs)
    return ang.cos(), ang.sin()


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, T, H, D) in adjacent pairs."""
    xr = x.float().unflatten(-1, (-1, 2))
    a, b = xr[..., 0], xr[..., 1]
    c, s = cos[None, :, None], sin[None, :, None]
    return torch.stack([a * c - b * s, a * s + b * c], dim=-1).flatten(-2).type_as(x)


class AdaLN(nn.Module):
    """`linear` of SiLU(t) -> n chunks of width dim (shift/scale/gate)."""

    def __init__(self, chunks: int) -> None:
        super().__init__()
        self.linear = nn.Linear(DIM, DIM * chunks)


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(DIM, DIM) for _ in range(4))


class FeedForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Linear(DIM, FFN)
        self.w2 = nn.Linear(FFN, DIM)


class Block(nn.Module):
    """AdaLN-zero transformer block."""

    def __init__(self) -> None:
        super().__init__()
        self.attention = Attention()
        self.feed_forward = FeedForward()
        self.attention_norm = AdaLN(6)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.attention_norm.linear(F.silu(t)).chunk(6, dim=1)
        h = F.layer_norm(x, (DIM,), eps=1e-6) * (1 + scale_a[:, None]) + shift_a[:, None]
        b, n, _ = h.shape
        att = self.attention
        q = _rope(att.wq(h).view(b, n, HEADS, -1), cos, sin).transpose(1, 2)
        k = _rope(att.wk(h).view(b, n, HEADS, -1), cos, sin).transpose(1, 2)
        v = att.wv(h).view(b, n, HEADS, -1).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, DIM)
        x = x + gate_a[:, None] * att.wo(a)
        h = F.layer_norm(x, (DIM,), eps=1e-6) * (1 + scale_m[:, None]) + shift_m[:, None]
        ff = self.feed_forward
        return x + gate_m[:, None] * ff.w2(F.silu(ff.w1(h)))


class Backbone(nn.Module):
    """24 blocks, AdaLN-zero output norm (`norm.linear`: scale, shift) and `out_proj`."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Block() for _ in range(LAYERS))
        self.norm = AdaLN(2)
        self.out_proj = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, t, cos, sin)
        scale, shift = self.norm.linear(F.silu(t)).chunk(2, dim=1)
        x = F.layer_norm(x, (DIM,), eps=1e-6) * (1 + scale)[:, None] + shift[:, None]
        return self.out_proj(x)


class TimeEmbedding(nn.Module):
    """Sinusoid of 256 dims at scale 1000 -> MLP (`time_mlp.0`, SiLU, `time_mlp.2`)."""

    def __init__(self) -> None:
        super().__init__()
        self.time_mlp = nn.Sequential(nn.Linear(256, DIM), nn.SiLU(), nn.Linear(DIM, DIM))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = 128
        freq = torch.exp(torch.arange(half, device=t.device).float() * -(math.log(10000) / (half - 1)))
        ang = 1000 * t[:, None] * freq[None]
        return self.time_mlp(torch.cat([ang.sin(), ang.cos()], dim=-1).to(t.dtype))


class DiT(nn.Module):
    """The 'dit' checkpoint module: conditioning encoders, backbone and the CFG sampler."""

    def __init__(self) -> None:
        super().__init__()
        self.ctx_mask_proj = nn.Linear(1, MASK_DIM)
        self.local_cond_project = nn.Linear(LATENT + MASK_DIM, LOCAL)
        self.encoder = Backbone()
        self.x_prenet = nn.Linear(LATENT, DIM)
        self.prenet = nn.Linear(LOCAL, DIM)
        self.postnet = nn.Linear(DIM, LATENT)
        self.f5_time_embed = TimeEmbedding()
        self.ph_encoder = RelTransformerEncoder(302, DIM, 2 * DIM, 4, 6, 3)
        self.tone_embed = nn.Embedding(32, DIM)
        self.ling_pre_net = nn.Sequential(nn.Conv1d(DIM, DIM, 4, 2, 1), nn.Conv1d(DIM, DIM, 4, 2, 1))

    def phone_features(self, phone: torch.Tensor, tone: torch.Tensor) -> torch.Tensor:
        """Phone-level linguistic features (B, N, DIM)."""
        nonpad = (phone > 0).float()[:, :, None]
        other = (self.tone_embed(tone) + sin_pos_emb(phone.shape[1], DIM, phone.device)) * nonpad
        return self.ph_encoder(phone, other) * nonpad

    def frame_features(self, x_ph: torch.Tensor, mel2ph: torch.Tensor) -> torch.Tensor:
        """Expand phones to 100 Hz frames (index 0 = zeros) and downsample x4 with `ling_pre_net`."""
        padded = F.pad(x_ph, (0, 0, 1, 0))
        frames = torch.gather(padded, 1, mel2ph[..., None].expand(-1, -1, padded.shape[-1]))
        return self.ling_pre_net(frames.transpose(1, 2)).transpose(1, 2)

    def local_condition(self, inp: DiTInputs) -> torch.Tensor:
        """Prompt-latent condition (3, T, 512); rows 1 and 2 see no latent."""
        lat = inp.lat_ctx.clone()
        lat[1:] = 0
        return self.local_cond_project(torch.cat([lat, self.ctx_mask_proj(inp.ctx_mask)], dim=-1))

    def condition(self, inp: DiTInputs) -> Condition:
        """Everything the sampler steps share, computed once per segment."""
        x_ling = self.frame_features(self.phone_features(inp.phone, inp.tone), inp.mel2ph)
        cond = self.prenet(self.local_condition(inp)) + x_ling
        cos, sin = interleaved_rope(cond.shape[1], device=cond.device)
        return Condition(cond, 1 - inp.ctx_mask, cos, sin)

    def rows(self, x: torch.Tensor, t: torch.Tensor, c: Condition) -> torch.Tensor:
        """Raw velocities (3, T, 32) of the three CFG rows for x (1, T, 32) at time t (1,)."""
        h = self.x_prenet(x.expand(3, -1, -1) * c.keep) + c.cond
        return self.postnet(self.encoder(h, self.f5_time_embed(t), c.cos, c.sin))

    def velocity(self, x: torch.Tensor, t: torch.Tensor, c: Condition, p_w: float, t_w: float) -> torch.Tensor:
        """CFG velocity u + p_w (txt - u) + t_w (spk_txt - txt), shape (1, T, 32)."""
        spk_txt, txt, uncond = self.rows(x, t, c).chunk(3)
        return uncond + p_w * (txt - uncond) + t_w * (spk_txt - txt)

    @torch.inference_mode()
    def sample(self, inp: DiTInputs, steps: int = 32, p_w: float = 1.6, t_w: float = 2.5,
               noise: NoiseFn | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """AMO sampler on the sway schedule: x0 ~ N(0, I), then one fresh draw per step (the last is scaled by 0)."""
        c = self.condition(inp)
        shape = (1, c.cond.shape[1], LATENT)
        draw = noise or (lambda s: torch.randn(s, generator=generator).to(c.cond.device))
        sched = sway_schedule(steps).to(c.cond.device)
        x = draw(shape).float()
        for k in range(steps):
            t, t_next = sched[k], sched[k + 1]
            v = self.velocity(x, t[None], c, p_w, t_w)
            o = torch.clamp(t_next + 3 * (t_next - t), max=1.0)
            z = x + (o - t) * v
            a = t_next / o
            b = ((1 - t_next) ** 2 - (a * (1 - o)) ** 2).clamp_min(0) ** 0.5
            x = a * z + b * draw(shape).float()
        return x
