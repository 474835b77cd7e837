"""Decode steps of a bf16 decoder on CPU through the native kernels: one call per group of small operations.

A decode step (one new position per row) of `models.transformer.Transformer` is, per layer, four matmuls and about
fifty small torch operations whose dispatch costs about a third of a batch-1 step. `NativeDecoder` runs the same
step with the native library: the tiled bf16 matmuls plus one call each for the norm, rotary embedding and cache
write, attention, and SwiGLU, with buffers reused across layers and steps. It rounds to bf16 where the torch code
does, so the two agree to bf16 rounding (tests/test_native_kernels.py). Prefill and every other configuration keep
the torch path.
"""

from __future__ import annotations

import ctypes
import math

import torch

from fast_tts.backends.cpu_linear import TiledBF16Linear
from fast_tts.backends.native import MAX_HEAD_DIM, bf16_kernels
from fast_tts.models.transformer import Rows, Transformer


class NativeDecoder:
    """Runs `Transformer` decode steps with the native kernels; build it with `for_model`, which may refuse."""

    def __init__(self, model: Transformer, lib: ctypes.CDLL) -> None:
        cfg = model.config
        self.model, self.lib = model, lib
        self.heads, self.kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.dim_per_head
        self.hidden, self.inner, self.eps = cfg.hidden_size, cfg.intermediate_size, cfg.rms_norm_eps
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.layers = [
            (
                layer.input_layernorm.weight.detach().contiguous(),
                layer.self_attn.wqkv,
                layer.self_attn.o_proj,
                layer.post_attention_layernorm.weight.detach().contiguous(),
                layer.mlp.w13,
                layer.mlp.down_proj,
            )
            for layer in model.layers
        ]
        self.final_norm = model.norm.weight.detach().contiguous()
        self._buffers: dict[int, dict[str, torch.Tensor]] = {}

    @classmethod
    def for_model(cls, model: Transformer) -> NativeDecoder | None:
        """A decoder for `model`, or None unless its weights are bf16 in tiled layers and its cache is float32."""
        lib = bf16_kernels()
        linears = [m for layer in model.layers for m in (layer.self_attn.wqkv, layer.self_attn.o_proj)] + [
            m for layer in model.layers for m in (layer.mlp.w13, layer.mlp.down_proj)
        ]
        cfg = model.config
        fits = (
            lib is not None
            and all(isinstance(m, TiledBF16Linear) and m.padded_features == m.out_features for m in linears)
            and model.k_cache is not None
            and model.k_cache.dtype == torch.float32
            and model.k_cache.device.type == "cpu"
            and model.norm.weight.dtype == torch.bfloat16
            and cfg.dim_per_head <= MAX_HEAD_DIM
            and cfg.dim_per_head % 2 == 0
            and cfg.num_heads % cfg.num_kv_heads == 0
        )
        return cls(model, lib) if fits else None

    def _buffers_for(self, batch: int) -> dict[str, torch.Tensor]:
        buffers = self._buffers.get(batch)
        if buffers is None:
            bf16, f32 = torch.bfloat16, torch.float32
            qkv_width = (self.heads + 2 * self.kv_heads) * self.head_dim
            buffers = {
                "normed": torch.empty(batch, self.hidden, dtype=bf16),
                "qkv": torch.empty(batch, qkv_width, dtype=bf16),
                "q": torch.empty(batch, self.heads, self.head_dim, dtype=f32),
                "attended": torch.empty(batch, self.heads * self.head_dim, dtype=bf16),
                "projected": torch.empty(batch, self.hidden, dtype=bf16),
                "gate_up": torch.empty(batch, 2 * self.inner, dtype=bf16),
                "activated": torch.empty(batch, self.inner, dtype=bf16),
                "scores": torch.empty(batch * self.heads * self.model.max_seq, dtype=f32),
            }
            self._buffers[batch] = buffers
        return buffers

    def _matmul(self, layer: TiledBF16Linear, x: torch.Tensor, out: torch.Tensor, threads: int) -> None:
        self.lib.fast_tts_matmul_bf16(
            x.data_ptr(),
            layer.packed.data_ptr(),
            None if layer.bias is None else layer.bias.data_ptr(),
            out.data_ptr(),
            x.shape[0],
            layer.out_features,
            layer.in_features,
            0,
            threads,
        )

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, positions: torch.Tensor, rows: Rows) -> torch.Tensor:
        """Final-norm hidden states (B, 1, H) for inputs `x` (B, 1, H) at `positions` (B, 1) in cache `rows`."""
        model, lib = self.model, self.lib
        assert model.k_cache is not None and model.v_cache is not None
        batch = x.shape[0]
        if int(positions.max()) >= model.max_seq:
            raise ValueError(f"position {int(positions.max())} is past the KV cache length {model.max_seq}")
        threads = torch.get_num_threads()
        buf = self._buffers_for(batch)
        if isinstance(rows, slice):
            row_index = torch.arange(rows.start or 0, (rows.start or 0) + batch)
        else:
            row_index = rows.to(torch.int64).contiguous()
        pos = positions[:, 0].to(torch.int64).contiguous()
        cos, sin = model.rope(positions, torch.bfloat16)
        cos, sin = cos.reshape(batch, self.head_dim).contiguous(), sin.reshape(batch, self.head_dim).contiguous()
        hidden = x.reshape(batch, self.hidden).to(torch.bfloat16).clone()
        sizes = (batch, self.heads, self.kv_heads, self.head_dim, model.max_seq)
        for i, (norm_in, wqkv, o_proj, norm_post, w13, down) in enumerate(self.layers):
            k_cache, v_cache = model.k_cache[i], model.v_cache[i]
            lib.fast_tts_rms_norm_bf16(
                hidden.data_ptr(), norm_in.data_ptr(), buf["normed"].data_ptr(), batch, self.hidden, self.eps
            )
            self._matmul(wqkv, buf["normed"], buf["qkv"], threads)
            lib.fast_tts_rope_store(
                buf["qkv"].data_ptr(),
                cos.data_ptr(),
                sin.data_ptr(),
                buf["q"].data_ptr(),
                k_cache.data_ptr(),
                v_cache.data_ptr(),
                row_index.data_ptr(),
                pos.data_ptr(),
                *sizes,
            )
            lib.fast_tts_attend_decode(
                buf["q"].data_ptr(),
                k_cache.data_ptr(),
                v_cache.data_ptr(),
                row_index.data_ptr(),
                pos.data_ptr(),
                buf["attended"].data_ptr(),
                buf["scores"].data_ptr(),
                *sizes,
                self.scale,
                threads,
            )
            self._matmul(o_proj, buf["attended"], buf["projected"], threads)
            hidden.add_(buf["projected"])
            lib.fast_tts_rms_norm_bf16(
                hidden.data_ptr(), norm_post.data_ptr(), buf["normed"].data_ptr(), batch, self.hidden, self.eps
            )
            self._matmul(w13, buf["normed"], buf["gate_up"], threads)
            lib.fast_tts_silu_mul_bf16(buf["gate_up"].data_ptr(), buf["activated"].data_ptr(), batch, self.inner)
            self._matmul(down, buf["activated"], buf["projected"], threads)
            hidden.add_(buf["projected"])
        out = torch.empty(batch, self.hidden, dtype=torch.bfloat16)
        lib.fast_tts_rms_norm_bf16(
            hidden.data_ptr(), self.final_norm.data_ptr(), out.data_ptr(), batch, self.hidden, self.eps
        )
        return out.view(batch, 1, self.hidden)
