"""The server over real loopback HTTP: OpenAI client, streaming, SSE, concurrency, disconnects, bad input, speakers.

One server (the bundled Piper voice) is started per module as a subprocess.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from fast_tts.audio import read_audio  # noqa: E402
from fast_tts.engine.auto import bundled_languages  # noqa: E402
from fast_tts.server.launch import ServerProcess  # noqa: E402

SENTENCE = "The quick brown fox jumps over the lazy dog near the quiet river."
LONG_TEXT = " ".join(
    f"This is sentence number {n} of a long text that the server should stream piece by piece." for n in range(1, 13)
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    speakers = tmp_path_factory.mktemp("speakers")
    args = ["--speakers-dir", str(speakers), "--max-concurrency", "8", "--voice-alias", "nova=joe",
            "--allow-url-audio", "--max-upload-mb", "1"]
    with ServerProcess(args) as srv:
        srv.speakers_dir = speakers
        yield srv


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def duration_s(data: bytes, fmt: str, sample_rate: int) -> float:
    """Seconds of audio in an encoded body."""
    if fmt == "pcm":
        return len(data) / 2 / sample_rate
    audio, sr = read_audio(data)
    return len(audio) / sr


def metric(server: ServerProcess, name: str) -> float:
    """One unlabelled sample from /metrics."""
    text = httpx.get(f"{server.url}/metrics", headers=server.headers).text
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav", "pcm"])
def test_openai_client_every_format(client: openai.OpenAI, fmt: str) -> None:
    response = client.audio.speech.create(model="tts-1", voice="alloy", input=SENTENCE, response_format=fmt)
    if fmt == "pcm":  # OpenAI's pcm is 24 kHz, whatever rate the model has
        assert response.response.headers["x-sample-rate"] == "24000"
    seconds = duration_s(response.content, fmt, 24000)
    assert 1.5 < seconds < 12, f"{fmt}: {seconds:.2f} s of audio for one sentence"


def test_openai_streaming_first_bytes_before_synthesis_done(client: openai.OpenAI) -> None:
    started = time.perf_counter()
    first_at = None
    body = bytearray()
    with client.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts", voice="nova", input=LONG_TEXT, response_format="pcm", instructions="calm"
    ) as response:
        assert response.headers["content-type"].startswith("audio/pcm")
        for piece in response.iter_bytes(4096):
            if first_at is None:
                first_at = time.perf_counter() - started
            body += piece
    total = time.perf_counter() - started
    assert first_at is not None and first_at < total / 3, f"first bytes at {first_at:.2f} s of {total:.2f} s"
    assert response.headers["x-sample-rate"] == "24000"
    assert len(body) / 2 / 24000 > 20  # 12 long sentences


def test_sse_stream_format(server: ServerProcess) -> None:
    payload = {"model": "tts-1", "input": SENTENCE, "voice": "alloy", "response_format": "wav", "stream_format": "sse"}
    response = httpx.post(f"{server.url}/v1/audio/speech", json=payload, timeout=60)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[len("data: "):]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert events[-1]["type"] == "speech.audio.done" and "usage" in events[-1]
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert 1.5 < duration_s(audio, "wav", 22050) < 12


def test_models_and_voices(server: ServerProcess) -> None:
    models = httpx.get(f"{server.url}/v1/models").json()
    ids = [m["id"] for m in models["data"]]
    family = "piper+kokoro" if "zh" in bundled_languages() else "piper"  # the default voices (test_zh_server.py)
    assert ids[0] == f"fast-tts-{family}" and "tts-1" in ids and "gpt-4o-mini-tts" in ids
    voices = httpx.get(f"{server.url}/v1/audio/voices").json()
    by_id = {v["id"]: v for v in voices["data"]}
    assert by_id["joe"]["alias"] is False
    default = "auto" if "zh" in bundled_languages() else "joe"
    assert by_id["alloy"]["voice"] == default and by_id["nova"]["voice"] == "joe"


def test_native_speak_whole_file(server: ServerProcess) -> None:
    response = httpx.post(f"{server.url}/api/speak", json={"text": SENTENCE, "stream": False, "speed": 1.5,
                                                           "seed": 3, "response_format": "wav"}, timeout=60)
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content)
    fast = duration_s(response.content, "wav", 22050)
    normal = duration_s(httpx.post(f"{server.url}/api/speak", json={"text": SENTENCE, "seed": 3}, timeout=60).content,
                        "wav", 22050)
    assert fast < normal * 0.85  # speed reached the engine


def test_sixteen_concurrent_requests(client: openai.OpenAI) -> None:
    def one(i: int) -> float:
        response = client.audio.speech.create(model="tts-1", voice="alloy", input=f"Request number {i} is here.",
                                              response_format="wav")
        return duration_s(response.content, "wav", 22050)

    with ThreadPoolExecutor(16) as pool:
        seconds = list(pool.map(one, range(16)))
    assert all(0.5 < s < 8 for s in seconds), seconds


def test_disconnect_mid_stream_frees_everything(server: ServerProcess) -> None:
    cancelled_before = httpx.get(f"{server.url}/health").json()["engine"]["cancelled"]
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", f"{server.url}/v1/audio/speech",
                         json={"model": "tts-1", "input": LONG_TEXT, "voice": "alloy", "response_format": "mp3"}) as r:
            assert r.status_code == 200
            next(r.iter_raw())
        # leaving the block closes the connection after the first chunk
    started = time.perf_counter()
    follow = httpx.post(f"{server.url}/v1/audio/speech",
                        json={"model": "tts-1", "input": SENTENCE, "voice": "alloy", "response_format": "wav"},
                        timeout=30)
    assert follow.status_code == 200 and duration_s(follow.content, "wav", 22050) > 1.5
    assert time.perf_counter() - started < 15
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        health = httpx.get(f"{server.url}/health").json()
        idle = health["active"] == 0 and health["engine"]["active"] == 0
        if idle and health["engine"]["cancelled"] > cancelled_before:
            break
        time.sleep(0.1)
    assert health["engine"]["cancelled"] > cancelled_before, health  # the generation itself was cancelled
    assert health["active"] == 0 and health["engine"]["active"] == 0 and health["engine"]["queue_depth"] == 0
    assert metric(server, "fast_tts_active_streams") == 0
    assert metric(server, "fast_tts_engine_active") == 0
    assert metric(server, "fast_tts_cancelled_total") >= 1


def test_metrics_exposes_latency_histograms(server: ServerProcess) -> None:
    text = httpx.get(f"{server.url}/metrics").text
    assert 'fast_tts_time_to_first_audio_seconds_count{route="/v1/audio/speech",stream="true"}' in text
    assert "fast_tts_real_time_factor_bucket" in text and "fast_tts_queue_depth" in text
    assert re.search(r'fast_tts_http_requests_total\{route="/v1/audio/speech",status="200"\} [1-9]', text)


SPEECH = "/v1/audio/speech"


@pytest.mark.parametrize(
    ("path", "body", "content_type", "status", "param"),
    [
        (SPEECH, {"model": "tts-1", "input": "", "voice": "alloy"}, None, 400, "input"),
        (SPEECH, {"model": "tts-1", "input": "   ", "voice": "alloy"}, None, 400, "input"),
        (SPEECH, {"model": "tts-1", "input": "a" * 100_000, "voice": "alloy"}, None, 400, "input"),
        (SPEECH, {"model": "tts-1", "voice": "alloy"}, None, 400, "input"),
        (SPEECH, {"model": "tts-1", "input": "hi", "voice": "nobody"}, None, 404, "voice"),
        (SPEECH, {"model": "whisper-1", "input": "hi", "voice": "alloy"}, None, 404, "model"),
        (SPEECH, {"model": "tts-1", "input": "hi", "voice": "alloy", "response_format": "ogg"}, None, 400,
         "response_format"),
        (SPEECH, {"model": "tts-1", "input": "hi", "voice": "alloy", "speed": 4.5}, None, 400, "speed"),
        (SPEECH, {"model": "tts-1", "input": "hi", "voice": "alloy", "speed": 0.1}, None, 400, "speed"),
        (SPEECH, {"model": "tts-1", "input": "hi", "voice": "alloy", "stream_format": "ws"}, None, 400,
         "stream_format"),
        (SPEECH, "model=tts-1&input=hi", "application/x-www-form-urlencoded", 415, "Content-Type"),
        (SPEECH, "{not json", "application/json", 400, None),
        ("/api/speak", {"text": "hi", "temperature": 0.7}, None, 400, "temperature"),
        ("/api/speak", {"text": "hi", "top_p": 2}, None, 422, "top_p"),
        ("/api/speak", {"text": "hi", "bogus": 1}, None, 422, "bogus"),
        ("/api/speak", {"text": "hi", "voice": "nobody"}, None, 404, "voice"),
        ("/api/speak", {"text": "hi", "params": {"noise": [1]}}, None, 422, "params.noise.bool"),
    ],
)
def test_bad_input_is_4xx_json_naming_the_field(
    server: ServerProcess, path: str, body: object, content_type: str | None, status: int, param: str | None
) -> None:
    if isinstance(body, dict):
        response = httpx.post(f"{server.url}{path}", json=body, timeout=30)
    else:
        response = httpx.post(f"{server.url}{path}", content=body, headers={"content-type": content_type}, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param, error


def test_openai_client_raises_typed_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.audio.speech.create(model="tts-1", voice="nobody", input="hi")
    assert info.value.body["param"] == "voice"
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.speech.create(model="tts-1", voice="alloy", input="")
    assert info.value.body["param"] == "input"


def test_uploads_non_audio_and_unsupported_clone(server: ServerProcess) -> None:
    junk = {"audio": ("clip.wav", b"this is not audio at all" * 100, "audio/wav")}
    response = httpx.post(f"{server.url}/api/speakers", data={"name": "junk"}, files=junk, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["param"] == "audio"
    wav = httpx.post(f"{server.url}/api/speak", json={"text": "Hello.", "stream": False}, timeout=30).content
    response = httpx.post(f"{server.url}/api/clone", data={"text": "hi"},
                          files={"reference_audio": ("ref.wav", wav, "audio/wav")}, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["code"] == "unsupported_operation"
    response = httpx.post(f"{server.url}/api/speakers", data={"name": "cloned"},
                          files={"audio": ("ref.wav", wav, "audio/wav")}, timeout=30)
    assert response.status_code == 400  # Piper speakers are presets, not clones
    response = httpx.post(f"{server.url}/api/speakers", content=b"name=x", timeout=30,
                          headers={"content-type": "text/plain"})
    assert response.status_code == 415 and response.json()["error"]["param"] == "Content-Type"


def test_speakers_concurrent_create_delete_stay_consistent(server: ServerProcess) -> None:
    names = [f"preset-{i:02d}" for i in range(24)]
    doomed = set(names[::3])

    def create(name: str) -> int:
        return httpx.post(f"{server.url}/api/speakers", timeout=60,
                          json={"name": name, "params": {"voice": "joe", "speed": 1.25}}).status_code

    def delete(name: str) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the create may still be in flight: retry until it landed
            status = httpx.delete(f"{server.url}/api/speakers/{name}", timeout=60).status_code
            if status != 404:
                return status
            time.sleep(0.02)
        return 404

    with ThreadPoolExecutor(12) as pool:
        creates = [pool.submit(create, n) for n in names]
        deletes = [pool.submit(delete, n) for n in doomed]
        assert [f.result() for f in creates] == [201] * len(names)
        assert [f.result() for f in deletes] == [200] * len(doomed)
    listed = httpx.get(f"{server.url}/api/speakers").json()["speakers"]
    expected = set(names) - doomed
    assert {n for n in listed if n.startswith("preset-")} == expected
    on_disk = {p.stem for p in server.speakers_dir.glob("*.npz")}
    assert on_disk == expected
    assert not [p for p in server.speakers_dir.iterdir() if p.name.startswith(".") and p.suffix == ".tmp"]
    # a saved preset is a voice: the OpenAI route speaks with it, and its speed preset applies
    kept = sorted(expected)[0]
    preset = httpx.post(f"{server.url}/v1/audio/speech", timeout=60, json={
        "model": "tts-1", "input": SENTENCE, "voice": kept, "response_format": "wav"}).content
    assert duration_s(preset, "wav", 22050) > 1.0
    assert httpx.post(f"{server.url}/api/speakers", json={"name": kept}, timeout=30).status_code == 409
    bad = httpx.post(f"{server.url}/api/speakers", json={"name": "../evil"}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "name"
    assert httpx.delete(f"{server.url}/api/speakers/never-made", timeout=30).status_code == 404


def test_web_page_is_served(server: ServerProcess) -> None:
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="speak"' in page.text
    script = httpx.get(f"{server.url}/static/app.js")
    assert script.status_code == 200 and "MediaSource" in script.text


def test_server_survived(server: ServerProcess) -> None:
    assert server.proc.poll() is None
    assert "Traceback" not in server.log(), server.log()[-4000:]


def test_url_audio_when_the_operator_allows_it(server: ServerProcess, tmp_path) -> None:
    import functools
    import http.server

    wav = httpx.post(f"{server.url}/api/speak", json={"text": "Hello.", "stream": False}, timeout=30).content
    (tmp_path / "ref.wav").write_bytes(wav)
    (tmp_path / "big.wav").write_bytes(wav + b"\0" * (2 << 20))
    (tmp_path / "junk.wav").write_bytes(b"not audio" * 100)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{files.server_address[1]}"
    try:
        def create(url: str) -> httpx.Response:
            return httpx.post(f"{server.url}/api/speakers", timeout=30,
                              files={"name": (None, "remote"), "audio_url": (None, url)})

        assert create(f"{base}/ref.wav").status_code == 400  # fetched and decoded; Piper then cannot clone
        big = create(f"{base}/big.wav")
        assert big.status_code == 413 and big.json()["error"]["param"] == "audio_url"
        assert create(f"{base}/junk.wav").json()["error"]["param"] == "audio"
        assert create(f"{base}/missing.wav").json()["error"]["code"] == "fetch_failed"
        assert create("file:///etc/passwd").status_code == 400
    finally:
        files.shutdown()
