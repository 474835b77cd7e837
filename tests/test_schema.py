"""Robustness by a tool, not by hand-picked cases: schemathesis fuzzes a running server from its own /openapi.json.

Checks: no 5xx (not_a_server_error), every status and content type the server answers is documented
(status_code_conformance, content_type_conformance), and every body matches its documented schema
(response_schema_conformance). Served with the bundled Piper voice, which cannot clone: asking it to clone must be
a documented 4xx. Once without a key, and once with one (every operation then answers a documented 401).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi")
if os.environ.get("CI", "").lower() != "true":  # part of the `test` extra: CI must run it
    pytest.importorskip("schemathesis")

from fast_tts.server.launch import ServerProcess

pytestmark = pytest.mark.slow

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def _schemathesis(server: ServerProcess, workdir: Path, examples: int) -> subprocess.CompletedProcess:
    """Run schemathesis on the server's own schema (read with the key, if any: the fuzzer itself sends none)."""
    schema = workdir / "openapi.json"
    schema.write_bytes(httpx.get(f"{server.url}/openapi.json", headers=server.headers, timeout=30).content)
    cmd = [
        sys.executable, "-c", "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
        "run", str(schema), "--url", server.url, "--checks", CHECKS, "--max-examples", str(examples),
        "--seed", "20261203", "--request-timeout", "60", "--generation-database", "none", "--no-color",
    ]
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=1200)


@pytest.mark.parametrize("api_key", [None, "fuzz-key"], ids=["open", "keyed"])
def test_schemathesis_finds_no_violation(tmp_path: Path, api_key: str | None) -> None:
    args = ["--speakers-dir", str(tmp_path / "speakers"), "--max-text-chars", "200", "--max-upload-mb", "1"]
    with ServerProcess(args, api_key=api_key) as server:
        result = _schemathesis(server, tmp_path, examples=30 if api_key is None else 5)
    report = result.stdout[-8000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    assert " passed" in result.stdout and "failure" not in result.stdout.split("SUMMARY")[-1], report
