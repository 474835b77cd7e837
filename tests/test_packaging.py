"""What users install is what runs: the tests import the installed fast-tts, and the install carries the kernels.

CI installs fast-tts as a wheel (the README's test command: `pip install ... '.[test]'`, not editable), so these
checks are about that wheel there; an editable install passes them too.
"""

from __future__ import annotations

import json
import platform
import sys
from importlib import metadata
from pathlib import Path

import fast_tts
from fast_tts import kernels

REPO = Path(__file__).resolve().parents[1]


def _installed() -> metadata.Distribution:
    """fast-tts as pip installed it (pip records direct_url.json; an in-tree fast_tts.egg-info left by a build does
    not count)."""
    found = [d for d in metadata.distributions()
             if d.metadata["Name"] == "fast-tts" and d.read_text("direct_url.json")]
    assert found, "fast-tts is not installed with pip"
    return found[0]


def _editable() -> bool:
    return bool(json.loads(_installed().read_text("direct_url.json") or "{}").get("dir_info", {}).get("editable"))


def test_the_tests_import_the_installed_package() -> None:
    """Not a source tree that happens to be on sys.path: the files pip installed (or, editable, linked)."""
    package = Path(fast_tts.__file__).resolve().parent
    if _editable():
        assert package == REPO / "fast_tts"
    else:
        installed = Path(_installed().locate_file("fast_tts/__init__.py")).resolve().parent
        assert package == installed and REPO not in package.parents


def test_the_install_carries_the_kernels() -> None:
    """The header cffi reads ships with the package, and on x86-64 Linux the kernels were compiled at install."""
    files = {str(f) for f in _installed().files or []}
    package = Path(fast_tts.__file__).resolve().parent
    assert (package / "kernels" / "fast_tts_kernels.h").is_file()
    if not _editable():
        assert "fast_tts/kernels/fast_tts_kernels.h" in files
    if sys.platform.startswith("linux") and platform.machine() == "x86_64":
        built = list((package / "kernels").glob("_native*.so"))
        assert built, "the native kernels were not compiled at install time"
        assert kernels.declarations().strip().startswith("#define FAST_TTS_TILE")
