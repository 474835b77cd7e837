"""The walls hold: layers import downward only (import-linter contracts in pyproject.toml) and the code passes ruff.

Both tools run on what is being tested: import-linter analyses the importable fast_tts (the installed one), ruff the
repository's files (fast_tts, tests, benchmarks, tools).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).with_name(name))
    if not Path(found).exists():
        pytest.fail(f"{name} is not installed (the test extra has it)")
    return found


def test_layers_import_downward_only() -> None:
    result = subprocess.run([_tool("lint-imports"), "--config", str(REPO / "pyproject.toml")], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "broken" in result.stdout and " 0 broken" in result.stdout


def test_ruff_finds_nothing() -> None:
    result = subprocess.run([_tool("ruff"), "check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
