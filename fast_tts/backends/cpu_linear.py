"""CPU linear layers with weights reordered once into oneDNN's blocked layout.

Decode is a stream of skinny matmuls (batch rows x weight). On this CPU, `F.linear` reaches about half the memory
bandwidth at batch 1 and gets slower still at batch 8 (fp32), while oneDNN's prepacked path stays close to the read
bandwidth at every batch size and runs bf16 with AVX-512 BF16. The backend swaps each `nn.Linear` of the decoder for
`PackedLinear` when packing is available and gives the same numbers (checked once on a probe).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PackedLinear(nn.Module):
    """Inference-only `nn.Linear` over a oneDNN-packed weight (CPU)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach())
        self.bias = None if linear.bias is None else linear.bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def packing_available(dtype: torch.dtype) -> bool:
    """True when the packed path exists here and matches `F.linear` on a probe (within float tolerance)."""
    try:
        lin = nn.Linear(64, 48).to(dtype)
        x = torch.randn(3, 2, 64, dtype=dtype)
        with torch.no_grad():
            got = PackedLinear(lin)(x).float()
            want = F.linear(x, lin.weight, lin.bias).float()
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    return got.shape == want.shape and bool(torch.allclose(got, want, rtol=tol, atol=tol))


def pack_linears(module: nn.Module) -> int:
    """Replace every `nn.Linear` under `module` by a `PackedLinear`, in place; returns how many were swapped."""
    swapped = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, PackedLinear(child))
            swapped += 1
        else:
            swapped += pack_linears(child)
    return swapped
