"""`fast-tts serve --ray` without --ray-address: it starts its own Ray instance, bound to 127.0.0.1, with fast-tts's
middleware in Serve's proxy, serves, and on SIGTERM removes the app and stops that instance."""

from __future__ import annotations

import os
import re
import socket

import httpx
import pytest

pytest.importorskip("fastapi")
if os.environ.get("CI", "").lower() != "true":  # the `ray` extra is part of `test`: CI must run it
    pytest.importorskip("ray.serve")

from fast_tts.engine.auto import bundled_languages
from fast_tts.server.launch import ServerProcess

pytestmark = pytest.mark.slow


def test_serve_ray_runs_and_stops_its_own_loopback_instance(tmp_path) -> None:
    server = ServerProcess(["--ray", "--replicas", "1", "--speakers-dir", str(tmp_path)], timeout_s=300,
                           stop_timeout_s=120)
    try:
        found = re.search(r"Ray at (\S+):(\d+) \(", server.log())
        assert found, server.log()
        host, port = found.group(1), int(found.group(2))
        assert host == "127.0.0.1"
        health = httpx.get(f"{server.url}/health", timeout=30)
        default_family = "piper+kokoro" if "zh" in bundled_languages() else "piper"  # the bundled voice set
        assert health.status_code == 200 and health.json()["family"] == default_family
        assert health.headers["x-fast-tts-proxy"] == "1" and health.headers["x-fast-tts-replica"]
        speech = httpx.post(f"{server.url}/v1/audio/speech", timeout=120,
                            json={"model": "tts-1", "voice": "alloy", "input": "Hello.", "response_format": "wav"})
        assert speech.status_code == 200 and speech.content[:4] == b"RIFF"
    finally:
        server.stop()
    assert server.proc.returncode == 0, server.log()[-3000:]
    with pytest.raises(OSError):  # its Ray instance is gone with it
        socket.create_connection((host, port), timeout=5).close()
