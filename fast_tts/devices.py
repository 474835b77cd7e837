"""Devices and dtypes, in one place: which device "auto" means, whether bf16 is fast there, dtype names.

Every engine, backend and `Chat` resolves its device and dtype options through these functions.
"""

from __future__ import annotations

import torch

from fast_tts.errors import InvalidInputError

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def pick_device(name: str | torch.device | None = "auto") -> torch.device:
    """"auto" (or None): cuda when available, else cpu; anything else as given."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise InvalidInputError(f"unknown device {name!r}: {exc}", "device") from exc


def bf16_fast(device: str | torch.device = "cpu") -> bool:
    """True when bf16 matmuls have hardware support there (AVX-512 BF16 / AMX on CPU, Ampere+ on CUDA)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device = "cpu") -> torch.dtype:
    """A dtype name ("float32", "bfloat16", "auto") as a torch dtype; "auto" picks bf16 where it is fast."""
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16):
            raise InvalidInputError(f"dtype must be float32 or bfloat16, got {dtype}", "dtype")
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if bf16_fast(device) else torch.float32
    if dtype not in _DTYPES:
        raise InvalidInputError(f"dtype must be one of float32, bfloat16, auto; got {dtype!r}", "dtype")
    return _DTYPES[dtype]
