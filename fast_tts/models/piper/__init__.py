"""Piper (VITS ONNX) voices: a plain runner, no asyncio; text in, float32 audio out; the voice files on disk."""

from fast_tts.models.piper.files import VoiceFile, bundled_voice_paths, find_piper_voices, voice_files
from fast_tts.models.piper.runner import PiperRunner

__all__ = ["PiperRunner", "VoiceFile", "bundled_voice_paths", "find_piper_voices", "voice_files"]
