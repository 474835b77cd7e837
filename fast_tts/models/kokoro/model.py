"""Kokoro-82M as a language-blind ONNX model: phoneme tokens, a voice style and a speed in, 24 kHz audio out."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from fast_tts.errors import InvalidInputError, MissingDependencyError, ModelLoadError, UnknownVoiceError
from fast_tts.models.kokoro.files import MAX_TOKENS, SAMPLE_RATE, KokoroFiles


class KokoroModel:
    """Kokoro-82M on onnxruntime; `synthesize` is thread-safe. A call that starts while no other runs gets `threads`
    intra-op threads (a lone request waits less); calls that overlap run on one thread each, which keeps the
    throughput of concurrent requests (a shared multi-thread pool loses some to contention). The one-thread session
    is built when calls first overlap, so a process that never overlaps (the CLI) loads the model once."""

    sample_rate = SAMPLE_RATE

    def __init__(self, files: KokoroFiles, threads: int = 1) -> None:
        try:
            import onnxruntime
        except ImportError as exc:
            raise MissingDependencyError("Kokoro needs 'onnxruntime' (pip install onnxruntime)") from exc

        def session(intra_op: int) -> Any:
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = intra_op
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle pool threads sleep
            try:
                return onnxruntime.InferenceSession(files.model, sess_options=options,
                                                    providers=["CPUExecutionProvider"])
            except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
                raise ModelLoadError(f"cannot load the Kokoro ONNX model: {exc}") from exc

        self._session = session
        self._wide = session(threads)
        self._narrow = self._wide if threads == 1 else None
        self._running = 0
        self._lock = threading.Lock()
        self._narrow_lock = threading.Lock()  # held while the one-thread session is built
        names = {i.name for i in self._wide.get_inputs()}
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
        inputs = {
            "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
            "style": style,
            "speed": np.array([speed], dtype=np.float32),
        }
        with self._lock:
            overlapping = self._running > 0
            self._running += 1
        try:
            audio = (self._narrow_session() if overlapping else self._wide).run(None, inputs)[0]
        finally:
            with self._lock:
                self._running -= 1
        return np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1.0, 1.0)

    def _narrow_session(self) -> Any:
        """The one-thread session for overlapping calls, built by the first of them."""
        with self._narrow_lock:
            if self._narrow is None:
                self._narrow = self._session(1)
        return self._narrow
