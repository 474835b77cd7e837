"""Grouped residual finite scalar quantizer (GFSQ) of the ChatTTS DVAE, with the residual scale made explicit.

`residual_scale_base` follows the vector_quantize_pytorch release the weights were made with:
- "levels_minus_1" (default): stage r is scaled by (L-1)^-r, as in releases 1.12.5 (Dec 2023) to 1.25.x; encoding
  bounds the projected input with tanh (asymmetric FSQ bound) before the stages, as in 1.12.5 to 1.18.3. The
  ChatTTS weights were released in May 2024, when 1.14.8 was current, so this is what they were trained with.
- "levels": L^-r with the symmetric, soft-clamped FSQ of 1.26.0 (Nov 2025) and later; the parity fixture was
  produced with 1.32.0.
For 5 levels both map digit d to d * 0.5 - 1. Code slots are ordered [g0r0, g0r1, g1r0, g1r1, ...].
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

ScaleBase = Literal["levels", "levels_minus_1"]
SCALE_BASES = ("levels", "levels_minus_1")


class _ResidualStage(nn.Module):
    """One group's projections (checkpoint names `project_in` / `project_out`)."""

    def __init__(self, dim: int, n_levels: int) -> None:
        super().__init__()
        self.project_in = nn.Linear(dim, n_levels)
        self.project_out = nn.Linear(n_levels, dim)


class _Groups(nn.Module):
    def __init__(self, dim: int, n_levels: int, groups: int) -> None:
        super().__init__()
        self.rvqs = nn.ModuleList(_ResidualStage(dim // groups, n_levels) for _ in range(groups))


class GFSQ(nn.Module):
    """Indices (B, G*R, T) <-> features (B, dim, T)."""

    def __init__(self, dim: int, levels: tuple[int, ...], groups: int, residuals: int,
                 residual_scale_base: ScaleBase = "levels_minus_1") -> None:
        super().__init__()
        if residual_scale_base not in SCALE_BASES:
            raise ValueError(f"residual_scale_base must be one of {SCALE_BASES}, got {residual_scale_base!r}")
        self.groups, self.residuals, self.scale_base = groups, residuals, residual_scale_base
        self.quantizer = _Groups(dim, len(levels), groups)
        lv = torch.tensor(levels, dtype=torch.int32)
        basis = torch.cumprod(torch.tensor([1] + list(levels[:-1])), dim=0).to(torch.int32)
        base = lv.float() if residual_scale_base == "levels" else (lv - 1).float()
        self.register_buffer("levels", lv, persistent=False)
        self.register_buffer("basis", basis, persistent=False)
        self.register_buffer("scales", torch.stack([base**-r for r in range(residuals)]), persistent=False)
        size = int(torch.prod(lv))
        self.register_buffer("codebook", self._digits_to_codes(self._digits(torch.arange(size))), persistent=False)

    @property
    def symmetric(self) -> bool:
        return self.scale_base == "levels"

    def _digits(self, idx: torch.Tensor) -> torch.Tensor:
        return (idx[..., None] // self.basis) % self.levels

    def _digits_to_codes(self, digits: torch.Tensor) -> torch.Tensor:
        if self.symmetric:
            return digits * (2.0 / (self.levels - 1)) - 1.0
        half = self.levels // 2
        return (digits - half) / half

    def _codes_to_index(self, codes: torch.Tensor) -> torch.Tensor:
        if self.symmetric:
            digits = (codes + 1.0) / (2.0 / (self.levels - 1))
        else:
            half = self.levels // 2
            digits = codes * half + half
        return (digits * self.basis).sum(dim=-1).round().long()

    def _bound_asymmetric(self, z: torch.Tensor) -> torch.Tensor:
        half_l = (self.levels - 1) * (1 + 1e-3) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0)
        shift = (offset / half_l).atanh()
        return (z + shift).tanh() * half_l - offset

    def _quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest code of one residual stage, in [-1, 1]."""
        if self.symmetric:
            steps = self.levels - 1
            bracket = torch.floor(steps * (z.clamp(-1.0, 1.0) + 1) / 2.0 + 0.5)
            return (2.0 / steps) * bracket - 1.0
        return self._bound_asymmetric(z).round() / (self.levels // 2)

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Features (B, dim, T) for code indices (B, G*R, T)."""
        b, _, t = indices.shape
        idx = indices.transpose(1, 2).reshape(b, t, self.groups, self.residuals)
        outs = []
        for g, stage in enumerate(self.quantizer.rvqs):
            codes = self.codebook[idx[:, :, g]]  # (B, T, R, n_levels)
            summed = (codes * self.scales).sum(dim=2)
            outs.append(stage.project_out(summed))
        return torch.cat(outs, dim=-1).transpose(1, 2)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Code indices (B, G*R, T) for features (B, dim, T)."""
        chunks = x.transpose(1, 2).chunk(self.groups, dim=-1)
        per_group = []
        for stage, chunk in zip(self.quantizer.rvqs, chunks):
            z = stage.project_in(chunk)
            if self.symmetric:
                clamp = 1 + 1 / (self.levels - 1)
                residual = (z / clamp).tanh() * clamp
            else:
                residual = self._bound_asymmetric(z)
            stage_idx = []
            for r in range(self.residuals):
                scale = self.scales[r]
                codes = self._quantize(residual / scale)
                stage_idx.append(self._codes_to_index(codes))
                residual = residual - codes * scale
            per_group.append(torch.stack(stage_idx, dim=-1))  # (B, T, R)
        idx = torch.stack(per_group, dim=2)  # (B, T, G, R)
        return idx.flatten(2).transpose(1, 2)
