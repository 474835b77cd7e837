"""The server on the default voices: Chinese and mixed text are spoken, and text the chosen voice cannot read is a
400 naming the field, before any audio (also when streaming)."""

from __future__ import annotations

import httpx
import pytest

pytest.importorskip("fastapi")

from zh_voice import require_zh

from fast_tts.audio import read_audio
from fast_tts.server.launch import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    require_zh()
    with ServerProcess(["--speakers-dir", str(tmp_path_factory.mktemp("speakers"))]) as srv:
        yield srv


def speech(server: ServerProcess, **body: object) -> httpx.Response:
    payload = {"model": "tts-1", "response_format": "wav", **body}
    return httpx.post(f"{server.url}/v1/audio/speech", json=payload, timeout=120)


@pytest.mark.parametrize("stream", [False, True])
def test_chinese_and_mixed_text_are_spoken(server: ServerProcess, stream: bool) -> None:
    response = speech(server, input="今天是2024年3月5日。We meet at 10 am.", voice="alloy", stream=stream)
    assert response.status_code == 200, response.text
    audio, sr = read_audio(response.content)
    assert sr == 22050 and 3 < len(audio) / sr < 12


@pytest.mark.parametrize("stream", [False, True])
def test_a_voice_that_cannot_read_the_text_is_a_400(server: ServerProcess, stream: bool) -> None:
    response = speech(server, input="Hello. 你好，世界。", voice="joe", stream=stream)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "input" and error["code"] == "invalid_value"
    assert "voice 'joe' speaks English and cannot read the Chinese text" in error["message"]


def test_voices_include_the_default_set(server: ServerProcess) -> None:
    models = httpx.get(f"{server.url}/v1/models").json()
    assert models["data"][0]["id"] == "fast-tts-piper+kokoro"
    voices = {v["id"]: v for v in httpx.get(f"{server.url}/v1/audio/voices").json()["data"]}
    assert {"auto", "joe", "zf_xiaobei"} <= set(voices) and voices["alloy"]["voice"] == "auto"
