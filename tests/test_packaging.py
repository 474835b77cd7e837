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


def _editable() -> bool:
    direct = metadata.distribution("fast-tts").read_text("direct_url.json")
    return bool(direct and json.loads(direct).get("dir_info", {}).get("editable"))


def test_the_tests_import_the_installed_package() -> None:
    """Not a source tree that happens to be on sys.path: the files pip installed (or, editable, linked)."""
    dist = metadata.distribution("fast-tts")
    package = Path(fast_tts.__file__).resolve().parent
    if _editable():
        assert package == REPO / "fast_tts"
    else:
        installed = Path(dist.locate_file("fast_tts/__init__.py")).resolve().parent
        assert package == installed and REPO not in package.parents


def test_the_install_carries_the_kernels() -> None:
    """The header cffi reads ships with the package, and on x86-64 Linux the kernels were compiled at install."""
    files = {str(f) for f in metadata.distribution("fast-tts").files or []}
    package = Path(fast_tts.__file__).resolve().parent
    assert (package / "kernels" / "fast_tts_kernels.h").is_file()
    if not _editable():
        assert "fast_tts/kernels/fast_tts_kernels.h" in files
    if sys.platform.startswith("linux") and platform.machine() == "x86_64":
        built = list((package / "kernels").glob("_native*.so"))
        assert built, "the native kernels were not compiled at install time"
        assert kernels.declarations().strip().startswith("#define FAST_TTS_TILE")
