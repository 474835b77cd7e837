"""MegaTTS3 WaveVAE: decoder 25 Hz latents (B, T, 32) -> 24 kHz waveform (B, 1, 960*T), and the optional encoder.

The official release ships only the decoder (`decoder.ckpt`); a full `model_only_last.ckpt` also carries the encoder
(`encoder.*`, `proj_to_z.*`), which turns a reference wav into its latent so that no `.npy` is needed.
The checkpoint stores legacy weight-norm pairs (`weight_g`, `weight_v`); `fold_weight_norm` turns them into plain
`weight` tensors once at load time, so inference runs ordinary convolutions.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

LATENT_DIM = 32
HOP = 960  # samples per latent frame
CONTEXT = 16  # latent frames of context each side; the decoder's receptive field is about +-6 frames


def fold_weight_norm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace each `X.weight_g`/`X.weight_v` pair by `X.weight = g * v / ||v||` (norm over all dims but 0)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith(".weight_g"):
            continue
        if key.endswith(".weight_v"):
            base = key[: -len("_v")]
            g = state.get(base + "_g")
            if g is None:
                raise KeyError(f"{key} has no matching {base}_g")
            v = value.float()
            norm = v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))
            out[base] = (v * (g.float() / norm)).to(value.dtype)
        else:
            out[key] = value
    return out


class Upsample(nn.Module):
    """x + sin(x), then nearest-upsample+conv7 plus a transposed-conv branch; halves the channels."""

    def __init__(self, channels: int, ratio: int) -> None:
        super().__init__()
        self.ratio = ratio
        rk = max(ratio, 5)
        self.upsample = nn.Sequential(
            nn.Upsample(scale_factor=ratio, mode="nearest"),
            nn.LeakyReLU(0.2),
            nn.ReflectionPad1d(3),
            nn.Conv1d(channels, channels // 2, 7),
        )
        self.trans_upsample = nn.Sequential(
            nn.LeakyReLU(0.2),
            nn.ConvTranspose1d(channels, channels // 2, rk * 2, stride=ratio, padding=rk - ratio // 2,
                               output_padding=ratio % 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + torch.sin(x)
        return self.upsample(x) + self.trans_upsample(x)


class ResStack(nn.Module):
    """HiFi-GAN v2 residual stack: dilations (1, 3, 5), each followed by a dilation-1 conv."""

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, dilation=d, padding=(kernel * d - d) // 2) for d in (1, 3, 5)
        )
        self.convs2 = nn.ModuleList(nn.Conv1d(channels, channels, kernel, padding=(kernel - 1) // 2) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, 0.2)), 0.2))
        return x


class MultiReceptive(nn.Module):
    """Mean of three residual stacks with kernels 3, 7 and 11."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block1, self.block2, self.block3 = ResStack(channels, 3), ResStack(channels, 7), ResStack(channels, 11)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.block1(x) + self.block2(x) + self.block3(x)) / 3


