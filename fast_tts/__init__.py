"""fast-tts: fast, reliable neural text-to-speech.

Public names are imported lazily so that `import fast_tts` stays light (no torch until a torch family is used).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "AutoEngine": "fast_tts.engine.auto",
    "AsyncPiperEngine": "fast_tts.engine.piper",
    "AsyncChatTTSEngine": "fast_tts.engine.chattts",
    "AsyncMega3Engine": "fast_tts.engine.megatts3",
    "Chat": "fast_tts.chattts_compat",
    "SamplingParams": "fast_tts.sampling",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fast_tts' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
