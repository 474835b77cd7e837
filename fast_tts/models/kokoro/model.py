"""Kokoro-82M as a language-blind ONNX model: phoneme tokens, a voice style and a speed in, 24 kHz audio out."""

from __future__ import annotations

import numpy as np

from fast_tts.errors import InvalidInputError, MissingDependencyError, ModelLoadError, UnknownVoiceError
from fast_tts.models.kokoro.files import MAX_TOKENS, SAMPLE_RATE, KokoroFiles


class KokoroModel:
    """One onnxruntime session over Kokoro-82M; `synthesize` is thread-safe (sessions allow concurrent runs)."""

    sample_rate = SAMPLE_RATE

    def __init__(self, files: KokoroFiles, threads: int = 1) -> None:
        try:
            import onnxruntime
        except ImportError as exc:
            raise MissingDependencyError("Kokoro needs 'onnxruntime' (pip install onnxruntime)") from exc
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads  # concurrent runs share this pool
        options.inter_op_num_threads = 1
        try:
            self._session = onnxruntime.InferenceSession(
                files.model, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
            raise ModelLoadError(f"cannot load the Kokoro ONNX model: {exc}") from exc
        names = {i.name for i in self._session.get_inputs()}
        if names != {"tokens", "style", "speed"}:
            raise ModelLoadError(f"the Kokoro ONNX model has inputs {sorted(names)}, expected tokens, style, speed")
        self.vocab = files.vocab
        self.voices = files.voices

    def tokens(self, phonemes: str) -> list[int]:
        """Token ids of the phonemes the vocabulary knows (others, such as stray letters, are skipped)."""
        return [self.vocab[p] for p in phonemes if p in self.vocab]

    def synthesize(self, tokens: list[int], voice: str, speed: float = 1.0) -> np.ndarray:
        """Float32 audio for one utterance of at most MAX_TOKENS - 2 tokens; deterministic for the same input."""
        if voice not in self.voices:
            raise UnknownVoiceError(voice, list(self.voices))
        if not tokens:
            return np.zeros(0, np.float32)
        if len(tokens) > MAX_TOKENS - 2:
            raise InvalidInputError(f"{len(tokens)} phonemes in one Kokoro call; the limit is {MAX_TOKENS - 2}")
        style = self.voices[voice][len(tokens) - 1].reshape(1, 256)  # the style row is chosen by length
        audio = self._session.run(None, {
            "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
            "style": style,
            "speed": np.array([speed], dtype=np.float32),
        })[0]
        return np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1.0, 1.0)
