"""One compact Llama / Qwen2 decoder and its KV cache, shared by every family with a causal language model (ChatTTS
GPT, MegaTTS3 G2P). The module holds no embeddings and no heads: families own those (ChatTTS sums four codebook
embeddings).

`KVCache` is an object of its own (gpt-fast's KVCache, with rows addressed explicitly): whoever runs the model owns
the cache and passes it to `forward`, so two runners can share one decoder's weights, each with a cache of its own.
Its layout is (layers, max_rows, kv_heads, max_seq, head_dim). A caller addresses cache rows explicitly (`rows`); a
slice keeps attention reads as views (no copies), which is what a scheduler that keeps its running requests
compacted in rows 0..B-1 uses. Attention masks are derived from positions alone: a query at position p sees the keys
at positions <= p of its row, so stale entries of a row's previous occupant are never read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fast_tts.kernels.decode import DecodeLayer, DecoderShape, DecodeStep, fits

Rows = slice | torch.Tensor


@dataclass(frozen=True)
class DecoderConfig:
    """Architecture of a Llama-style decoder; `qkv_bias=True` gives Qwen2."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    qkv_bias: bool = False
    max_position_embeddings: int = 4096
    head_dim: int | None = None

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @classmethod
    def from_hf(cls, cfg: Mapping[str, Any]) -> DecoderConfig:
        """Build from a Hugging Face `config.json` dict of a Llama or Qwen2 model."""
        arch = " ".join(cfg.get("architectures") or []) + " " + str(cfg.get("model_type", ""))
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"unsupported hidden_act {act!r} in decoder config (only 'silu' is implemented)")
        rope = cfg.get("rope_parameters") or {}  # transformers >= 5 keeps rope_theta here
        scaling = cfg.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
        if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
            raise ValueError(f"unsupported rope_scaling {scaling!r} in decoder config")
        heads = int(cfg["num_attention_heads"])
        return cls(
            hidden_size=int(cfg["hidden_size"]),
            intermediate_size=int(cfg["intermediate_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=float(cfg.get("rope_theta", rope.get("rope_theta", 10000.0))),
            qkv_bias=bool(cfg.get("attention_bias", "qwen2" in arch.lower())),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
            head_dim=cfg.get("head_dim"),
        )


class RMSNorm(nn.Module):
    """RMS normalisation computed in float32, as Llama/Qwen2 do."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    """Grouped-query attention with a fused QKV projection (checkpoint q/k/v are fused at load time)."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.dim_per_head
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        self.split = (q_dim, kv_dim, kv_dim)
        self.wqkv = nn.Linear(cfg.hidden_size, q_dim + 2 * kv_dim, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(q_dim, cfg.hidden_size, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        cache: KVCache | None,
        layer: int,
        rows: Rows | None,
        positions: torch.Tensor,
        kv_len: int,
    ) -> torch.Tensor:
        bsz, seq, _ = x.shape
        q, k, v = self.wqkv(x).split(self.split, dim=-1)
        q = q.view(bsz, seq, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(bsz, seq, self.n_kv, self.head_dim).transpose(1, 2)
        v = v.view(bsz, seq, self.n_kv, self.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if cache is not None:
            k, v = cache.update(layer, rows, positions, k, v, kv_len)
            if k.dtype == torch.bfloat16 and k.device.type == "cpu":
                k, v = k.float(), v.float()  # CPU SDPA is much faster in float32; the widening is exact
        # Attention runs in the cache's dtype: a float32 cache beside bf16 weights keeps CPU SDPA on its fast path.
        out = F.scaled_dot_product_attention(q.to(k.dtype), k, v, attn_mask=mask, enable_gqa=self.n_kv != self.n_heads)
        return self.o_proj(out.transpose(1, 2).reshape(bsz, seq, -1).to(x.dtype))


class MLP(nn.Module):
    """SwiGLU feed-forward with gate and up projections fused into one matmul."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.w13 = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)


def _row_index(rows: Rows | None, bsz: int, device: torch.device) -> torch.Tensor:
    if rows is None:
        return torch.arange(bsz, device=device)
    if isinstance(rows, slice):
        start = rows.start or 0
        return torch.arange(start, start + bsz, device=device)
    return rows


def _fuse_checkpoint_names(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    """Accept Hugging Face names (q/k/v_proj, gate/up_proj) and fuse them into wqkv / w13 in place."""
    for key in [k for k in state_dict if k.startswith(prefix) and k.endswith("self_attn.q_proj.weight")]:
        base = key[: -len("q_proj.weight")]
        for kind in ("weight", "bias"):
            parts = [base + f"{p}_proj.{kind}" for p in "qkv"]
            if all(p in state_dict for p in parts):
                state_dict[base + f"wqkv.{kind}"] = torch.cat([state_dict.pop(p) for p in parts])
    for key in [k for k in state_dict if k.startswith(prefix) and k.endswith("mlp.gate_proj.weight")]:
        base = key[: -len("gate_proj.weight")]
        up = base + "up_proj.weight"
        if up in state_dict:
            state_dict[base + "w13.weight"] = torch.cat([state_dict.pop(key), state_dict.pop(up)])


def rotary_inv_freq(cfg: DecoderConfig) -> torch.Tensor:
    """Rotary inverse frequencies (a non-persistent buffer: rebuilt, not loaded, after meta-device construction)."""
    dim = cfg.dim_per_head
    return 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


class KVCache:
    """Preallocated keys and values for `max_rows` sequences of up to `max_seq` positions, every layer."""

    def __init__(self, cfg: DecoderConfig, max_rows: int, max_seq: int, dtype: torch.dtype,
                 device: torch.device | str = "cpu") -> None:
        shape = (cfg.num_layers, max_rows, cfg.num_kv_heads, max_seq, cfg.dim_per_head)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    @property
    def max_rows(self) -> int:
        return self.k.shape[1]

    @property
    def max_seq(self) -> int:
        return self.k.shape[3]

    @property
    def dtype(self) -> torch.dtype:
        return self.k.dtype

    def update(self, layer: int, rows: Rows | None, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               kv_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Write `k`, `v` (B, kv_heads, T, head_dim) at `positions` (B, T) of cache `rows` (default 0..B-1) in
        `layer`; return that layer's keys and values of those rows at positions < kv_len."""
        bsz = k.shape[0]
        rows = rows if rows is not None else slice(0, bsz)
        index = _row_index(rows, bsz, k.device)[:, None]
        k_layer, v_layer = self.k[layer], self.v[layer]
        k_layer[index, :, positions] = k.transpose(1, 2).to(k_layer.dtype)
        v_layer[index, :, positions] = v.transpose(1, 2).to(v_layer.dtype)
        return k_layer[rows][:, :, :kv_len], v_layer[rows][:, :, :kv_len]

    def copy_row(self, src: int, dst: int, length: int) -> None:
        """Copy positions 0..length-1 of row `src` over row `dst` (compaction of running requests)."""
        if length > 0:
            self.k[:, dst, :, :length] = self.k[:, src, :, :length]
            self.v[:, dst, :, :length] = self.v[:, src, :, :length]


class Transformer(nn.Module):
    """Decoder stack (no embeddings, no head) returning final-norm hidden states."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.config = cfg
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.register_buffer("inv_freq", rotary_inv_freq(cfg), persistent=False)
        self.register_load_state_dict_pre_hook(_fuse_checkpoint_names)

    def new_cache(self, max_rows: int, max_seq: int, dtype: torch.dtype | None = None) -> KVCache:
        """A KV cache for this decoder on its device (dtype: the weights' unless given)."""
        return KVCache(self.config, max_rows, max_seq, dtype or self.norm.weight.dtype, self.norm.weight.device)

    def rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1, T, head_dim)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache | None = None,
        rows: Rows | None = None,
        kv_len: int | None = None,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the stack on `x` (B, T, H) at `positions` (B, T).

        With a cache: K/V are written at `positions` of cache `rows` (default rows 0..B-1) and each query attends to
        the keys of its row at positions <= its own; `kv_len` bounds the keys read (default max(positions)+1).
        Without: causal self-attention over `x` in index order, with optional `key_padding_mask` (B, T) marking
        valid keys.
        """
        if cache is not None:
            kv_len = kv_len or int(positions.max()) + 1
            if kv_len > cache.max_seq:
                raise ValueError(f"position {kv_len - 1} is past the KV cache length {cache.max_seq}")
            key_pos = torch.arange(kv_len, device=x.device)
            mask = key_pos[None, None, None, :] <= positions[:, None, :, None]
        else:
            seq = x.shape[1]
            idx = torch.arange(seq, device=x.device)
            mask = (idx[None, :] <= idx[:, None])[None, None]
            if key_padding_mask is not None:
                mask = mask & key_padding_mask[:, None, None, :].bool()
            kv_len = seq
        cos, sin = self.rope(positions, x.dtype)
        for i, layer in enumerate(self.layers):
            h = layer.input_layernorm(x)
            x = x + layer.self_attn(h, cos, sin, mask, cache, i, rows, positions, kv_len)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.norm(x)

    def native_decoder(self, cache: KVCache) -> NativeDecoder | None:
        """Decode steps of this decoder over `cache` in one native call each, or None where the kernels cannot run
        them (they need bf16 or float32 weights in tiled layers and a cache of that dtype on CPU: see
        fast_tts.kernels.decode)."""
        cfg = self.config
        shape = DecoderShape(cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads,
                             cfg.dim_per_head, cfg.rms_norm_eps)
        layers = [
            DecodeLayer(layer.input_layernorm.weight.detach().contiguous(),
                        layer.post_attention_layernorm.weight.detach().contiguous(), *_linears(layer),
                        cache.k[i], cache.v[i])
            for i, layer in enumerate(self.layers)
        ]
        final_norm = self.norm.weight.detach().contiguous()
        if not fits(shape, layers, final_norm):
            return None
        return NativeDecoder(self, DecodeStep(shape, layers, final_norm))


def _linears(layer: Block) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
    """A layer's four linears in decode order: qkv, o, gate+up, down."""
    return layer.self_attn.wqkv, layer.self_attn.o_proj, layer.mlp.w13, layer.mlp.down_proj


class NativeDecoder:
    """`Transformer` decode steps (one new position per row) through `fast_tts.kernels.decode.DecodeStep`."""

    def __init__(self, model: Transformer, step: DecodeStep) -> None:
        self.model, self.step = model, step
        # the rotary tables of every cache position, computed once by the model's own `rope` (the same numbers):
        # torch's cos and sin open an OpenMP region per call on MKL builds, whose idle workers then spin on the
        # cores the step's threads need
        cos, sin = model.rope(torch.arange(step.max_seq)[None], step.dtype)
        self.cos, self.sin = cos.reshape(step.max_seq, -1), sin.reshape(step.max_seq, -1)

    def __call__(self, x: torch.Tensor, positions: torch.Tensor, rows: Rows) -> torch.Tensor:
        """Final-norm hidden states (B, 1, H) for inputs `x` (B, 1, H) at `positions` (B, 1) in cache `rows`."""
        batch = x.shape[0]
        if isinstance(rows, slice):
            rows = torch.arange(rows.start or 0, (rows.start or 0) + batch)
        at = positions[:, 0].clamp(max=self.step.max_seq - 1)  # the step rejects positions past its cache
        out = self.step(x.reshape(batch, -1), self.cos[at], self.sin[at], rows, positions[:, 0])
        return out.view(batch, 1, -1)
