"""Sizes of the ChatTTS modules, inferred from the checkpoint tensors so any size loads through one path.

Only what the tensors cannot tell keeps the real model's default: the FSQ levels (5, 5, 5, 5), the residual depth
R = 2 and the residual scale semantics (see quantizer.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fast_tts.models.chattts.quantizer import ScaleBase
from fast_tts.models.transformer import DecoderConfig

Shapes = Mapping[str, Sequence[int]]


@dataclass(frozen=True)
class ConvStackConfig:
    """One ConvNeXt conv stack (DVAE encoder/decoder, GPT-hidden decoder)."""

    idim: int
    odim: int
    hidden: int
    n_layer: int
    bn_dim: int


@dataclass(frozen=True)
class DVAEConfig:
    encoder: ConvStackConfig
    decoder: ConvStackConfig
    vq_dim: int
    levels: tuple[int, ...] = (5, 5, 5, 5)
    groups: int = 2
    residuals: int = 2
    residual_scale_base: ScaleBase = "levels_minus_1"


@dataclass(frozen=True)
class VocosConfig:
    dim: int
    intermediate_dim: int
    num_layers: int
    n_mels: int = 100
    n_fft: int = 1024
    hop_length: int = 256


@dataclass(frozen=True)
class EmbedConfig:
    hidden_size: int
    num_audio_tokens: int
    num_text_tokens: int
    num_vq: int


@dataclass(frozen=True)
class ChatTTSConfig:
    """Everything needed to build the ChatTTS modules."""

    gpt: DecoderConfig
    embed: EmbedConfig
    decoder: ConvStackConfig
    dvae: DVAEConfig
    vocos: VocosConfig
    sample_rate: int = 24000


def _count(shapes: Shapes, pattern: str) -> int:
    """Number of distinct indices i for keys matching `pattern` (with one `(\\d+)` group)."""
    rx = re.compile(pattern)
    return len({m.group(1) for k in shapes if (m := rx.match(k))})


def _need(shapes: Shapes, key: str, component: str) -> Sequence[int]:
    if key not in shapes:
        raise KeyError(f"{component}: missing tensor {key!r}")
    return shapes[key]


def conv_stack_from_shapes(shapes: Shapes, prefix: str, component: str) -> ConvStackConfig:
    """Sizes of a conv stack from its `conv_in` / `conv_out` weights and block count."""
    bn, idim, _ = _need(shapes, prefix + "conv_in.0.weight", component)
    hidden = _need(shapes, prefix + "conv_in.2.weight", component)[0]
    odim = _need(shapes, prefix + "conv_out.weight", component)[0]
    n_layer = _count(shapes, re.escape(prefix) + r"decoder_block\.(\d+)\.")
    return ConvStackConfig(idim=idim, odim=odim, hidden=hidden, n_layer=n_layer, bn_dim=bn)


def config_from_shapes(
    gpt_json: Mapping, shapes: Mapping[str, Shapes], residual_scale_base: ScaleBase = "levels_minus_1",
    levels: tuple[int, ...] = (5, 5, 5, 5), residuals: int = 2,
) -> ChatTTSConfig:
    """Build the config from `gpt/config.json` and per-component {key: shape} maps (vocos, dvae, decoder, embed)."""
    gpt = DecoderConfig.from_hf(gpt_json)
    emb = shapes["embed"]
    n_audio, hidden = _need(emb, "emb_code.0.weight", "embed")
    embed = EmbedConfig(
        hidden_size=hidden,
        num_audio_tokens=n_audio,
        num_text_tokens=_need(emb, "emb_text.weight", "embed")[0],
        num_vq=_count(emb, r"emb_code\.(\d+)\.weight"),
    )
    dv = shapes["dvae"]
    groups = _count(dv, r"vq_layer\.quantizer\.rvqs\.(\d+)\.")
    n_levels, group_dim = _need(dv, "vq_layer.quantizer.rvqs.0.project_in.weight", "dvae")
    if n_levels != len(levels):
        raise KeyError(f"dvae: the quantizer projects to {n_levels} dims but {len(levels)} FSQ levels are configured")
    dvae = DVAEConfig(
        encoder=conv_stack_from_shapes(dv, "encoder.", "dvae"),
        decoder=conv_stack_from_shapes(dv, "decoder.", "dvae"),
        vq_dim=group_dim * groups,
        levels=tuple(levels),
        groups=groups,
        residuals=residuals,
        residual_scale_base=residual_scale_base,
    )
    vc = shapes["vocos"]
    dim, n_mels, _ = _need(vc, "backbone.embed.weight", "vocos")
    vocos = VocosConfig(
        dim=dim,
        intermediate_dim=_need(vc, "backbone.convnext.0.pwconv1.weight", "vocos")[0],
        num_layers=_count(vc, r"backbone\.convnext\.(\d+)\."),
        n_mels=n_mels,
        n_fft=_need(vc, "head.out.weight", "vocos")[0] - 2,
    )
    return ChatTTSConfig(
        gpt=gpt, embed=embed, decoder=conv_stack_from_shapes(shapes["decoder"], "decoder.", "decoder"),
        dvae=dvae, vocos=vocos,
    )
