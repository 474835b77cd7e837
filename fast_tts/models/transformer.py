"""One compact Llama / Qwen2 decoder with a preallocated, row-addressed KV cache.

Shared by every family that has a causal language model (ChatTTS GPT, MegaTTS3 G2P). The module holds no
embeddings and no heads: families own those, because they differ (ChatTTS sums four codebook embeddings).

Cache model: `setup_cache(max_batch, max_seq)` allocates K/V once.
Cache layout: (layers, max_batch, kv_heads, max_seq, head_dim). A caller addresses cache rows explicitly (`rows`): a slice keeps attention reads as views (no copies), which is
what a scheduler that keeps its running requests compacted in rows 0..B-1 uses; `move_row` supports that compaction.
Attention masks are derived from positions alone: a query at position p sees the keys at positions <= p of its row,
so stale entries of a row's previous occupant are never read.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

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
    def from_hf(cls, cfg: Mapping[str, Any]) -> "DecoderConfig":
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
        cache: tuple[torch.Tensor, torch.Tensor] | None,
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
            k_cache, v_cache = cache
            row_idx = _row_index(rows, bsz, x.device)[:, None]
            k_cache[row_idx, :, positions] = k.transpose(1, 2).to(k_cache.dtype)
            v_cache[row_idx, :, positions] = v.transpose(1, 2).to(v_cache.dtype)
            k = k_cache[rows][:, :, :kv_len]
            v = v_cache[rows][:, :, :kv_len]
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


class Transformer(nn.Module):
    """Decoder stack (no embeddings, no head) returning final-norm hidden states."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.config = cfg
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        dim = cfg.dim_per_head
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None
        self.register_load_state_dict_pre_hook(_fuse_checkpoint_names)

    @property
    def max_batch(self) -> int:
        return 0 if self.k_cache is None else self.k_cache.shape[1]

    @property
    def max_seq(self) -> int:
        return 0 if self.k_cache is None else self.k_cache.shape[3]

    def setup_cache(self, max_batch: int, max_seq: int, dtype: torch.dtype | None = None) -> None:
        """Allocate the KV cache once; later calls with the same shape keep it."""
        dtype = dtype or self.norm.weight.dtype
        cfg = self.config
        shape = (cfg.num_layers, max_batch, cfg.num_kv_heads, max_seq, cfg.dim_per_head)
        if self.k_cache is not None and self.k_cache.shape == shape and self.k_cache.dtype == dtype:
            return
        device = self.norm.weight.device
        self.k_cache = torch.zeros(shape, dtype=dtype, device=device)
        self.v_cache = torch.zeros(shape, dtype=dtype, device=device)

    def sharing_weights(self) -> "Transformer":
        """Another view of this decoder with the same weights (no copy) and a KV cache of its own.

        Lets two backends (e.g. ChatTTS code and refine-text generation) run the same weights on separate caches.
        """
        view = copy.copy(self)  # modules, parameters and buffers are shared; cache attributes become its own
        view.k_cache = view.v_cache = None
        return view

    def free_cache(self) -> None:
        self.k_cache = self.v_cache = None

    def move_row(self, src: int, dst: int) -> None:
        """Copy one cache row over another (for compacting running requests into rows 0..B-1)."""
        assert self.k_cache is not None and self.v_cache is not None
        self.k_cache[:, dst] = self.k_cache[:, src]
        self.v_cache[:, dst] = self.v_cache[:, src]

    def rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1, T, head_dim)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        rows: Rows | None = None,
        kv_len: int | None = None,
        key_padding_mask: torch.Tensor | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Run the stack on `x` (B, T, H) at `positions` (B, T).

        With the cache (default when allocated): K/V are written at `positions` of cache `rows` (default rows 0..B-1)
        and each query attends to the keys of its row at positions <= its own; `kv_len` bounds the keys read
        (default max(positions)+1). Without the cache: causal self-attention over `x` in index order, with optional
        `key_padding_mask` (B, T) marking valid keys.
        """
        cached = use_cache and self.k_cache is not None
        if cached:
            kv_len = kv_len or int(positions.max()) + 1
            if kv_len > self.max_seq:
                raise ValueError(f"position {kv_len - 1} is past the KV cache length {self.max_seq}")
            rows = rows if rows is not None else slice(0, x.shape[0])
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
            cache = (self.k_cache[i], self.v_cache[i]) if cached else None
            h = layer.input_layernorm(x)
            x = x + layer.self_attn(h, cos, sin, mask, cache, rows, positions, kv_len)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.norm(x)

