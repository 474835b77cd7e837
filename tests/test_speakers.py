"""Speaker store: round trip, name validation, corruption fallback, concurrent writers (threads and processes)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fast_tts.errors import InvalidInputError
from fast_tts.speakers import SpeakerStore


def _record(value: int) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """A speaker whose arrays and meta agree on `value`, so mixed-up writes are detectable."""
    return {"emb": np.full(256, value, dtype=np.float32), "ids": np.arange(value % 7 + 1)}, {"value": value}


def _check_consistent(arrays: dict[str, np.ndarray], meta: dict[str, int]) -> None:
    value = meta["value"]
    assert np.all(arrays["emb"] == value)
    assert arrays["ids"].tolist() == list(range(value % 7 + 1))


def test_round_trip_and_delete(tmp_path: Path) -> None:
    store = SpeakerStore(tmp_path)
    arrays, meta = _record(3)
    store.save("alice", arrays, {**meta, "text": "你好"})
    store.save("蔡 bob-1", *_record(4))
    got, got_meta = store.load("alice")
    assert got_meta == {"value": 3, "text": "你好"}
    assert got["emb"].dtype == np.float32 and np.array_equal(got["emb"], arrays["emb"])
    assert store.names() == sorted(["alice", "蔡 bob-1"])
    assert "alice" in store and "carol" not in store
    assert store.delete("alice") is True
    assert store.delete("alice") is False
    with pytest.raises(KeyError):
        store.load("alice")
    assert store.names() == ["蔡 bob-1"]


@pytest.mark.parametrize("name", ["", "  ", "a/b", "../x", "a\\b", ".hidden", "-x", "x" * 65, "a\x00b", " pad", 7])
def test_bad_names_are_rejected(tmp_path: Path, name: object) -> None:
    store = SpeakerStore(tmp_path)
    with pytest.raises(InvalidInputError) as info:
        store.save(name, {}, {})  # type: ignore[arg-type]
    assert info.value.field == "name"
    assert list(tmp_path.glob("*.npz")) == []


def test_object_arrays_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError):
        SpeakerStore(tmp_path).save("x", {"a": np.array([{"k": 1}], dtype=object)}, {})


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip_byte", "missing"])
def test_damaged_current_file_falls_back_to_previous(tmp_path: Path, damage: str) -> None:
    store = SpeakerStore(tmp_path)
    store.save("v", *_record(1))
    store.save("v", *_record(2))
    current = tmp_path / "v.npz"
    data = current.read_bytes()
    if damage == "truncate":
        current.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        current.write_bytes(b"\x00" * len(data))
    elif damage == "flip_byte":  # inside the stored float array: only the checksum can notice
        raw = bytearray(data)
        at = raw.find(np.float32(2).tobytes())
        raw[at] ^= 0xFF
        current.write_bytes(bytes(raw))
    else:  # crash between moving the old version aside and renaming the new one in
        current.unlink()
    arrays, meta = store.load("v")
    assert meta == {"value": 1}
    _check_consistent(arrays, meta)
    assert store.names() == ["v"]
    store.save("v", *_record(3))  # a new save over a damaged current keeps the good previous one
    assert store.load("v")[1] == {"value": 3}
    if damage != "missing":
        assert SpeakerStore(tmp_path)._read_valid(tmp_path / ".prev" / "v.npz")[1] == {"value": 1}  # type: ignore[index]


def test_leftover_temp_files_are_ignored_then_swept(tmp_path: Path) -> None:
    store = SpeakerStore(tmp_path)
    (tmp_path / ".tmp-abc.npz").write_bytes(b"partial")
    assert store.names() == []
    store.save("a", *_record(5))
    assert store.names() == ["a"]
    assert not list(tmp_path.glob(".tmp-*"))


def _save_forever(directory: str) -> None:
    store = SpeakerStore(directory)
    value = 0
    while True:
        value += 1
        arrays, meta = _record(value)
        store.save("victim", {**arrays, "big": np.full(1_000_000, value, dtype=np.float32)}, meta)


def test_kill_9_mid_write_keeps_a_good_version(tmp_path: Path) -> None:
    store = SpeakerStore(tmp_path)
    store.save("victim", *_record(0))
    ctx = multiprocessing.get_context("fork")
    for delay in (0.15, 0.4, 0.7):
        proc = ctx.Process(target=_save_forever, args=(str(tmp_path),))
        proc.start()
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(timeout=30)
        arrays, meta = store.load("victim")
        _check_consistent(arrays, meta)
        assert store.names() == ["victim"]


def _hammer(directory: str, worker: int, rounds: int) -> None:
    """Save and delete a few shared names many times."""
    store = SpeakerStore(directory)
    for i in range(rounds):
        name = f"s{(worker + i) % 4}"
        if i % 5 == 4:
            store.delete(name)
        else:
            store.save(name, *_record(worker * 1000 + i))


def _assert_store_consistent(directory: Path) -> None:
    store = SpeakerStore(directory)
    for name in store.names():
        arrays, meta = store.load(name)
        _check_consistent(arrays, meta)
    assert not list(directory.glob(".tmp-*"))


def test_concurrent_threads_keep_store_consistent(tmp_path: Path) -> None:
    threads = [threading.Thread(target=_hammer, args=(str(tmp_path), w, 40)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _assert_store_consistent(tmp_path)


def test_concurrent_processes_keep_store_consistent(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path), w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    _assert_store_consistent(tmp_path)


def test_delete_interrupted_between_its_unlinks_keeps_the_current_version(tmp_path: Path, monkeypatch) -> None:
    """A crash inside delete must not bring back the generation before the current one."""
    store = SpeakerStore(tmp_path)
    store.save("victim", *_record(1))
    store.save("victim", *_record(2))  # current 2, previous 1
    real_unlink = Path.unlink
    calls: list[Path] = []

    def dies_on_second(self: Path, missing_ok: bool = False) -> None:
        calls.append(self)
        if len(calls) == 2:
            raise SystemExit("killed between the two unlinks")
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", dies_on_second)
    with pytest.raises(SystemExit):
        store.delete("victim")
    monkeypatch.undo()
    arrays, meta = SpeakerStore(tmp_path).load("victim")
    assert meta["value"] == 2  # the speaker as it was (not yet deleted), never the older generation
    _check_consistent(arrays, meta)


def test_stamp_changes_with_every_save_and_delete(tmp_path: Path) -> None:
    store = SpeakerStore(tmp_path)
    assert store.stamp("s") is None
    stamps = set()
    for value in range(4):
        store.save("s", *_record(value))
        stamps.add(store.stamp("s"))
    assert len(stamps) == 4 and None not in stamps
    assert SpeakerStore(tmp_path).stamp("s") == store.stamp("s")  # another process sees the same token
    store.delete("s")
    assert store.stamp("s") is None


async def test_engines_sharing_a_store_see_each_others_changes(tmp_path: Path) -> None:
    """Two engines on one store (two server replicas): a cached speaker follows replaces and deletes made by the
    other engine."""
    from fast_tts.engine.piper import AsyncPiperEngine
    from fast_tts.errors import UnknownVoiceError

    one = AsyncPiperEngine(speakers_dir=tmp_path, max_concurrency=1)
    two = AsyncPiperEngine(speakers_dir=tmp_path, max_concurrency=1)
    try:
        text = "One two three four five six seven eight nine ten."
        await one.add_speaker("pace", speed=2.0)
        fast = await two.speak_async(text, "pace", seed=1)  # `two` loads and caches it
        await one.add_speaker("pace", speed=0.5)
        slow = await two.speak_async(text, "pace", seed=1)
        assert len(slow) > 2 * len(fast)
        assert "pace" in two.list_speakers()
        await one.delete_speaker("pace")
        assert "pace" not in two.list_speakers()
        with pytest.raises(UnknownVoiceError):
            await two.speak_async(text, "pace")
    finally:
        await one.shutdown()
        await two.shutdown()
