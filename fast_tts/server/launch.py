"""Start `python -m fast_tts.server` as a child process on a free loopback port and wait until it answers.

Used by the HTTP tests and benchmarks/server.py, which must talk to a real server over real sockets.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A running server child; `stop()` (or leaving the `with` block) terminates it and reaps it."""

    def __init__(
        self,
        args: Sequence[str] = (),
        api_key: str | None = None,
        timeout_s: float = 90.0,
        port: int | None = None,
        stop_timeout_s: float = 15.0,
    ) -> None:
        self.port = port or free_port()
        self.stop_timeout_s = stop_timeout_s
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        self.log_path = Path(tempfile.mkstemp(prefix="fast-tts-server-", suffix=".log")[1])
        cmd = [sys.executable, "-m", "fast_tts.server", "--host", "127.0.0.1", "--port", str(self.port), *args]
        if api_key:
            cmd += ["--api-key", api_key]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - the child writes it until stop()
        # the child imports the same fast_tts as this process, installed or from a checkout
        package_root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self._wait_ready(timeout_s)

    @property
    def headers(self) -> dict[str, str]:
        """Authorization header for this server's key (empty without one)."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health", headers=self.headers, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not become ready in {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        """Everything the server printed so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Terminate (then kill) the child and close its log."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
