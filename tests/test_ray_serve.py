"""`fast-tts serve --ray` on a Ray cluster this module starts on 127.0.0.1 (num_cpus=2) and stops at the end.

Two replicas of the bundled Piper voice serve the openai client in every format and streamed; a speaker added,
replaced or deleted through one replica counts at once through the other; /metrics reports every replica and Serve;
a client that leaves cancels the generation on its replica; a replica killed with Ray's API mid-stream ends that
stream with an error within seconds while other requests succeed (requests it held are sent again or answered 503)
and Serve starts a new one; with --autoscale 1:2 a burst adds a replica and the quiet after it removes it.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
try:
    # tests/conftest.py set Ray's environment (loopback binding, token auth) before anything imported Ray
    import ray
    from ray import serve
except ImportError as exc:  # the `ray` extra is part of `test`: CI must not skip these
    if os.environ.get("CI", "").lower() == "true":
        raise
    pytest.skip(f"Ray Serve is not installed: {exc}", allow_module_level=True)

from fast_tts.audio import read_audio  # noqa: E402
from fast_tts.server.launch import ServerProcess, free_port  # noqa: E402

pytestmark = pytest.mark.slow

SENTENCE = "The quick brown fox jumps over the lazy dog near the quiet river."
LONG_TEXT = " ".join(
    f"This is sentence number {n} of a long text that the server streams piece by piece." for n in range(1, 41)
)
APP, DEPLOYMENT = "fast-tts", "FastTTS"
READY_S = 240.0  # Ray and two replicas starting on two busy cores


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=128 * 1024 * 1024)
    try:
        address = ray.get_runtime_context().gcs_address
        assert address.startswith("127.0.0.1:"), f"the test cluster must bind to loopback, not {address}"
        yield address
    finally:
        ray.shutdown()


class Servers:
    """At most one `fast-tts serve --ray` process on the cluster at a time, always on the same Serve port."""

    def __init__(self, address: str, speakers: str) -> None:
        self.address = address
        self.speakers = speakers
        self.port = free_port()  # Serve's proxy keeps the port of the first app deployed on the cluster
        self.current: ServerProcess | None = None
        self.flags: tuple[str, ...] = ()

    def start(self, *flags: str) -> ServerProcess:
        if self.current is not None and self.flags == flags:
            return self.current
        self.stop()
        args = ["--ray", "--ray-address", self.address, "--speakers-dir", self.speakers, *flags]
        self.current = ServerProcess(args, port=self.port, timeout_s=READY_S, stop_timeout_s=60.0)
        self.flags = flags
        return self.current

    def stop(self) -> None:
        if self.current is not None:
            self.current.stop()
            self.current = None
            _wait_for(lambda: APP not in serve.status().applications, 60.0, "app deleted")


@pytest.fixture(scope="module")
def servers(cluster: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    manager = Servers(cluster, str(tmp_path_factory.mktemp("speakers")))
    try:
        yield manager
    finally:
        manager.stop()


TWO_REPLICAS = ("--replicas", "2", "--max-concurrency", "2", "--max-queue", "16")


@pytest.fixture
def two(servers: Servers) -> ServerProcess:
    return servers.start(*TWO_REPLICAS)


def _wait_for(check: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for: {what}")


def replica_actors() -> dict[str, str]:
    """Replica id -> actor name, for the live replicas of the app (Ray's named-actor list)."""
    prefix = f"SERVE_REPLICA::{APP}#{DEPLOYMENT}#"
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)]
    return {name[len(prefix):]: name for name in names}


def running_replicas() -> int:
    app = serve.status().applications.get(APP)
    if app is None or DEPLOYMENT not in app.deployments:
        return 0
    return int(app.deployments[DEPLOYMENT].replica_states.get("RUNNING", 0))


def speak(server: ServerProcess, text: str = "Hi.", **fields: Any) -> httpx.Response:
    body = {"text": text, "stream": False, **fields}
    return httpx.post(f"{server.url}/api/speak", json=body, timeout=300)


def speak_on(server: ServerProcess, replica: str, **fields: Any) -> httpx.Response:
    """A request answered by `replica` (requests go to a replica Serve picks; send pairs until it is that one)."""
    for _ in range(30):
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda _: speak(server, **fields), range(2)))
        for answer in answers:
            if answer.headers.get("x-fast-tts-replica") == replica:
                return answer
    raise AssertionError(f"replica {replica} answered none of 60 requests")


def seconds_of(response: httpx.Response) -> float:
    audio, sr = read_audio(response.content)
    return len(audio) / sr


