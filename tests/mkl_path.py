"""Run a golden check under MKL's CPU-independent code path, in a child process.

The ChatTTS fixtures were made where MKL runs its compatible FFT kernels (the path it takes on AMD CPUs). On Intel
CPUs MKL picks other FFT kernels; their float32 rounding is as good, but the log of near-silent mel bins amplifies it
(up to 0.4 in log-mel), and the DVAE's quantizer then flips codes. The reference on such a CPU differs from its own
fixture the same way. `MKL_CBWR=COMPATIBLE` pins MKL to the fixture's path (log-mel within 1e-6 of the fixture on
either CPU); it must be set before MKL starts, hence the child process. The assertions are unchanged.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

PINNED = os.environ.get("MKL_CBWR") == "COMPATIBLE"


def under_compatible_mkl(test: Callable[..., None]) -> Callable[..., None]:
    """Run `test` in this process when MKL is pinned already, else rerun its node in a pinned child pytest."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        if PINNED:
            test(*args, **kwargs)
            return
        node = os.environ["PYTEST_CURRENT_TEST"].rsplit(" ", 1)[0]
        env = {**os.environ, "MKL_CBWR": "COMPATIBLE"}
        env.pop("PYTEST_CURRENT_TEST", None)
        child = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", node],
            env=env, capture_output=True, text=True, timeout=600,
        )
        if child.returncode != 0:
            pytest.fail(f"{node} failed under MKL_CBWR=COMPATIBLE:\n{child.stdout[-6000:]}{child.stderr[-2000:]}")

    return wrapper
