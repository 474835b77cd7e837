"""LM backends behind one Generator protocol; `create_backend` picks one by name.

"torch" is ours (continuous batching over `fast_tts.models.transformer`). The others are optional extras, imported
only when chosen: a clear MissingDependencyError names what to install when the package is absent, and an
UnsupportedOperationError says so when it is installed but its adapter is not written yet.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from fast_tts.backends.base import GenerationResult, GenerationStream, Generator, StepOutput
from fast_tts.errors import InvalidInputError, MissingDependencyError, UnsupportedOperationError

# backend name -> (importable module, pip package that provides it)
_OPTIONAL = {
    "vllm": ("vllm", "vllm"),
    "sglang": ("sglang", "sglang"),
    "llama-cpp": ("llama_cpp", "llama-cpp-python"),
    "mlx-lm": ("mlx_lm", "mlx-lm"),
}

BACKENDS = ("torch", *_OPTIONAL)

__all__ = ["BACKENDS", "GenerationResult", "GenerationStream", "Generator", "StepOutput", "create_backend"]


def create_backend(name: str, adapter: Any, **options: Any) -> Generator:
    """Build the backend `name` over a family's LMAdapter; options go to the backend (max_batch, dtype, ...)."""
    key = name.lower().replace("_", "-")
    if key == "torch":
        from fast_tts.backends.torch_backend import TorchBackend

        return TorchBackend(adapter, **options)
    if key not in _OPTIONAL:
        raise InvalidInputError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}", "backend")
    module, package = _OPTIONAL[key]
    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(
            f"backend {key!r} needs the {package!r} package: pip install {package}"
        )
    if key == "vllm":
        from fast_tts.backends.vllm_backend import VLLMBackend

        return VLLMBackend(adapter, **options)
    raise UnsupportedOperationError(
        f"backend {key!r}: {package} is installed, but fast-tts does not drive it yet; use backend='torch'"
    )