class Generator(nn.Module):
    """Conv7 160->2048, four (Upsample + MRF) stages with ratios 5,4,4,3, then conv7 -> 1 and tanh."""

    def __init__(self, in_channels: int = 160, ngf: int = 128, ratios: tuple[int, ...] = (5, 4, 4, 3),
                 use_tanh: bool = True) -> None:
        super().__init__()
        mult = 2 ** len(ratios)
        layers: list[nn.Module] = [nn.ReflectionPad1d(3), nn.Conv1d(in_channels, mult * ngf, 7)]
        for r in ratios:
            layers += [Upsample(mult * ngf, r), MultiReceptive(mult * ngf // 2)]
            mult //= 2
        layers += [nn.LeakyReLU(0.2), nn.ReflectionPad1d(3), nn.Conv1d(ngf, 1, 7)]
        layers.append(nn.Tanh() if use_tanh else nn.Conv1d(1, 1, 1))
        self.model_up = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model_up(x)


class WaveVAEDecoder(nn.Module):
    """Decoder path of WavVAE_V3 (the official `decoder.ckpt`): latent -> Linear -> Upsample x4 -> Generator."""

    def __init__(self, use_tanh: bool = True) -> None:
        super().__init__()
        self.proj_to_decoder = nn.Linear(LATENT_DIM, 320)
        self.latent_upsampler = Upsample(320, 4)
        self.decoder = Generator(use_tanh=use_tanh)

    def upsample_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """(B, T, 32) -> (B, 160, 4T) features at 100 Hz."""
        return self.latent_upsampler(self.proj_to_decoder(latent).transpose(1, 2))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """Decode latents (B, T, 32) into audio (B, 1, 960*T)."""
        return self.decoder(self.upsample_latent(latent))

    def decode_range(self, latent: torch.Tensor, start: int, end: int | None = None,
                     context: int = CONTEXT) -> torch.Tensor:
        """Audio (B, 1, 960*(end-start)) of latent frames [start, end) decoded with `context` frames around them.

        Equal to slicing a full decode (the receptive field is far shorter than the context), without paying for
        the frames outside: the prompt region of every segment is not re-decoded.
        """
        total = latent.shape[1]
        end = total if end is None else min(end, total)
        lo, hi = max(0, start - context), min(total, end + context)
        audio = self(latent[:, lo:hi])
        return audio[..., (start - lo) * HOP: (end - lo) * HOP]

    def decode_chunks(self, latent: torch.Tensor, start: int = 0, first: int = 12, chunk: int = 50,
                      context: int = CONTEXT) -> Iterator[torch.Tensor]:
        """`decode_range` in pieces (a short first one) whose concatenation equals decoding [start, end) at once."""
        pos, size, total = start, first, latent.shape[1]
        while pos < total:
            end = min(total, pos + size)
            yield self.decode_range(latent, pos, end, context)
            pos, size = end, chunk


ENCODER_STRIDES = (2, 4, 4, 5, 6)  # product 960: one latent frame per 40 ms of 24 kHz audio
ENCODER_FILTERS = 32
ENCODER_DIM = 512


def reflect_pad(x: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """Reflect padding that also works when the signal is not longer than the padding: the signal is first
    extended with zeros on the right so a reflection exists, and those extra samples are cut off afterwards."""
    length = x.shape[-1]
    widest = max(left, right)
    if length > widest:
        return F.pad(x, (left, right), mode="reflect")
    extra = widest - length + 1
    padded = F.pad(F.pad(x, (0, extra)), (left, right), mode="reflect")
    return padded[..., : padded.shape[-1] - extra]


class SamePadConv1d(nn.Module):
    """Conv1d on a reflect-padded input: `k_eff - stride` samples split around the signal (the extra one on the left)
    plus enough on the right to reach a whole number of strides, so the output has ceil(T / stride) frames.

    The two-level `conv.conv` nesting matches the checkpoint's names (`...conv.conv.weight_g`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv = nn.Module()
        self.conv.conv = nn.Conv1d(in_channels, out_channels, kernel, stride, dilation=dilation)
        self.stride = stride
        self.span = (kernel - 1) * dilation + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = self.span - self.stride
        right = total // 2
        extra = -(-x.shape[-1] // self.stride) * self.stride - x.shape[-1]
        return self.conv.conv(reflect_pad(x, total - right, right + extra))


class EncoderResBlock(nn.Module):
    """ELU, conv3 to half the channels, ELU, conv1 back; plus a conv1 shortcut."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.ELU(), SamePadConv1d(channels, channels // 2, 3),
                                   nn.ELU(), SamePadConv1d(channels // 2, channels, 1))
        self.shortcut = SamePadConv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.block(x)


class SkipLSTM(nn.Module):
    """A two-layer LSTM over time on (B, C, T) features, added to its input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(channels, channels, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(x.permute(2, 0, 1))
        return y.permute(1, 2, 0) + x


class SEANetStack(nn.Module):
    """conv7 1->32; per stride a residual block, ELU and a strided conv doubling the channels; LSTM; ELU; conv7."""

    def __init__(self) -> None:
        super().__init__()
        width = ENCODER_FILTERS
        layers: list[nn.Module] = [SamePadConv1d(1, width, 7)]
        for stride in ENCODER_STRIDES:
            layers += [EncoderResBlock(width), nn.ELU(), SamePadConv1d(width, 2 * width, 2 * stride, stride)]
            width *= 2
        layers += [SkipLSTM(width), nn.ELU(), SamePadConv1d(width, ENCODER_DIM, 7)]
        self.model = nn.Sequential(*layers)


class WaveVAEEncoder(nn.Module):
    """Encoder path of WavVAE_V3: 24 kHz wav (B, N) -> posterior mean and log-variance (B, ceil(N/960), 32) each.

    Attribute names follow the checkpoint keys (`encoder.encoder.model.*`, `proj_to_z.*`)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.encoder = SEANetStack()
        self.proj_to_z = nn.Linear(ENCODER_DIM, 2 * LATENT_DIM)

    def posterior(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, logvar), each (B, T, 32); logvar clamped to [-30, 20] as the VAE's Gaussian does."""
        features = self.encoder.encoder.model(wav[:, None, :])
        z = self.proj_to_z(features.transpose(1, 2))
        mean, logvar = z.split(LATENT_DIM, dim=-1)
        return mean, logvar.clamp(-30.0, 20.0)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """The latent of a wav: the posterior mean (B, T, 32). The reference draws one sample from the posterior;
        the mean is its expectation and keeps a cloned voice the same from call to call."""
        return self.posterior(wav)[0]