def test_openai_client_every_format_and_streaming_over_two_replicas(two: ServerProcess) -> None:
    client = openai.OpenAI(base_url=f"{two.url}/v1", api_key="unused", max_retries=0, timeout=120)
    replicas: set[str] = set()

    def one(fmt: str) -> None:
        response = client.audio.speech.create(model="tts-1", voice="alloy", input=SENTENCE, response_format=fmt)
        replicas.add(response.response.headers["x-fast-tts-replica"])
        data = response.content
        seconds = len(data) / 2 / 24000 if fmt == "pcm" else len(read_audio(data)[0]) / read_audio(data)[1]
        assert 1.5 < seconds < 12, f"{fmt}: {seconds:.2f} s of audio"

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(one, ["mp3", "opus", "aac", "flac", "wav", "pcm"]))
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="nova", input=LONG_TEXT[:600], response_format="pcm"
    ) as response:
        pieces = [piece for piece in response.iter_bytes(8192)]
        replicas.add(response.headers["x-fast-tts-replica"])
    assert len(pieces) > 3 and sum(map(len, pieces)) / 2 / 24000 > 10
    for _ in range(10):  # both replicas must have answered; concurrent requests spread over them
        if len(replicas) == 2:
            break
        with ThreadPoolExecutor(2) as pool:
            replicas |= {r.headers["x-fast-tts-replica"] for r in pool.map(lambda _: speak(two), range(2))}
    assert len(replicas) == 2, replicas
    assert set(replica_actors()) == replicas


def test_speaker_changes_through_one_replica_count_at_once_on_the_other(two: ServerProcess) -> None:
    first, second = sorted(replica_actors())
    created = None
    for _ in range(30):  # create it through `first`
        answer = httpx.post(f"{two.url}/api/speakers?replace=true", json={"name": "brisk", "params": {"speed": 2.0}})
        assert answer.status_code == 201, answer.text
        if answer.headers["x-fast-tts-replica"] == first:
            created = answer
            break
    assert created is not None
    fast = speak_on(two, second, text=SENTENCE, voice="brisk")  # `second` loads it (and caches it)
    assert fast.status_code == 200, fast.text

    for _ in range(30):  # replace it through `first`: `second` must drop its cached copy
        answer = httpx.post(f"{two.url}/api/speakers?replace=true", json={"name": "brisk", "params": {"speed": 0.5}})
        assert answer.status_code == 201
        if answer.headers["x-fast-tts-replica"] == first:
            break
    slow = speak_on(two, second, text=SENTENCE, voice="brisk")
    assert seconds_of(slow) > 2 * seconds_of(fast), (seconds_of(slow), seconds_of(fast))

    deleted = False
    while not deleted:  # delete it through whichever replica; both must stop knowing it
        answer = httpx.delete(f"{two.url}/api/speakers/brisk")
        assert answer.status_code in (200, 404)
        deleted = answer.status_code == 200
    for replica in (first, second):
        gone = speak_on(two, replica, text=SENTENCE, voice="brisk")
        assert gone.status_code == 404 and gone.json()["error"]["param"] == "voice"


def _samples(text: str, name: str) -> dict[str, float]:
    """replica -> value of the unlabelled-but-for-replica metric `name`."""
    found = {}
    for match in re.finditer(rf'^{re.escape(name)}\{{replica="([^"]+)"\}} ([0-9.e+-]+)$', text, re.M):
        found[match.group(1)] = float(match.group(2))
    return found


def test_metrics_report_every_replica_and_serve(two: ServerProcess) -> None:
    replicas = set(replica_actors())

    def complete() -> str | None:
        answer = httpx.get(f"{two.url}/metrics", timeout=30)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
        text = answer.text
        ours = set(_samples(text, "fast_tts_audio_seconds_total"))
        return text if ours == replicas and "\nray_serve_" in text else None

    text = _wait_for(complete, 90.0, "every replica's and Serve's metrics in /metrics", every_s=2.0)
    assert re.search(r'^fast_tts_http_requests_total\{replica="[^"]+",route="[^"]+",status="200"\}', text, re.M)
    assert re.search(r'^ray_serve_\w+\{.*deployment="FastTTS"', text, re.M)


def test_client_disconnect_cancels_generation_on_its_replica(two: ServerProcess) -> None:
    def engine_gauge(name: str, replica: str) -> float | None:
        text = httpx.get(f"{two.url}/metrics", timeout=30).text
        return _samples(text, f"fast_tts_engine_{name}").get(replica)

    with httpx.stream("POST", f"{two.url}/api/speak", json={"text": LONG_TEXT, "response_format": "pcm"},
                      timeout=60) as response:
        replica = response.headers["x-fast-tts-replica"]
        _wait_for(lambda: engine_gauge("cancelled", replica) is not None, 30.0, "the replica's metrics")
        before = engine_gauge("cancelled", replica) or 0.0
        for _ in response.iter_bytes(4096):
            break  # leave after the first audio: the rest of the long text must not be made

    # the replica publishes its metrics every few seconds; /metrics (any replica) reports them
    _wait_for(lambda: (engine_gauge("cancelled", replica) or 0) > before and engine_gauge("active", replica) == 0,
              60.0, f"the generation cancelled on replica {replica}", every_s=1.0)


