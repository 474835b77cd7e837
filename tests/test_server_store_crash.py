"""The speaker store survives `kill -9` of the server in the middle of writes.

Writers keep replacing speakers through HTTP, each version with its own speed, while the server process is killed
with SIGKILL at a different moment each round. Afterwards every speaker in the store is the version last
acknowledged or the one that was in flight (never a mix, an older one, or a damaged file), and the server starts on
the store and speaks with every speaker.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

pytest.importorskip("fastapi")

from fast_tts.server.launch import ServerProcess
from fast_tts.speakers import SpeakerStore

pytestmark = pytest.mark.slow

WRITERS = 4


class _Writer(threading.Thread):
    """Replaces speaker `name` with version 1, 2, 3... (speed 1 + version/1000) until the server dies."""

    def __init__(self, url: str, name: str, first: int) -> None:
        super().__init__(daemon=True)
        self.url, self.name = url, name
        self.version = first
        self.acked: int | None = None
        self.in_flight: int | None = None

    @staticmethod
    def speed(version: int) -> float:
        return round(1.0 + version / 1000, 3)

    def run(self) -> None:
        with httpx.Client(timeout=30) as http:
            while True:
                self.version += 1
                self.in_flight = self.version
                try:
                    answer = http.post(f"{self.url}/api/speakers", params={"replace": "true"},
                                       json={"name": self.name, "params": {"speed": self.speed(self.version)}})
                except httpx.HTTPError:
                    return  # the server is gone; in_flight may or may not have landed
                assert answer.status_code == 201, answer.text
                self.acked, self.in_flight = self.version, None


@pytest.mark.parametrize("kill_after_s", [0.05, 0.4, 1.2])
def test_store_survives_kill_9_mid_write(tmp_path, kill_after_s: float) -> None:
    speakers = tmp_path / "speakers"
    acked: dict[str, int | None] = {}
    with ServerProcess(["--speakers-dir", str(speakers)]) as server:
        writers = [_Writer(server.url, f"s{k}", 100 * k) for k in range(WRITERS)]
        for writer in writers:
            writer.start()
        deadline = time.monotonic() + 120
        while any(w.acked is None for w in writers) and time.monotonic() < deadline:
            time.sleep(0.01)  # every writer has a version on disk, then the kill lands a moment later
        time.sleep(kill_after_s)
        server.proc.kill()  # SIGKILL: no shutdown path at all
        server.proc.wait()
        for writer in writers:
            writer.join(timeout=30)
    assert all(w.acked is not None for w in writers), "the server died before any write was acknowledged"

    store = SpeakerStore(speakers)
    for writer in writers:
        allowed = {writer.speed(v) for v in (writer.acked, writer.in_flight) if v is not None}
        _, meta = store.load(writer.name)
        assert meta["params"]["speed"] in allowed, (writer.name, meta, allowed)
        acked[writer.name] = writer.acked

    with ServerProcess(["--speakers-dir", str(speakers)]) as again:
        listed = httpx.get(f"{again.url}/api/speakers", timeout=30).json()["speakers"]
        assert set(acked) <= set(listed)
        for name in acked:
            answer = httpx.post(f"{again.url}/api/speak", timeout=60,
                                json={"text": "Still here.", "voice": name, "stream": False})
            assert answer.status_code == 200, answer.text
        # and it keeps writing: the crash left nothing that blocks the next save
        answer = httpx.post(f"{again.url}/api/speakers", params={"replace": "true"}, timeout=30,
                            json={"name": "s0", "params": {"speed": 1.5}})
        assert answer.status_code == 201
