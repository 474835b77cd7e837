"""Build the native CPU kernels (fast_tts/kernels/*.c) as an optional extension; all other metadata is in
pyproject.toml.

The kernels are x86-64 code with per-file target attributes, so the library builds with the system compiler's
defaults and loads on any x86-64 CPU; it reports at run time which kernels the CPU can execute. Elsewhere (other
architectures, MSVC) nothing is built and fast-tts uses torch. A failed build is not fatal (`optional=True`).
"""

import platform
import sys

from setuptools import Extension, setup

KERNELS = "fast_tts/kernels/"
SOURCES = ["module.c", "pool.c", "bf16_matmul.c", "amx_matmul.c", "grouped_matmul.c", "f32_matmul.c", "decode_step.c",
           "decode_ops.c", "decode_f32.c", "sample.c"]

native = Extension(
    "fast_tts.kernels._native",
    sources=[KERNELS + name for name in SOURCES],
    depends=[KERNELS + "fast_tts_kernels.h", KERNELS + "decode_ops.h", KERNELS + "tile_store.h"],
    include_dirs=[KERNELS],
    extra_compile_args=["-O3", "-pthread"],
    extra_link_args=["-pthread"],
    optional=True,
)

x86_64 = platform.machine().lower() in ("x86_64", "amd64")
setup(ext_modules=[native] if x86_64 and sys.platform != "win32" else [])
