"""CPU linear layers with weights reordered once for decode-sized matmuls.

Decode is a stream of skinny matmuls (batch rows x weight), bound by how fast the weights stream from memory.
- where the native kernels run (see __init__.py): `TiledBF16Linear` (bf16 weights, AVX-512 BF16) and
  `TiledF32Linear` (float32, AVX-512 F) read the weight at the memory read bandwidth at batch 1 to 8 (oneDNN's
  prepacked paths reach about half of it);
- otherwise `PackedLinear`: oneDNN's prepacked layout, which beats `F.linear` for float32 and is the fallback;
- on request (`pack_linears(quantize=...)`), weights quantized in groups: `TiledInt8Linear` (int8 on AMX-INT8, half
  bf16's bytes) or `TiledInt4Linear` (4-bit on AVX-512 VNNI, a little over a quarter of them).
`pack_linears` swaps each `nn.Linear` of a module once; each path is checked against `F.linear` on a probe first.
`prepack_linears` swaps them for `PackedLinear` alone, for modules run on many rows at once (audio decoders).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from fast_tts.kernels import Native, native
from fast_tts.kernels.memory import on_huge_pages

# a few rows times a weight this small finish on one thread before the pool's helpers would have woken up
SMALL_WEIGHT_BYTES = 4 << 20


class PackedLinear(nn.Module):
    """Inference-only `nn.Linear` over a oneDNN-packed weight (CPU)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach())
        self.bias = None if linear.bias is None else linear.bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


