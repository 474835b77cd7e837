"""Async engines: the shared request lifecycle (base), one engine per model family, and AutoEngine."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "AsyncEngine": "fast_tts.engine.base",
    "AsyncPiperEngine": "fast_tts.engine.piper",
    "AutoEngine": "fast_tts.engine.auto",
    "detect_family": "fast_tts.engine.auto",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fast_tts.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
