"""AutoEngine: pick the model family from a checkpoint folder's layout and build that family's engine."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from fast_tts.engine.base import AsyncEngine
from fast_tts.errors import InvalidInputError, ModelLoadError

# family -> "module:Class"; a new family is one line here plus a rule in detect_family.
ENGINES: dict[str, str] = {
    "piper": "fast_tts.engine.piper:AsyncPiperEngine",
    "chattts": "fast_tts.engine.chattts:AsyncChatTTSEngine",
    "megatts3": "fast_tts.engine.megatts3:AsyncMega3Engine",
}

_MEGATTS3_PARTS = ("diffusion_transformer", "wavvae")
_NO_LM = ("piper",)  # families without an LM backend


def detect_family(model_path: str | Path | None) -> str:
    """Return the family name for `model_path` (None: the bundled Piper voice); ModelLoadError if unrecognised."""
    if model_path is None:
        return "piper"
    path = Path(model_path)
    if not path.exists():
        raise ModelLoadError(f"model path does not exist: {path}")
    if path.is_file():
        if path.suffix == ".onnx" and Path(f"{path}.json").is_file():
            return "piper"
        raise ModelLoadError(f"{path}: a model file must be a Piper .onnx with its .onnx.json beside it")
    if any(Path(f"{p}.json").is_file() for p in path.glob("*.onnx")):
        return "piper"
    if (path / "asset" / "gpt" / "config.json").is_file() or (path / "asset").is_dir():
        return "chattts"
    if all((path / part).is_dir() for part in _MEGATTS3_PARTS):
        return "megatts3"
    raise ModelLoadError(
        f"cannot tell the model family of {path}: looked for a Piper voice (*.onnx + *.onnx.json), "
        "ChatTTS (asset/gpt/config.json or asset/), MegaTTS3 (diffusion_transformer/ and wavvae/)"
    )


def AutoEngine(model_path: str | Path | None = None, **kw: Any) -> AsyncEngine:
    """Build the engine for whatever `model_path` holds (the bundled Piper voice when None).

    `backend=` picks the LM backend of the families that have a language model (ChatTTS, MegaTTS3); Piper has none,
    so a backend other than 'torch' is refused for it.
    """
    family = detect_family(model_path)
    if "backend" in kw:
        from fast_tts.backends import backend_name

        kw["backend"] = backend_name(kw["backend"])
        if family in _NO_LM:
            if kw.pop("backend") != "torch":
                raise InvalidInputError(f"the {family} voice has no language model; backend= applies to ChatTTS "
                                        "and MegaTTS3", "backend")
    module_name, _, class_name = ENGINES[family].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ModelLoadError(f"{model_path} looks like a {family} model, but this install has no {family} engine") from exc
        raise
    return getattr(module, class_name)(model_path, **kw)
