"""ConvNeXt-1D building blocks shared by the DVAE, the Decoder and Vocos, with optional length masks.

A mask (B, 1, T) of ones on valid frames zeroes the padding before every convolution whose kernel spans more than
one frame, so a padded row computes exactly what it computes alone (where the convolution pads with zeros).
"""

from __future__ import annotations

import torch
from torch import nn


def masked(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """x * mask, or x when there is no mask."""
    return x if mask is None else x * mask


def length_mask(lengths: torch.Tensor, max_len: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, max_len) mask with ones on the first lengths[b] frames of each row."""
    steps = torch.arange(max_len, device=lengths.device)
    return (steps[None, :] < lengths[:, None]).to(dtype)[:, None, :]


class ConvNeXtBlock(nn.Module):
    """Depthwise conv -> LayerNorm -> MLP (GELU) -> layer scale -> residual; `scale_name` is the checkpoint name."""

    def __init__(self, dim: int, intermediate: int, kernel: int = 7, dilation: int = 1,
                 scale_name: str = "gamma") -> None:
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel, padding=dilation * (kernel // 2), dilation=dilation, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(intermediate, dim)
        self.scale_name = scale_name
        self.register_parameter(scale_name, nn.Parameter(torch.ones(dim)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        y = self.dwconv(masked(x, mask)).transpose(1, 2)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        y = y * getattr(self, self.scale_name)
        return x + y.transpose(1, 2)


class ConvStack(nn.Module):
    """ChatTTS's conv decoder (used as DVAE encoder, DVAE decoder and GPT-hidden decoder): (B, idim, T) ->
    (B, odim, T)."""

    def __init__(self, idim: int, odim: int, hidden: int, n_layer: int, bn_dim: int) -> None:
        super().__init__()
        self.conv_in = nn.Sequential(
            nn.Conv1d(idim, bn_dim, 3, 1, 1), nn.GELU(), nn.Conv1d(bn_dim, hidden, 3, 1, 1)
        )
        self.decoder_block = nn.ModuleList(
            ConvNeXtBlock(hidden, hidden * 4, kernel=7, dilation=2, scale_name="weight") for _ in range(n_layer)
        )
        self.conv_out = nn.Conv1d(hidden, odim, 1, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        conv0, act, conv1 = self.conv_in
        y = conv1(masked(act(conv0(masked(x, mask))), mask))
        for block in self.decoder_block:
            y = block(y, mask)
        return self.conv_out(y)


def double_frames(x: torch.Tensor) -> torch.Tensor:
    """(B, 2D, T) -> (B, D, 2T): frame 2t takes channels [0:D] of step t, frame 2t+1 channels [D:2D]."""
    b, c, t = x.shape
    return x.view(b, 2, c // 2, t).permute(0, 2, 3, 1).flatten(2)
