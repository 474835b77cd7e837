"""Native CPU kernels: the ground floor that models and backends build on (it imports nothing else of fast_tts).

Decode on CPU is bound by how fast the weights stream from memory; oneDNN's prepacked paths read them at about half
the bandwidth at batch 1. `bf16_matmul.c` reads a repacked bf16 weight strictly in sequence with AVX-512 BF16 and
reaches the read bandwidth (`amx_matmul.c` computes the same product with AMX tiles where the CPU has them, so that
a batch of rows costs what one row does; `f32_matmul.c` is the float32 twin, needing AVX-512 F only). Two opt-in
products read fewer bytes, with weights quantized in groups (`grouped_matmul.c`): int8 on AMX-INT8 and 4-bit on
AVX-512 VNNI. `decode_step.c` runs a whole decode step of a Llama/Qwen2 decoder in one call, with the operations of
`decode_ops.h` for bf16 (`decode_ops.c`) or float32 (`decode_f32.c`); `pool.c` is their thread pool. `sample.c`
is a whole sampling step of rows that keep their top k tokens (fast_tts.sampling calls it). `linear.py` swaps
`nn.Linear` layers for these kernels, `decode.py` drives the decode step.

Shipping: the C files are compiled when the package is installed (setup.py builds them as the extension
`fast_tts.kernels._native` with per-file target attributes, so the library loads on any x86-64 CPU) and the library
reports at run time which kernels this CPU can execute. `fast_tts_kernels.h` declares everything once; cffi reads
that same header here. Nothing is required: without the built library (another architecture, no compiler at
install time), on a CPU without AVX-512, or with `FAST_TTS_NATIVE=0`, `native()` returns None after one log line
and callers keep the torch path.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cffi

log = logging.getLogger(__name__)

HEADER = Path(__file__).with_name("fast_tts_kernels.h")


@dataclass(frozen=True)
class Native:
    """The loaded library: `lib` has the functions and constants of fast_tts_kernels.h; `features` the CPU bits
    it reported."""

    ffi: Any
    lib: Any
    features: int

    @property
    def float32(self) -> bool:
        """The float32 matmul kernel can run here."""
        return bool(self.features & self.lib.FAST_TTS_CPU_AVX512F)

    @property
    def bf16(self) -> bool:
        """The bf16 matmul kernel and the decode step can run here."""
        return bool(self.features & self.lib.FAST_TTS_CPU_AVX512BF16)

    @property
    def amx_int8(self) -> bool:
        """The int8-weight product runs here (`grouped_matmul.c` on `amx_matmul.c`: AMX-INT8)."""
        return bool(self.features & self.lib.FAST_TTS_CPU_AMXINT8)

    @property
    def vnni(self) -> bool:
        """The 4-bit-weight product runs here (`grouped_matmul.c`: AVX-512 VNNI and BF16)."""
        return bool(self.features & self.lib.FAST_TTS_CPU_AVX512VNNI)

    @property
    def amx(self) -> bool:
        """bf16 products run through AMX tiles here (`amx_matmul.c`; on from load wherever the CPU has them)."""
        return bool(self.features & self.lib.FAST_TTS_CPU_AMXBF16)

    def ptr(self, address: int | None) -> Any:
        """A `void *` for a tensor's `data_ptr()` (None: NULL)."""
        return self.ffi.NULL if address is None else self.ffi.cast("void *", address)


def declarations() -> str:
    """The declarations part of fast_tts_kernels.h, as cffi reads it."""
    text = HEADER.read_text(encoding="utf-8")
    return text.split("/* BEGIN DECLARATIONS */", 1)[1].split("/* END DECLARATIONS */", 1)[0]


def switched_off() -> bool:
    """True when FAST_TTS_NATIVE says not to use the kernels (0, false, no, off)."""
    return os.environ.get("FAST_TTS_NATIVE", "1").strip().lower() in ("0", "false", "no", "off")


@functools.cache
def native() -> Native | None:
    """The kernels for this process, or None when they cannot run here (the reason is logged once)."""
    if switched_off():
        log.info("native kernels: switched off by FAST_TTS_NATIVE; using torch")
        return None
    try:
        from fast_tts.kernels import _native  # type: ignore[attr-defined]  # built at install time (setup.py)

        ffi = cffi.FFI()
        ffi.cdef(declarations())
        lib = ffi.dlopen(_native.__file__)
        features = int(lib.fast_tts_cpu_features())
        lib.fast_tts_use_amx(1)  # wherever the CPU and OS have the tiles
    except Exception as exc:
        log.info("native kernels: not available in this install (%s: %s); using torch", type(exc).__name__, exc)
        return None
    if not features & lib.FAST_TTS_CPU_AVX512F:
        log.info("native kernels: this CPU lacks AVX-512; using torch")
        return None
    return Native(ffi, lib, features)
