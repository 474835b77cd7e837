"""Piper (VITS ONNX) voices: a plain runner, no asyncio; text in, float32 audio out."""

from fast_tts.models.piper.runner import PiperRunner, bundled_voice_paths

__all__ = ["PiperRunner", "bundled_voice_paths"]
