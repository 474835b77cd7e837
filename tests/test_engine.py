"""AsyncEngine behaviour through the bundled Piper voice: concurrency, cancellation, loop freedom, validation."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fast_tts.engine.piper import AsyncPiperEngine
from fast_tts.engine.workers import WorkerPool
from fast_tts.errors import (
    EngineClosedError,
    InvalidInputError,
    UnknownVoiceError,
    UnsupportedOperationError,
)

THREE = "The quick brown fox jumps over the lazy dog. A second sentence follows it here. And this is the third one."
OTHER = "Rain is falling on the quiet town. Nobody walks outside tonight."


@pytest.fixture(scope="module")
def engine() -> AsyncPiperEngine:
    """One loaded bundled voice for the module (loading takes about 1.5 s)."""
    return AsyncPiperEngine(max_concurrency=2)


@pytest.fixture(scope="module")
def solo(engine: AsyncPiperEngine) -> dict[str, np.ndarray]:
    """Deterministic solo renderings used as references."""

    async def render() -> dict[str, np.ndarray]:
        return {t: await engine.speak_async(t, deterministic=True) for t in (THREE, OTHER)}

    return asyncio.run(render())


async def test_speak_returns_int16_and_is_deterministic(engine: AsyncPiperEngine, solo: dict) -> None:
    again = await engine.speak_async(THREE, "joe", deterministic=True)
    assert again.dtype == np.int16 and engine.sample_rate == 22050
    assert np.array_equal(again, solo[THREE])
    assert 4.0 < len(again) / engine.sample_rate < 12.0
    seeded = await engine.speak_async(THREE, seed=3)
    assert np.array_equal(seeded, solo[THREE])


async def test_cjk_punctuation_reads_as_its_ascii_form(engine: AsyncPiperEngine) -> None:
    """espeak drops 。 and ， (an English run of mixed text can end in them): without its closing stop a sentence's
    last sound lost its release ("MacBook" was heard "Macbaw")."""
    assert np.array_equal(await engine.speak_async("MacBook。", deterministic=True),
                          await engine.speak_async("MacBook.", deterministic=True))
    assert np.array_equal(await engine.speak_async("Yes，we can！", deterministic=True),
                          await engine.speak_async("Yes, we can!", deterministic=True))


async def test_stream_is_sentence_chunks_matching_speak(engine: AsyncPiperEngine, solo: dict) -> None:
    chunks = [c async for c in engine.speak_stream_async(THREE, deterministic=True)]
    assert len(chunks) == 3
    assert np.array_equal(np.concatenate(chunks), solo[THREE])
    first = await engine.speak_async("The quick brown fox jumps over the lazy dog.", deterministic=True)
    assert np.array_equal(chunks[0], first)


async def test_speed_changes_duration(engine: AsyncPiperEngine, solo: dict) -> None:
    fast = await engine.speak_async(OTHER, speed=2.0, deterministic=True)
    slow = await engine.speak_async(OTHER, speed=0.5, deterministic=True)
    normal = len(solo[OTHER])
    assert 0.4 * normal < len(fast) < 0.65 * normal
    assert 1.6 * normal < len(slow) < 2.4 * normal


async def test_concurrent_requests_all_complete(engine: AsyncPiperEngine, solo: dict) -> None:
    texts = [THREE, OTHER, THREE, OTHER, OTHER]
    results = await asyncio.gather(*(engine.speak_async(t, deterministic=True) for t in texts))
    for text, audio in zip(texts, results):
        assert np.array_equal(audio, solo[text])
    stats = engine.stats()
    assert stats["active"] == 0 and stats["queue_depth"] == 0 and stats["capacity"] == 2


async def test_cancel_mid_stream_leaves_others_intact(engine: AsyncPiperEngine, solo: dict) -> None:
    async def collect(text: str) -> np.ndarray:
        return np.concatenate([c async for c in engine.speak_stream_async(text, deterministic=True)])

    async def abandon_after_first_chunk() -> int:
        stream = engine.speak_stream_async(THREE * 3, deterministic=True)
        first = await stream.__anext__()
        await stream.aclose()
        return len(first)

    async def break_out() -> None:
        async for _ in engine.speak_stream_async(THREE * 3, deterministic=True):
            break

    victim = asyncio.create_task(engine.speak_async(THREE * 4, deterministic=True))
    others = [asyncio.create_task(collect(t)) for t in (OTHER, THREE, OTHER)]
    closed = asyncio.create_task(abandon_after_first_chunk())
    broken = asyncio.create_task(break_out())
    await asyncio.sleep(0.3)
    victim.cancel()
    results = await asyncio.gather(*others)
    assert await closed > 0
    await broken
    with pytest.raises(asyncio.CancelledError):
        await victim
    for text, audio in zip((OTHER, THREE, OTHER), results):
        assert np.array_equal(audio, solo[text])
    for _ in range(50):  # the abandoned generator is finalised by the loop shortly after `break`
        if engine.stats()["active"] == 0:
            break
        await asyncio.sleep(0.02)
    stats = engine.stats()
    assert stats["active"] == 0 and stats["queue_depth"] == 0
    assert stats["cancelled"] >= 3
    assert np.array_equal(await engine.speak_async(OTHER, deterministic=True), solo[OTHER])


async def test_stats_count_waiting_and_cancelling_waiters_frees_the_queue(engine: AsyncPiperEngine, solo: dict) -> None:
    tasks = [asyncio.create_task(engine.speak_async(THREE * 3, deterministic=True)) for _ in range(6)]
    for _ in range(100):
        await asyncio.sleep(0.01)
        if engine.stats()["active"] == 2:
            break
    stats = engine.stats()
    assert stats["active"] == 2 and stats["queue_depth"] == 4
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    stats = engine.stats()
    assert stats["active"] == 0 and stats["queue_depth"] == 0
    assert np.array_equal(await engine.speak_async(OTHER, deterministic=True), solo[OTHER])


async def test_event_loop_keeps_running_during_synthesis(engine: AsyncPiperEngine) -> None:
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    start = time.perf_counter()
    while time.perf_counter() - start < 1.0:  # enough compute, on any machine, that a blocked loop would show
        await engine.speak_async(THREE * 2)
    done.set()
    await tick
    assert len(gaps) > 20
    assert max(gaps) < 0.15, f"event loop stalled for {max(gaps):.3f} s"


async def test_errors_do_not_break_the_engine(engine: AsyncPiperEngine, solo: dict) -> None:
    for text in ("", "   \n\t", None):
        with pytest.raises(InvalidInputError) as info:
            await engine.speak_async(text)  # type: ignore[arg-type]
        assert info.value.field == "input"
    with pytest.raises(InvalidInputError) as info:
        await engine.speak_async("x " * 20_000)
    assert info.value.field == "input"
    for speed in (0.0, 10, "fast", True):
        with pytest.raises(InvalidInputError) as info:
            await engine.speak_async("Hello.", speed=speed)
        assert info.value.field == "speed"
    with pytest.raises(InvalidInputError) as info:
        await engine.speak_async("Hello.", temprature=0.3)
    assert info.value.field == "temprature"
    with pytest.raises(UnknownVoiceError):
        await engine.speak_async("Hello.", "nobody")
    with pytest.raises(UnsupportedOperationError, match="cannot clone"):
        await engine.clone_voice_async("Hello.", b"RIFF")
    with pytest.raises(UnsupportedOperationError):
        async for _ in engine.clone_voice_stream_async("Hello.", b"RIFF"):
            pass
    assert engine.stats()["active"] == 0
    assert np.array_equal(await engine.speak_async(OTHER, deterministic=True), solo[OTHER])


async def test_speaker_presets_persist(tmp_path: Path, solo: dict) -> None:
    first = AsyncPiperEngine(speakers_dir=tmp_path)
    await first.add_speaker("quick", voice="joe", speed=2.0, deterministic=True)
    assert first.list_speakers() == ["en_US-joe-medium", "joe", "quick"]
    with pytest.raises(UnsupportedOperationError):
        await first.add_speaker("clone", audio=b"RIFF....")
    with pytest.raises(InvalidInputError) as info:
        await first.add_speaker("../evil", voice="joe")
    assert info.value.field == "name"
    with pytest.raises(InvalidInputError):
        await first.add_speaker("joe", speed=1.5)
    with pytest.raises(InvalidInputError) as info:
        await first.add_speaker("slowest", speed=0.01)
    assert info.value.field == "speed"
    await first.shutdown()

    second = AsyncPiperEngine(speakers_dir=tmp_path)  # a fresh process would see the same store
    assert "quick" in second.list_speakers()
    quick = await second.speak_async(OTHER, "quick")
    assert 0.4 * len(solo[OTHER]) < len(quick) < 0.65 * len(solo[OTHER])
    await second.delete_speaker("quick")
    assert "quick" not in second.list_speakers()
    with pytest.raises(UnknownVoiceError):
        await second.delete_speaker("quick")
    with pytest.raises(InvalidInputError):
        await second.delete_speaker("joe")
    await second.shutdown()


async def test_a_delete_during_an_add_wins_in_memory_and_in_the_store(tmp_path: Path) -> None:
    engine = AsyncPiperEngine(speakers_dir=tmp_path)
    save = engine.store.save

    def slow_save(*args, **kwargs):  # widen the window in which the add writes the store
        time.sleep(0.3)
        return save(*args, **kwargs)

    engine.store.save = slow_save
    add = asyncio.create_task(engine.add_speaker("late", voice="joe", speed=1.2))
    await asyncio.sleep(0.1)
    await engine.delete_speaker("late")  # comes after the add, so it removes what the add wrote
    await add
    assert "late" not in engine.list_speakers()
    with pytest.raises(UnknownVoiceError):
        await engine.speak_async("Hi.", "late")
    await engine.shutdown()
    assert "late" not in AsyncPiperEngine(speakers_dir=tmp_path).list_speakers()


async def test_shutdown_refuses_every_call() -> None:
    engine = AsyncPiperEngine()
    assert len(await engine.speak_async("Ready.")) > 0
    await engine.shutdown()
    await engine.shutdown()  # idempotent
    assert engine.stats()["closed"] is True
    with pytest.raises(EngineClosedError):
        await engine.speak_async("Hello.")
    with pytest.raises(EngineClosedError):
        async for _ in engine.speak_stream_async("Hello."):
            pass
    with pytest.raises(EngineClosedError):
        await engine.add_speaker("x", voice="joe")
    with pytest.raises(EngineClosedError):
        await engine.delete_speaker("x")
    with pytest.raises(EngineClosedError):
        await engine.clone_voice_async("Hello.", b"")
    with pytest.raises(EngineClosedError):
        engine.list_speakers()


def test_worker_pool_runs_most_urgent_first_and_survives_errors() -> None:
    pool = WorkerPool(1, "test")
    gate = threading.Event()
    order: list[int] = []
    blocker = pool.submit(0, gate.wait)
    futures = [pool.submit(p, order.append, p) for p in (5, 1, 3, 0)]
    failing = pool.submit(2, lambda: 1 / 0)
    skipped = pool.submit(4, order.append, 99)
    assert skipped.cancel()
    gate.set()
    for future in [blocker, *futures]:
        future.result(timeout=10)
    assert isinstance(failing.exception(timeout=10), ZeroDivisionError)
    assert order == [0, 1, 3, 5]
    pool.shutdown()
    with pytest.raises(RuntimeError):
        pool.submit(0, order.append, 7)


async def test_new_request_first_chunk_overtakes_running_lookahead() -> None:
    """One worker, two long streams playing: a third request's first chunk comes next, not after their queue."""
    engine = AsyncPiperEngine(max_concurrency=3, workers=1)
    events: list[str] = []

    async def play(label: str, text: str, limit: int) -> None:
        count = 0
        async for _ in engine.speak_stream_async(text, deterministic=True):
            events.append(label)
            count += 1
            if count == limit:
                break

    long_text = THREE * 3
    players = [asyncio.create_task(play(label, long_text, 6)) for label in "AB"]
    while events.count("A") < 2 or events.count("B") < 2:
        await asyncio.sleep(0.005)
    mark = len(events)
    await play("C", OTHER, 1)
    after = events[mark:]
    assert after.index("C") <= 1, after  # at most the step already running finishes first
    for task in players:
        task.cancel()
    await asyncio.gather(*players, return_exceptions=True)
    await engine.shutdown()
