"""Native CPU kernels, compiled on first use with the system C compiler and loaded through ctypes.

Decode on CPU is bound by how fast the weights stream from memory; oneDNN's bf16 path reads them at about half the
bandwidth at batch 1. `bf16_matmul.c` reads a repacked bf16 weight sequentially with AVX-512 BF16 and reaches the
read bandwidth (`f32_matmul.c` is its float32 twin); `decode_ops.c` runs a whole decode step of a Llama/Qwen2
decoder in one call; `pool.c` is their thread pool. Nothing here is required: without a compiler, on another CPU,
on another OS, or with `FAST_TTS_NATIVE=0`, `bf16_kernels()` returns None and callers keep the torch path. The build is cached under `$FAST_TTS_CACHE_DIR` (default `~/.cache/fast-tts`)
by a hash of the source and flags, and written atomically so that concurrent processes can race safely.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

SOURCES = [Path(__file__).with_name(name) for name in ("pool.c", "bf16_matmul.c", "f32_matmul.c", "decode_ops.c")]
MAX_HEAD_DIM = 256  # decode_ops.c keeps one head's accumulator on the stack
FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-pthread", "-shared", "-fPIC"]
REQUIRED_CPU_FLAGS = {"avx512f", "avx512bw", "avx512vl", "avx512_bf16"}


def cache_dir() -> Path:
    """Where compiled kernels live: $FAST_TTS_CACHE_DIR, else $XDG_CACHE_HOME/fast-tts, else ~/.cache/fast-tts."""
    if os.environ.get("FAST_TTS_CACHE_DIR"):
        return Path(os.environ["FAST_TTS_CACHE_DIR"]) / "native"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "fast-tts" / "native"


def cpu_supports_bf16_kernels() -> bool:
    """True on Linux when /proc/cpuinfo lists AVX-512 F/BW/VL and AVX-512 BF16 (running without them would fault)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return REQUIRED_CPU_FLAGS <= set(line.split(":", 1)[1].split())
    return False


def _compile(compiler: str, target: Path) -> None:
    """Build the shared library into `target` atomically; raises on a compiler error."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
    os.close(fd)
    try:
        subprocess.run(
            [compiler, *FLAGS, *map(str, SOURCES), "-o", tmp], check=True, capture_output=True, text=True, timeout=120
        )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def bf16_kernels() -> ctypes.CDLL | None:
    """The compiled bf16 kernels with their signatures set, or None when they cannot run here (reason logged)."""
    if os.environ.get("FAST_TTS_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    if not cpu_supports_bf16_kernels():
        log.debug("native bf16 kernels: this CPU lacks AVX-512 BF16 (or this is not Linux); using torch")
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        log.info("native bf16 kernels: no C compiler found (set CC); using torch")
        return None
    source = b"".join(path.read_bytes() for path in SOURCES)
    digest = hashlib.sha256(source + " ".join([compiler, *FLAGS]).encode()).hexdigest()[:16]
    target = cache_dir() / f"fast_tts_kernels-{digest}.so"
    try:
        if not target.exists():
            _compile(compiler, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        log.warning("native bf16 kernels could not be built (%s); using torch", detail.strip()[-500:])
        return None
    i64, ptr, f32, i32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float, ctypes.c_int
    signatures = {
        "fast_tts_pack_bf16": [ptr, ptr, i64, i64],
        "fast_tts_matmul_bf16": [ptr, ptr, ptr, ptr, i64, i64, i64, i32, i32],
        "fast_tts_pack_f32": [ptr, ptr, i64, i64],
        "fast_tts_matmul_f32": [ptr, ptr, ptr, ptr, i64, i64, i64, i32],
        "fast_tts_decode_step": [ptr, i64, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, *[i64] * 7, f32, f32, i32],
    }
    for name, argtypes in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, None
    return lib


class Layer(ctypes.Structure):
    """`fast_tts_layer` of decode_ops.c: one decoder layer's packed weights, float32 biases (or NULL), and cache."""

    _fields_ = [
        (name, ctypes.c_void_p)
        for name in (
            "input_norm", "post_norm", "qkv", "o", "gate_up", "down",
            "qkv_bias", "o_bias", "gate_up_bias", "down_bias", "k_cache", "v_cache",
        )
    ]


class StepBuffers(ctypes.Structure):
    """`fast_tts_step_buffers` of decode_ops.c: the work buffers of one decode step."""

    _fields_ = [
        (name, ctypes.c_void_p)
        for name in ("normed", "qkv", "attended", "projected", "gate_up", "activated", "q", "scores")
    ]