class _TiledLinear(nn.Module):
    """Inference-only `nn.Linear` run by a native kernel over a weight repacked into 32-row tiles (CPU); the last
    tile is padded with zero rows, so any output width works."""

    dtype: torch.dtype  # of the activations (inputs and outputs)
    weight_dtype: torch.dtype  # of the weight the layer is built from

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        lib = native()
        if lib is None or not self.runs_on(lib) or not self.fits(linear):
            raise ValueError("the native kernels are not available for this layer")
        self._native: Native = lib
        self.in_features, self.out_features = linear.in_features, linear.out_features
        tile = lib.lib.FAST_TTS_TILE
        self.padded_features = -(-self.out_features // tile) * tile
        weight = torch.zeros(self.padded_features, self.in_features, dtype=self.weight_dtype)
        weight[: self.out_features] = linear.weight.detach()
        self.packed = on_huge_pages(self._pack(weight))
        self.bias = None
        if linear.bias is not None:
            self.bias = torch.zeros(self.padded_features)
            self.bias[: self.out_features] = linear.bias.detach().float()

    @staticmethod
    def runs_on(lib: Native) -> bool:
        """True when this CPU can execute the layer's kernel."""
        raise NotImplementedError

    @staticmethod
    def fits(linear: nn.Linear) -> bool:
        """True when the kernel's layout takes this layer's shape."""
        return tiled_layout_fits(linear)

    def _pack(self, weight: torch.Tensor) -> torch.Tensor:
        """The packed form of `weight` (padded_features, in_features), as the kernel reads it."""
        raise NotImplementedError

    def _product(self, rows: torch.Tensor, out: torch.Tensor, threads: int) -> None:
        raise NotImplementedError

    def _out_dtype(self) -> torch.dtype:
        return self.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(self.dtype).contiguous()
        out = torch.empty(rows.shape[0], self.padded_features, dtype=self._out_dtype())
        if rows.shape[0]:
            small = rows.shape[0] <= 8 and self.packed.numel() * self.packed.element_size() <= SMALL_WEIGHT_BYTES
            self._product(rows, out, 1 if small else torch.get_num_threads())
        if self.padded_features != self.out_features:
            out = out[:, : self.out_features]
        return out.reshape(*x.shape[:-1], self.out_features)


class TiledBF16Linear(_TiledLinear):
    """bf16 `nn.Linear` on the AVX-512 BF16 kernel (`bf16_matmul.c`).

    `float_out=True` returns the float32 sums unrounded (for logits).
    """

    dtype = weight_dtype = torch.bfloat16
    _matmul = "fast_tts_matmul_bf16"  # the library's product over this class's packed weight

    def __init__(self, linear: nn.Linear, float_out: bool = False) -> None:
        self.float_out = float_out
        super().__init__(linear)

    @staticmethod
    def runs_on(lib: Native) -> bool:
        return lib.bf16

    def _pack(self, weight: torch.Tensor) -> torch.Tensor:
        n = self._native
        packed = torch.empty_like(weight)
        n.lib.fast_tts_pack_bf16(n.ptr(weight.data_ptr()), n.ptr(packed.data_ptr()), self.padded_features,
                                 self.in_features)
        return packed

    def _out_dtype(self) -> torch.dtype:
        return torch.float32 if self.float_out else torch.bfloat16

    def _product(self, rows: torch.Tensor, out: torch.Tensor, threads: int) -> None:
        n = self._native
        getattr(n.lib, self._matmul)(
            n.ptr(rows.data_ptr()),
            n.ptr(self.packed.data_ptr()),
            n.ptr(None if self.bias is None else self.bias.data_ptr()),
            n.ptr(out.data_ptr()),
            rows.shape[0],
            self.padded_features,
            self.in_features,
            int(self.float_out),
            threads,
        )


class TiledF32Linear(_TiledLinear):
    """float32 `nn.Linear` on the AVX-512 kernel (`f32_matmul.c`): each output is a sequential float32 sum."""

    dtype = weight_dtype = torch.float32

    @staticmethod
    def runs_on(lib: Native) -> bool:
        return lib.float32

    def _pack(self, weight: torch.Tensor) -> torch.Tensor:
        n = self._native
        packed = torch.empty_like(weight)
        n.lib.fast_tts_pack_f32(n.ptr(weight.data_ptr()), n.ptr(packed.data_ptr()), self.padded_features,
                                self.in_features)
        return packed

    def _product(self, rows: torch.Tensor, out: torch.Tensor, threads: int) -> None:
        n = self._native
        n.lib.fast_tts_matmul_f32(
            n.ptr(rows.data_ptr()),
            n.ptr(self.packed.data_ptr()),
            n.ptr(None if self.bias is None else self.bias.data_ptr()),
            n.ptr(out.data_ptr()),
            rows.shape[0],
            self.padded_features,
            self.in_features,
            threads,
        )


class _GroupedLinear(TiledBF16Linear):
    """`nn.Linear` with weights quantized in groups of 64 inputs per output row (`grouped_matmul.c`): symmetric,
    scale max|w| / levels, round to nearest even. Each product quantizes its bf16 input rows to int8 in the same
    groups (scale max|x| / 127), sums each group exactly in int32, and adds the groups up scaled in float32
    (tests/test_native_kernels.py repeats the arithmetic in torch). `float_out=True` returns the float32 result."""

    weight_dtype = torch.float32
    levels: int  # the weights' largest magnitude, in steps
    needs: str  # the CPU features `runs_on` checks, as a user reads them

    @staticmethod
    def fits(linear: nn.Linear) -> bool:
        lib = native()
        if lib is None:
            return False
        group, most = lib.lib.FAST_TTS_QUANT_GROUP, lib.lib.FAST_TTS_MAX_QUANT_COLUMNS
        return linear.weight.device.type == "cpu" and linear.in_features % group == 0 and linear.in_features <= most

    def _pack(self, weight: torch.Tensor) -> torch.Tensor:
        tile, group = self._native.lib.FAST_TTS_TILE, self._native.lib.FAST_TTS_QUANT_GROUP
        q, scales = quantize_groups(weight, self.levels, group)
        tiles, groups = self.padded_features // tile, self.in_features // group
        # per tile and group: quads of 16 rows x 4 inputs (grouped_matmul.c describes the layouts)
        quads = q.view(tiles, 2, tile // 2, groups, group // 4, 4).permute(0, 3, 1, 4, 2, 5)  # tile, group, half, ...
        scale_bytes = scales.view(tiles, tile, groups).permute(0, 2, 1).contiguous().view(torch.uint8)
        return torch.cat([self._weight_bytes(quads).reshape(tiles, groups, -1), scale_bytes], dim=2).reshape(-1)

    @staticmethod
    def _weight_bytes(quads: torch.Tensor) -> torch.Tensor:
        """A group's weight bytes from its quads (tile, group, half, quad, row, input) of int8 values."""
        raise NotImplementedError


class TiledInt8Linear(_GroupedLinear):
    """int8 weights on AMX-INT8, for half the bytes of bf16 per step (8.5 bits per weight, as llama.cpp's q8_0)."""

    levels = 127
    needs = "AMX-INT8 (Intel Xeon 4th generation or later)"
    _matmul = "fast_tts_matmul_int8"

    @staticmethod
    def runs_on(lib: Native) -> bool:
        return lib.amx_int8

    @staticmethod
    def _weight_bytes(quads: torch.Tensor) -> torch.Tensor:
        return quads.contiguous().view(torch.uint8)  # rows 0-15, then rows 16-31: two AMX B tiles


class TiledInt4Linear(_GroupedLinear):
    """4-bit weights on AVX-512 VNNI (AMX-INT8 at more than 4 rows), for 4.5 bits per weight (llama.cpp's q4_0)."""

    levels = 7
    needs = "AVX-512 VNNI and BF16 (Intel Xeon 3rd generation or later, AMD Zen 4 or later)"
    _matmul = "fast_tts_matmul_int4"

    @staticmethod
    def runs_on(lib: Native) -> bool:
        return lib.vnni

    @staticmethod
    def _weight_bytes(quads: torch.Tensor) -> torch.Tensor:
        u = (quads + 8).to(torch.uint8)  # rows 0-15 in the low nibbles, rows 16-31 in the high ones
        return u[:, :, 0] | (u[:, :, 1] << 4)


def quantize_groups(x: torch.Tensor, levels: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric quantization of the last dimension in groups of `group`, as the kernels do it: int8 values in
    -levels-1..levels (round half to even) and float32 scales max|x| / levels of shape (..., groups)."""
    x = x.float()
    grouped = x.reshape(*x.shape[:-1], x.shape[-1] // group, group)
    top = grouped.abs().amax(dim=-1)
    inverse = torch.full_like(top, float(levels)).div(top).where(top > 0, 0.0)  # a true division, as in C
    q = torch.round(grouped * inverse[..., None]).clamp(-levels - 1, levels).to(torch.int8)
    return q.reshape(x.shape).contiguous(), top / levels


def linear_around(weight: torch.Tensor) -> nn.Linear:
    """A bias-free `nn.Linear` whose weight is `weight` itself (not copied), for building a packed layer from a
    matrix that is not a layer of its own (a tied head, heads stacked together)."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    layer.weight = nn.Parameter(weight.detach(), requires_grad=False)
    return layer


def tiled_layout_fits(linear: nn.Linear) -> bool:
    """The native layout needs an even in_features, on a CPU tensor (outputs are padded to whole 32-row tiles)."""
    return linear.weight.device.type == "cpu" and linear.in_features % 2 == 0


def _matches_linear(make: type[nn.Module], dtype: torch.dtype) -> bool:
    """True when `make(linear)` builds here and matches `F.linear` on a probe (within float tolerance)."""
    try:
        g = torch.Generator().manual_seed(0)  # a private generator: probing leaves the global RNG alone
        lin = torch.nn.utils.skip_init(nn.Linear, 64, 96, dtype=dtype)
        nn.init.uniform_(lin.weight, -0.125, 0.125, generator=g)
        nn.init.uniform_(lin.bias, -0.125, 0.125, generator=g)
        x = torch.randn(3, 2, 64, generator=g).to(dtype)
        with torch.no_grad():
            got = make(lin)(x).float()
            want = F.linear(x.float(), lin.weight.float(), lin.bias.float())
    except (AttributeError, RuntimeError, NotImplementedError, ValueError):
        return False
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    return got.shape == want.shape and bool(torch.allclose(got, want, rtol=tol, atol=tol))


TILED = {torch.bfloat16: TiledBF16Linear, torch.float32: TiledF32Linear}


@functools.cache
def native_available(dtype: torch.dtype) -> bool:
    """True when the native kernel for `dtype` (bf16 or float32) runs here and matches `F.linear` on a probe."""
    lib = native()
    return dtype in TILED and lib is not None and TILED[dtype].runs_on(lib) and _matches_linear(TILED[dtype], dtype)


def native_bf16_available() -> bool:
    """True when the native bf16 kernel runs here and matches `F.linear` on a probe."""
    return native_available(torch.bfloat16)


@functools.cache
def _prepacked_available(dtype: torch.dtype) -> bool:
    return _matches_linear(PackedLinear, dtype)


def packing_available(dtype: torch.dtype) -> bool:
    """True when some packed path exists here for `dtype` and matches `F.linear` on a probe."""
    return native_available(dtype) or _prepacked_available(dtype)


def prepack_linears(module: nn.Module) -> int:
    """Replace every float32 `nn.Linear` under `module` by a `PackedLinear`, in place; returns how many (none where
    oneDNN's packed product does not match `F.linear` here).

    For modules that multiply many rows at once (convolutional decoders over whole utterances), where oneDNN's
    prepacked float32 product is faster than `F.linear`; `pack_linears` is for the few rows of a decode step."""
    if not _prepacked_available(torch.float32):
        return 0
    swapped = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            weight = child.weight if isinstance(child, nn.Linear) else None
            if weight is not None and weight.dtype == torch.float32 and weight.device.type == "cpu":
                setattr(parent, name, PackedLinear(child))
                swapped += 1
    return swapped


QUANTIZED: dict[str, type[_GroupedLinear]] = {"int8": TiledInt8Linear, "int4": TiledInt4Linear}


def pack_linears(module: nn.Module, quantize: str | None = None) -> int:
    """Replace every `nn.Linear` under `module` by the fastest packed layer that fits, in place; returns how many.
    `quantize` ("int8" or "int4", a key of QUANTIZED) puts bf16 layers whose shape fits on that kernel (callers
    check `quantized_available(quantize)` first)."""
    usable = {dtype: native_available(dtype) for dtype in TILED}
    quantized = QUANTIZED[quantize] if quantize is not None else None
    swapped = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                dtype = child.weight.dtype
                if quantized is not None and dtype == torch.bfloat16 and quantized.fits(child):
                    packed: nn.Module = quantized(child)
                elif usable.get(dtype, False) and tiled_layout_fits(child):
                    packed = TILED[dtype](child)
                else:
                    packed = PackedLinear(child)
                setattr(parent, name, packed)
                swapped += 1
    return swapped


def quantized_available(quantize: str) -> bool:
    """True when the kernel of scheme `quantize` (a key of QUANTIZED) runs here: int8 needs AMX-INT8, int4 AVX-512
    VNNI (both with AVX-512 BF16)."""
    lib = native()
    return lib is not None and lib.bf16 and QUANTIZED[quantize].runs_on(lib)
