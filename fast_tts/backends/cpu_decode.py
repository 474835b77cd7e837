"""Decode steps of a bf16 decoder on CPU through the native kernels: a whole step in one call.

A decode step (one new position per row) of `models.transformer.Transformer` is, per layer, four matmuls and about
fifty small torch operations whose dispatch cost about a third of a batch-1 step. `NativeDecoder` runs the same
step as one call of the native library (`fast_tts_decode_step`): the tiled bf16 matmuls, the norms, rotary embedding
and cache write, attention over the bf16 cache, and SwiGLU, on the library's own thread pool, with buffers reused
across steps. It rounds to bf16 where the torch code does, so the two agree to bf16 rounding
(tests/test_native_kernels.py). Prefill and every other configuration keep the torch path.
"""

from __future__ import annotations

import ctypes
import math

import torch

from fast_tts.backends.cpu_linear import TiledBF16Linear
from fast_tts.backends.native import MAX_HEAD_DIM, Layer, StepBuffers, bf16_kernels
from fast_tts.models.transformer import Rows, Transformer


class NativeDecoder:
    """Runs `Transformer` decode steps with the native kernels; build it with `for_model`, which may refuse."""

    def __init__(self, model: Transformer, lib: ctypes.CDLL) -> None:
        cfg = model.config
        self.model, self.lib = model, lib
        self.heads, self.kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.dim_per_head
        self.hidden, self.inner, self.eps = cfg.hidden_size, cfg.intermediate_size, cfg.rms_norm_eps
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.final_norm = model.norm.weight.detach().contiguous()
        self._norms = [
            (
                layer.input_layernorm.weight.detach().contiguous(),
                layer.post_attention_layernorm.weight.detach().contiguous(),
            )
            for layer in model.layers
        ]
        self._layers: ctypes.Array | None = None  # built for the current cache (setup_cache may reallocate it)
        self._layers_cache_ptr = 0
        self._buffers: dict[tuple[int, int], tuple[dict[str, torch.Tensor], StepBuffers]] = {}

    @staticmethod
    def supports(model: Transformer) -> bool:
        """True when the kernels can run `model`'s decode steps: bf16 weights in tiled layers, on CPU, with a head
        size and grouping they handle (the cache must then be allocated in bf16)."""
        linears = [m for layer in model.layers for m in (layer.self_attn.wqkv, layer.self_attn.o_proj)] + [
            m for layer in model.layers for m in (layer.mlp.w13, layer.mlp.down_proj)
        ]
        cfg = model.config
        return (
            bf16_kernels() is not None
            and all(isinstance(m, TiledBF16Linear) and m.padded_features == m.out_features for m in linears)
            and model.norm.weight.dtype == torch.bfloat16
            and model.norm.weight.device.type == "cpu"
            and cfg.dim_per_head <= MAX_HEAD_DIM
            and cfg.dim_per_head % 2 == 0
            and cfg.num_heads % cfg.num_kv_heads == 0
        )

    @classmethod
    def for_model(cls, model: Transformer) -> NativeDecoder | None:
        """A decoder for `model`, or None unless `supports(model)` and its cache is bf16 on CPU."""
        lib = bf16_kernels()
        fits = (
            lib is not None
            and cls.supports(model)
            and model.k_cache is not None
            and model.k_cache.dtype == torch.bfloat16
            and model.k_cache.device.type == "cpu"
        )
        return cls(model, lib) if fits else None

    def _layer_table(self) -> ctypes.Array:
        """The per-layer pointer table of the native step, rebuilt when the cache was reallocated."""
        model = self.model
        assert model.k_cache is not None and model.v_cache is not None
        if self._layers is None or self._layers_cache_ptr != model.k_cache.data_ptr():
            entries = []
            for i, (layer, (norm_in, norm_post)) in enumerate(zip(model.layers, self._norms)):
                linears = (layer.self_attn.wqkv, layer.self_attn.o_proj, layer.mlp.w13, layer.mlp.down_proj)
                packed = [m.packed.data_ptr() for m in linears]
                biases = [None if m.bias is None else m.bias.data_ptr() for m in linears]
                caches = (model.k_cache[i].data_ptr(), model.v_cache[i].data_ptr())
                entries.append(Layer(norm_in.data_ptr(), norm_post.data_ptr(), *packed, *biases, *caches))
            self._layers = (Layer * len(entries))(*entries)
            self._layers_cache_ptr = model.k_cache.data_ptr()
        return self._layers

    def _buffers_for(self, batch: int) -> tuple[dict[str, torch.Tensor], StepBuffers]:
        """Work buffers for `batch` rows (kept alive here; the native step gets their pointers)."""
        key = (batch, self.model.max_seq)  # the scores grow with the cache
        found = self._buffers.get(key)
        if found is None:
            bf16, f32 = torch.bfloat16, torch.float32
            qkv_width = (self.heads + 2 * self.kv_heads) * self.head_dim
            tensors = {
                "normed": torch.empty(batch, self.hidden, dtype=bf16),
                "qkv": torch.empty(batch, qkv_width, dtype=bf16),
                "attended": torch.empty(batch, self.heads * self.head_dim, dtype=bf16),
                "projected": torch.empty(batch, self.hidden, dtype=bf16),
                "gate_up": torch.empty(batch, 2 * self.inner, dtype=bf16),
                "activated": torch.empty(batch, self.inner, dtype=bf16),
                "q": torch.empty(batch, self.heads, self.head_dim, dtype=f32),
                "scores": torch.empty(batch * self.heads * self.model.max_seq, dtype=f32),
            }
            found = tensors, StepBuffers(*(tensors[name].data_ptr() for name, _ in StepBuffers._fields_))
            self._buffers[key] = found
        return found

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, positions: torch.Tensor, rows: Rows) -> torch.Tensor:
        """Final-norm hidden states (B, 1, H) for inputs `x` (B, 1, H) at `positions` (B, 1) in cache `rows`."""
        model = self.model
        batch = x.shape[0]
        if int(positions.max()) >= model.max_seq:
            raise ValueError(f"position {int(positions.max())} is past the KV cache length {model.max_seq}")
        layers = self._layer_table()
        _, buffers = self._buffers_for(batch)
        if isinstance(rows, slice):
            row_index = torch.arange(rows.start or 0, (rows.start or 0) + batch)
        else:
            row_index = rows.to(torch.int64).contiguous()
        pos = positions[:, 0].to(torch.int64).contiguous()
        cos, sin = model.rope(positions, torch.bfloat16)
        cos, sin = cos.reshape(batch, self.head_dim).contiguous(), sin.reshape(batch, self.head_dim).contiguous()
        hidden = x.reshape(batch, self.hidden).to(torch.bfloat16).clone()
        out = torch.empty(batch, self.hidden, dtype=torch.bfloat16)
        self.lib.fast_tts_decode_step(
            layers,
            len(layers),
            self.final_norm.data_ptr(),
            hidden.data_ptr(),
            out.data_ptr(),
            cos.data_ptr(),
            sin.data_ptr(),
            row_index.data_ptr(),
            pos.data_ptr(),
            ctypes.byref(buffers),
            batch,
            self.hidden,
            self.inner,
            self.heads,
            self.kv_heads,
            self.head_dim,
            model.max_seq,
            self.eps,
            self.scale,
            torch.get_num_threads(),
        )
        return out.view(batch, 1, self.hidden)
