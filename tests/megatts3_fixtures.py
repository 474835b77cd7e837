"""Shared helpers of the MegaTTS3 tests: where the parity fixtures live and how to read them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def fixture_dir() -> Path:
    """FAST_TTS_MEGATTS3_FIXTURES, default ../shared/fixtures/megatts3 from the repo root."""
    return Path(os.environ.get("FAST_TTS_MEGATTS3_FIXTURES", REPO.parent / "shared" / "fixtures" / "megatts3"))


def cases() -> dict:
    """cases.json of the fixture set (skips the test when the set is absent)."""
    path = fixture_dir() / "cases.json"
    if not path.is_file():
        pytest.skip(f"MegaTTS3 fixtures not found at {path}")
    return json.loads(path.read_text(encoding="utf-8"))


def tensors(case: str) -> dict:
    """The stored tensors of one case."""
    from safetensors.torch import load_file

    return load_file(str(fixture_dir() / cases()["cases"][case]["file"]))
