"""Load one Piper voice (ONNX + JSON config) and turn text into float32 audio, one sentence at a time."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fast_tts.errors import MissingDependencyError, ModelLoadError

_CJK_PUNCTUATION = str.maketrans({"。": ". ", "，": ", ", "、": ", ", "！": "! ", "？": "? ", "；": "; ", "：": ": "})


class PiperRunner:
    """One loaded Piper voice. `synthesize` is thread-safe (onnxruntime sessions allow concurrent `run`)."""

    def __init__(self, model_path: str | Path, config_path: str | Path | None = None, threads: int = 1) -> None:
        try:
            import onnxruntime
            from piper import PiperVoice
            from piper.config import PiperConfig
        except ImportError as exc:
            raise MissingDependencyError("Piper voices need 'piper-tts' and 'onnxruntime' installed") from exc
        self.model_path = Path(model_path)
        self.config_path = Path(config_path) if config_path else Path(f"{model_path}.json")
        for path in (self.model_path, self.config_path):
            if not path.is_file():
                raise ModelLoadError(f"Piper voice file not found: {path}")
        try:
            self.config_dict = json.loads(self.config_path.read_text(encoding="utf-8"))
            config = PiperConfig.from_dict(self.config_dict)
        except (ValueError, KeyError) as exc:
            raise ModelLoadError(f"{self.config_path} is not a Piper voice config: {exc}") from exc
        options = onnxruntime.SessionOptions()
        # One intra-op thread per call: on a few cores, parallel requests beat parallel kernels (about 1.4x here).
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            session = onnxruntime.InferenceSession(
                str(self.model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
            raise ModelLoadError(f"cannot load Piper model {self.model_path}: {exc}") from exc
        self._voice = PiperVoice(session=session, config=config)
        self.sample_rate: int = config.sample_rate
        self.speakers: dict[str, int] = dict(config.speaker_id_map)
        self.num_speakers: int = config.num_speakers
        self.default_speaker_id: int = config.default_speaker_id
        self.default_noise_scale: float = config.noise_scale
        self.default_noise_w: float = config.noise_w_scale

    def sentences(self, text: str) -> list[list[str]]:
        """Phonemize `text` (espeak-ng inside piper-tts) into one phoneme list per sentence. CJK punctuation is
        read as its ASCII form: espeak drops it, and a sentence ending in 。 lost its closing "." and with it the
        release of its last sound (the voice was trained on sentences that end in punctuation)."""
        return [p for p in self._voice.phonemize(text.translate(_CJK_PUNCTUATION)) if p]

    def synthesize(
        self,
        phonemes: list[str],
        speaker_id: int | None = None,
        length_scale: float = 1.0,
        noise_scale: float | None = None,
        noise_w: float | None = None,
    ) -> np.ndarray:
        """Audio (float32 in [-1, 1]) for one sentence of phonemes; noise scales 0 make it bit-reproducible."""
        from piper.config import SynthesisConfig

        config = SynthesisConfig(
            speaker_id=speaker_id,
            length_scale=length_scale,
            noise_scale=self.default_noise_scale if noise_scale is None else noise_scale,
            noise_w_scale=self.default_noise_w if noise_w is None else noise_w,
        )
        ids = self._voice.phonemes_to_ids(phonemes)
        audio = self._voice.phoneme_ids_to_audio(ids, config)
        return np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1.0, 1.0)

    def speak(self, text: str, **kw: float | int | None) -> Iterator[np.ndarray]:
        """Yield one float32 array per sentence of `text`."""
        for phonemes in self.sentences(text):
            yield self.synthesize(phonemes, **kw)