def ongoing(replica: str, actors: dict[str, str]) -> int:
    """Requests Serve has handed to `replica` and not finished (asked of the replica actor itself)."""
    return int(ray.get(ray.get_actor(actors[replica], namespace="serve").get_num_ongoing_requests.remote(),
                       timeout=60))


def test_replica_killed_mid_stream(two: ServerProcess) -> None:
    _wait_for(lambda: running_replicas() == 2, 120.0, "two running replicas")
    before = replica_actors()

    def whole(i: int) -> httpx.Response:  # not streamed: answered only once made, so never cut
        return httpx.post(f"{two.url}/api/speak", json={"text": LONG_TEXT[: 250 + 20 * i], "stream": False},
                          timeout=300)

    queued = []
    with httpx.Client(timeout=300) as http, ThreadPoolExecutor(24) as pool:
        with http.stream("POST", f"{two.url}/api/speak", json={"text": LONG_TEXT, "response_format": "pcm"}) as cut:
            victim = cut.headers["x-fast-tts-replica"]
            survivor = next(r for r in before if r != victim)
            pieces = cut.iter_bytes(4096)
            received = len(next(pieces))
            for _wave in range(4):  # until the victim holds requests besides this stream (Serve spreads them)
                queued += [pool.submit(whole, i) for i in range(4)]
                time.sleep(1.0)
                if ongoing(victim, before) >= 3:
                    break
            assert ongoing(victim, before) >= 2, "Serve sent the victim none of 16 requests"
            kept = pool.submit(lambda: speak_on(two, survivor, text=LONG_TEXT[:1000], response_format="pcm"))
            while received < 64_000:
                received += len(next(pieces))
            ray.kill(ray.get_actor(before[victim], namespace="serve"), no_restart=True)
            killed_at = time.monotonic()
            with pytest.raises(httpx.HTTPError):  # the stream is cut: an incomplete body, not a clean end
                for piece in pieces:
                    received += len(piece)
            error_after_s = time.monotonic() - killed_at
        during = [speak(two) for _ in range(3)]  # the server keeps answering while Serve replaces the replica
        survivor_answer = kept.result()
        answers = [f.result() for f in queued]
    assert error_after_s < 5.0, error_after_s
    assert survivor_answer.status_code == 200 and len(survivor_answer.content) > 22050 * 2 * 15
    assert all(a.status_code == 200 for a in during), [(a.status_code, a.text[:300]) for a in during]
    for answer in answers:  # each request is done by a live replica, or refused with 503 + Retry-After
        assert answer.status_code in (200, 503), (answer.status_code, answer.text[:200])
        if answer.status_code == 503:
            assert answer.headers["retry-after"] and answer.json()["error"]["code"] == "replica_unavailable"
        else:
            assert answer.headers["x-fast-tts-replica"] != victim or not answer.headers.get("x-fast-tts-retried")
    assert any(a.headers.get("x-fast-tts-retried") for a in answers), "no request the victim held was sent again"
    restored = _wait_for(
        lambda: (lambda now: now if len(now) == 2 and victim not in now and running_replicas() == 2 else None)(
            replica_actors()), 180.0, "Serve to replace the killed replica", every_s=1.0)
    new = (set(restored) - set(before)).pop()
    assert speak_on(two, new).status_code == 200


def test_autoscaling_adds_a_replica_under_a_burst_and_removes_it_after(servers: Servers) -> None:
    server = servers.start("--autoscale", "1:2", "--max-concurrency", "1", "--target-ongoing", "1",
                           "--scale-delays", "1:6", "--max-queue", "32")
    assert running_replicas() == 1
    seen = []
    with ThreadPoolExecutor(8) as pool:
        burst = [pool.submit(speak, server, LONG_TEXT[:500]) for _ in range(8)]
        _wait_for(lambda: running_replicas() == 2, 120.0, "a second replica under the burst")
        seen = [f.result() for f in burst]
    assert all(a.status_code == 200 for a in seen), [a.status_code for a in seen]
    _wait_for(lambda: running_replicas() == 1 and len(replica_actors()) == 1, 120.0, "back to one replica")
