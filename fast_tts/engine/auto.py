"""AutoEngine: the bundled voices (no path), or the family a checkpoint folder's layout shows, as an engine.

With no model path the engine is the default voice set: English (Piper joe) and, when `fast-tts[zh]` is installed,
Mandarin (Kokoro zf_xiaobei), routed by language (fast_tts.engine.routed). Without the extra it is the Piper voice
alone, which refuses Chinese text with the install command.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
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


def bundled_languages() -> list[str]:
    """Languages the bundled voices speak on this install: en, plus zh with the `fast-tts[zh]` extra."""
    from fast_tts.models.kokoro import missing_modules

    return ["en"] if missing_modules() else ["en", "zh"]


def default_engine(*, preload: bool = True, **kw: Any) -> AsyncEngine:
    """The bundled voices: Piper alone, or Piper and Kokoro routed by language (`preload=False`: Kokoro loads
    when text first needs it)."""
    from fast_tts.engine.piper import AsyncPiperEngine

    if bundled_languages() == ["en"]:
        return AsyncPiperEngine(None, **kw)
    from fast_tts.engine.kokoro import AsyncKokoroEngine, kokoro_voice_names
    from fast_tts.engine.routed import AsyncRoutedEngine, LanguageVoices

    english = AsyncPiperEngine(None)
    names = (english.default_voice, *(n for n in english.list_speakers() if n != english.default_voice))
    members = [
        LanguageVoices("en", "piper", names, lambda: english),
        LanguageVoices("zh", "kokoro", tuple(kokoro_voice_names()), AsyncKokoroEngine),
    ]
    return AsyncRoutedEngine(members, preload=preload, **kw)


def AutoEngine(model_path: str | Path | None = None, **kw: Any) -> AsyncEngine:
    """Build the engine for whatever `model_path` holds (the bundled voices when None; see default_engine).

    `backend=` and `backend_options=` pick and set up the LM backend of the families that have a language model
    (ChatTTS, MegaTTS3); the bundled voices and Piper have none, so a backend other than 'torch', or backend options,
    are refused for them.
    """
    family = "piper" if model_path is None else detect_family(model_path)
    if "backend" in kw:
        from fast_tts.backends import backend_name

        kw["backend"] = backend_name(kw["backend"])
        if family in _NO_LM and kw.pop("backend") != "torch":
            raise InvalidInputError(f"the {family} voices have no language model; backend= applies to ChatTTS "
                                    "and MegaTTS3", "backend")
    if family in _NO_LM and kw.pop("backend_options", None):
        raise InvalidInputError(f"the {family} voices have no language model; backend options apply to ChatTTS "
                                "and MegaTTS3", "backend_options")
    if model_path is None:
        return default_engine(**kw)
    kw.pop("preload", None)  # only the bundled voice set loads lazily
    module_name, _, class_name = ENGINES[family].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ModelLoadError(
                f"{model_path} looks like a {family} model, but this install has no {family} engine") from exc
        raise
    return getattr(module, class_name)(model_path, **kw)


def parse_backend_options(items: Sequence[str]) -> dict[str, Any]:
    """Backend options from KEY=VALUE texts (`--backend-option` of `fast-tts speak` and `serve`): a value is read as
    JSON where it is one (8, 0.5, true, null) and as text otherwise (bfloat16, int4)."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInputError(f"backend option {item!r} is not KEY=VALUE", "backend_options")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        options[key.strip().replace("-", "_")] = value
    return options
