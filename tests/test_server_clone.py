"""Cloning over HTTP with a family that can clone: a fixture-sized random ChatTTS checkpoint behind the server.

The weights are random, so the audio is noise of a known length; what is tested is the HTTP path: multipart upload,
reference decoding, engine call, streaming, speakers made from audio, and their use by name on the OpenAI route.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("torch")
sf = pytest.importorskip("soundfile")

from fast_tts.audio import read_audio  # noqa: E402
from fast_tts.server.launch import ServerProcess  # noqa: E402

FIXTURES = Path(
    os.environ.get("FAST_TTS_CHATTTS_FIXTURES", Path(__file__).resolve().parents[1] / ".." / "shared/fixtures/chattts")
)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (FIXTURES / "cases.json").is_file(), reason=f"no ChatTTS fixtures at {FIXTURES}"),
]
FAST = {"max_tokens": 40, "min_tokens": 40}  # random weights never stop by themselves
EXPECTED_SAMPLES = (2 * 40 - 1) * 256  # what the fixture model makes for 40 tokens


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    from chattts_checkpoint import build_fixture_checkpoint

    root = tmp_path_factory.mktemp("chattts_ckpt")
    build_fixture_checkpoint(root, FIXTURES)
    speakers = tmp_path_factory.mktemp("speakers")
    with ServerProcess(["--model", str(root), "--speakers-dir", str(speakers), "--max-concurrency", "2"],
                       timeout_s=180) as srv:
        yield srv


def _reference_wav() -> bytes:
    wav = (np.sin(np.arange(36000) * 0.03) * 0.3).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, wav, 24000, format="WAV")
    return buf.getvalue()


def test_clone_from_upload(server: ServerProcess) -> None:
    health = httpx.get(f"{server.url}/health").json()
    assert health["family"] == "chattts" and health["can_clone"] is True
    for stream in (False, True):
        response = httpx.post(
            f"{server.url}/api/clone", timeout=120,
            data={"text": "你好", "reference_text": "你好", "seed": "3", "stream": str(stream).lower(),
                  "response_format": "wav", "params": json.dumps(FAST)},
            files={"reference_audio": ("ref.wav", _reference_wav(), "audio/wav")},
        )
        assert response.status_code == 200, response.text
        audio, sample_rate = read_audio(response.content)
        assert sample_rate == 24000 and abs(len(audio) - EXPECTED_SAMPLES) <= 1


def test_clone_bad_uploads(server: ServerProcess) -> None:
    response = httpx.post(f"{server.url}/api/clone", timeout=30, data={"text": "你好"},
                          files={"reference_audio": ("ref.wav", b"RIFF....WAVEjunk" * 50, "audio/wav")})
    assert response.status_code == 400 and response.json()["error"]["param"] == "reference_audio"
    response = httpx.post(f"{server.url}/api/clone", timeout=30, files={"text": (None, "你好")})
    assert response.status_code == 400 and response.json()["error"]["param"] == "reference_audio"
    response = httpx.post(f"{server.url}/api/clone", timeout=30, data={"text": "你好", "top_p": "7"},
                          files={"reference_audio": ("ref.wav", _reference_wav(), "audio/wav")})
    assert response.status_code == 422 and response.json()["error"]["param"] == "top_p"


def test_speaker_from_audio_then_used_by_name(server: ServerProcess) -> None:
    response = httpx.post(f"{server.url}/api/speakers", timeout=120, data={"name": "alice", "reference_text": "你好"},
                          files={"audio": ("ref.wav", _reference_wav(), "audio/wav")})
    assert response.status_code == 201, response.text
    assert "alice" in httpx.get(f"{server.url}/api/speakers").json()["speakers"]
    assert "alice" in httpx.get(f"{server.url}/v1/audio/voices").json()["voices"]
    response = httpx.post(f"{server.url}/api/speak", timeout=120, json={
        "text": "你好", "voice": "alice", "seed": 3, "stream": False, "params": FAST})
    assert response.status_code == 200, response.text
    assert abs(len(read_audio(response.content)[0]) - EXPECTED_SAMPLES) <= 1
    assert httpx.delete(f"{server.url}/api/speakers/alice", timeout=30).status_code == 200
