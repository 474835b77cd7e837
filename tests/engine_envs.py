"""Where tests find the side environments that `.ci/setup/*.sh` build (one venv per external engine or oracle).

A side environment is `$FAST_TTS_CI_ENVS/<name>` (default `~/.cache/fast-tts/ci-envs/<name>`), or the venv that
`FAST_TTS_<NAME>_ENV` points at. Locally a missing one skips its tests; under CI (CI=true) it fails them, so tests
that CI is meant to run cannot silently skip there.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def env_root() -> Path:
    """The folder that holds the side environments."""
    return Path(os.environ.get("FAST_TTS_CI_ENVS") or Path.home() / ".cache" / "fast-tts" / "ci-envs")


def env_python(name: str) -> Path | None:
    """The python of side environment `name`, or None when it is not built."""
    override = os.environ.get(f"FAST_TTS_{name.upper().replace('-', '_')}_ENV")
    python = (Path(override) if override else env_root() / name) / "bin" / "python"
    return python if python.is_file() else None


def require_env(name: str) -> Path:
    """The python of side environment `name`; skip (locally) or fail (CI=true) when it is missing."""
    python = env_python(name)
    if python is not None:
        return python
    message = f"side environment {name!r} is not built: run bash .ci/setup/*{name}*.sh"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)
