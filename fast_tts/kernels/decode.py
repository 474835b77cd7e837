"""A whole decode step of a bf16 (bf16, int8 or 4-bit weights) or float32 Llama/Qwen2 decoder on CPU in one native
call (`decode_step.c`).

A decode step (one new position per row) is, per layer, four matmuls and about fifty small tensor operations whose
dispatch cost about a third of a batch-1 step. `DecodeStep` runs the same step as one call: the tiled matmuls, the
norms, rotary embedding and cache write, attention over the cache, and SwiGLU, on the library's own thread pool,
with work buffers reused across steps. In bf16 it rounds to bf16 where the torch code of models/transformer.py does,
so the two agree to bf16 rounding; in float32 they agree to float32 rounding (tests/test_native_kernels.py). This
file knows tensors and kernels, not models: the decoder describes itself with `DecoderShape` and one `DecodeLayer`
per layer, all in one dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fast_tts.kernels import Native, native
from fast_tts.kernels.linear import TILED, TiledBF16Linear, TiledF32Linear, TiledInt4Linear, TiledInt8Linear

Tiled = TiledBF16Linear | TiledF32Linear | TiledInt8Linear | TiledInt4Linear

_BUFFERS = ("normed", "qkv", "attended", "projected", "gate_up", "activated", "q", "scores")


@dataclass(frozen=True)
class DecoderShape:
    """Sizes of a Llama/Qwen2 decoder, as the decode step needs them."""

    hidden: int
    inner: int
    heads: int
    kv_heads: int
    head_dim: int
    eps: float


@dataclass(frozen=True)
class DecodeLayer:
    """One layer's norm weights, tiled linears (qkv fused, gate and up fused) and its cache
    (max_rows, kv_heads, max_seq, head_dim), all bf16 or all float32 (int8 or 4-bit linears go with bf16)."""

    input_norm: torch.Tensor
    post_norm: torch.Tensor
    qkv: Tiled
    o: Tiled
    gate_up: Tiled
    down: Tiled
    k_cache: torch.Tensor
    v_cache: torch.Tensor

    @property
    def linears(self) -> tuple[Tiled, ...]:
        return self.qkv, self.o, self.gate_up, self.down


def _step_kind(lib: Native, dtype: torch.dtype, layers: Sequence[DecodeLayer]) -> int | None:
    """The native kind of step for these layers' linears in activation dtype `dtype`, or None: every linear the
    dtype's tiled kernel, or (bf16) every one int8 or every one 4-bit, unpadded and not float_out, on a CPU that
    runs them."""
    linears = [m for layer in layers for m in layer.linears]
    kinds = {TiledInt8Linear: lib.lib.FAST_TTS_STEP_INT8, TiledInt4Linear: lib.lib.FAST_TTS_STEP_INT4}
    if dtype not in TILED:
        return None
    if all(type(m) is TILED[dtype] for m in linears) and TILED[dtype].runs_on(lib):
        kind = lib.lib.FAST_TTS_STEP_FLOAT32 if dtype == torch.float32 else lib.lib.FAST_TTS_STEP_BF16
    elif dtype == torch.bfloat16 and linears and type(linears[0]) in kinds and lib.bf16 \
            and all(type(m) is type(linears[0]) for m in linears) and type(linears[0]).runs_on(lib):
        kind = kinds[type(linears[0])]
    else:
        return None
    whole = all(m.padded_features == m.out_features and not getattr(m, "float_out", False) for m in linears)
    return kind if whole else None


def fits(shape: DecoderShape, layers: Sequence[DecodeLayer], final_norm: torch.Tensor) -> bool:
    """True when the step can run this decoder here: one activation dtype (bf16 or float32, the final norm's) with
    linears of a kind of step this CPU runs (`_step_kind`), norms and caches of that dtype on CPU, and a head size
    and grouping the kernel handles."""
    lib = native()
    dtype = final_norm.dtype
    tensors = [final_norm] + [t for layer in layers for t in (layer.input_norm, layer.post_norm, layer.k_cache,
                                                                layer.v_cache)]
    return (
        lib is not None
        and _step_kind(lib, dtype, layers) is not None
        and all(t.dtype == dtype and t.device.type == "cpu" for t in tensors)
        and shape.head_dim <= lib.lib.FAST_TTS_MAX_HEAD_DIM
        and shape.head_dim % 2 == 0
        and shape.heads % shape.kv_heads == 0
    )


class DecodeStep:
    """Runs decode steps of one decoder over its cache; build it only where `fits(...)` is True."""

    def __init__(self, shape: DecoderShape, layers: Sequence[DecodeLayer], final_norm: torch.Tensor) -> None:
        lib = native()
        if lib is None or not fits(shape, layers, final_norm):
            raise ValueError("the native decode step cannot run this decoder here")
        self._native: Native = lib
        self.shape = shape
        self.dtype = final_norm.dtype
        self.max_seq = layers[0].k_cache.shape[2] if layers else 0
        self._keep = (list(layers), final_norm.contiguous())  # the pointers below stay valid while these live
        ffi = lib.ffi
        self._layers = ffi.new("fast_tts_layer[]", len(layers))
        for entry, layer in zip(self._layers, layers):
            entry.input_norm = lib.ptr(layer.input_norm.data_ptr())
            entry.post_norm = lib.ptr(layer.post_norm.data_ptr())
            for name, linear in zip(("qkv", "o", "gate_up", "down"), layer.linears):
                setattr(entry, name, lib.ptr(linear.packed.data_ptr()))
                setattr(entry, f"{name}_bias", lib.ptr(None if linear.bias is None else linear.bias.data_ptr()))
            entry.k_cache = lib.ptr(layer.k_cache.data_ptr())
            entry.v_cache = lib.ptr(layer.v_cache.data_ptr())
        self._args = ffi.new("fast_tts_decode_args *")
        a = self._args
        a.layers, a.n_layers, a.final_norm = self._layers, len(layers), lib.ptr(self._keep[1].data_ptr())
        a.hidden_size, a.inner, a.heads = shape.hidden, shape.inner, shape.heads
        a.kv_heads, a.head_dim, a.max_seq = shape.kv_heads, shape.head_dim, self.max_seq
        a.eps, a.scale = shape.eps, 1.0 / math.sqrt(shape.head_dim)
        a.kind = _step_kind(lib, self.dtype, layers)
        self._buffers: dict[int, tuple[dict[str, torch.Tensor], object]] = {}

    def _buffers_for(self, batch: int) -> object:
        """Work buffers for `batch` rows (kept alive here; the step gets their pointers)."""
        found = self._buffers.get(batch)
        if found is None:
            s = self.shape
            act, f32 = self.dtype, torch.float32
            tensors = {
                "normed": torch.empty(batch, s.hidden, dtype=act),
                "qkv": torch.empty(batch, (s.heads + 2 * s.kv_heads) * s.head_dim, dtype=act),
                "attended": torch.empty(batch, s.heads * s.head_dim, dtype=act),
                "projected": torch.empty(batch, s.hidden, dtype=act),
                "gate_up": torch.empty(batch, 2 * s.inner, dtype=act),
                "activated": torch.empty(batch, s.inner, dtype=act),
                "q": torch.empty(batch, s.heads, s.head_dim, dtype=f32),
                "scores": torch.empty(batch * s.heads * self.max_seq, dtype=f32),
            }
            struct = self._native.ffi.new("fast_tts_step_buffers *")
            for name in _BUFFERS:
                setattr(struct, name, self._native.ptr(tensors[name].data_ptr()))
            found = self._buffers[batch] = (tensors, struct)
        return found[1]

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rows: torch.Tensor,
                 positions: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden states (B, H) in the step's dtype for inputs `x` (B, H) at `positions` (B,) in cache
        `rows` (B,); `cos` / `sin` (B, head_dim) are the rotary tables at those positions."""
        batch = x.shape[0]
        if batch and int(positions.max()) >= self.max_seq:
            raise ValueError(f"position {int(positions.max())} is past the KV cache length {self.max_seq}")
        lib = self._native
        hidden = x.reshape(batch, self.shape.hidden).to(self.dtype).clone()
        out = torch.empty(batch, self.shape.hidden, dtype=self.dtype)
        cos = cos.to(self.dtype).contiguous()
        sin = sin.to(self.dtype).contiguous()
        rows = rows.to(torch.int64).contiguous()
        positions = positions.to(torch.int64).contiguous()
        a = self._args
        a.hidden, a.out = lib.ptr(hidden.data_ptr()), lib.ptr(out.data_ptr())
        a.cos, a.sin = lib.ptr(cos.data_ptr()), lib.ptr(sin.data_ptr())
        a.rows, a.positions = lib.ptr(rows.data_ptr()), lib.ptr(positions.data_ptr())
        a.buffers, a.batch, a.threads = self._buffers_for(batch), batch, torch.get_num_threads()
        lib.lib.fast_tts_decode_step(a)
        return out
