"""AsyncChatTTSEngine on the fixture-sized random checkpoint: speak, stream, batch, clone, speakers, cancel."""

from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from chattts_checkpoint import build_fixture_checkpoint

from fast_tts.engine.auto import AutoEngine, detect_family
from fast_tts.engine.chattts import AsyncChatTTSEngine
from fast_tts.errors import EngineClosedError, InvalidInputError, UnknownVoiceError

FIXTURES = Path(
    os.environ.get("FAST_TTS_CHATTTS_FIXTURES", Path(__file__).resolve().parents[1] / ".." / "shared/fixtures/chattts")
)
pytestmark = pytest.mark.skipif(not (FIXTURES / "cases.json").is_file(), reason=f"no ChatTTS fixtures at {FIXTURES}")

FAST = {"max_tokens": 40, "min_tokens": 40, "seed": 3}  # random weights never stop by themselves


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("chattts_engine_ckpt")
    build_fixture_checkpoint(root, FIXTURES)
    return root


@pytest.fixture
async def engine(checkpoint: Path, tmp_path: Path):
    eng = AsyncChatTTSEngine(checkpoint, dtype="float32", speakers_dir=tmp_path / "speakers")
    yield eng
    await eng.shutdown()


def test_auto_engine_detects_chattts(checkpoint: Path) -> None:
    assert detect_family(checkpoint) == "chattts"


async def test_speak_returns_int16_of_the_generated_length(engine: AsyncChatTTSEngine) -> None:
    audio = await engine.speak_async("你好，我们今天去公园散步。", **FAST)
    assert audio.dtype == np.int16 and audio.ndim == 1
    assert len(audio) == (2 * 40 - 1) * 256
    assert np.abs(audio).max() > 0


async def test_stream_equals_non_stream_within_crossfade_tolerance(engine: AsyncChatTTSEngine) -> None:
    params = {"max_tokens": 150, "min_tokens": 150, "seed": 5}
    full = (await engine.speak_async("hello world", **params)).astype(np.float32)
    chunks = [c async for c in engine.speak_stream_async("hello world", **params)]
    assert len(chunks) >= 2
    assert len(chunks[0]) < len(full) / 2  # the first chunk is small
    streamed = np.concatenate(chunks).astype(np.float32)
    assert len(streamed) == len(full)
    err = np.abs(streamed - full)
    assert np.median(err) <= 1.0  # int16 LSB: identical away from the seams
    assert err.max() < 0.2 * np.abs(full).max()


async def test_concurrent_requests_match_solo_runs(engine: AsyncChatTTSEngine) -> None:
    texts = ["你好", "我们今天去公园散步", "hello world okay", "然后笑"]
    solo = [await engine.speak_async(t, **FAST) for t in texts]
    together = await asyncio.gather(*(engine.speak_async(t, **FAST) for t in texts))
    for a, b in zip(solo, together):
        assert len(a) == len(b)
        assert np.abs(a.astype(np.int32) - b.astype(np.int32)).max() <= 2


async def test_long_text_segments_run_concurrently_and_join(engine: AsyncChatTTSEngine) -> None:
    text = "你好，我们今天去公园散步。" * 6
    audio = await engine.speak_async(text, length_threshold=10, window_size=12, **FAST)
    params = engine._params(engine._builtin_voice("default"), {"length_threshold": 10, "window_size": 12})
    segments = len(engine._prepare(text, engine._builtin_voice("default"), params, None))
    assert segments > 2
    crossfade = int(engine.join.fade_s * engine.sample_rate)
    assert len(audio) == segments * (2 * 40 - 1) * 256 - (segments - 1) * crossfade


async def test_cancel_mid_stream_leaves_others_intact(engine: AsyncChatTTSEngine) -> None:
    params = {"max_tokens": 200, "min_tokens": 200, "seed": 9}
    expected = await engine.speak_async("我们今天去公园散步", **params)
    stream = engine.speak_stream_async("你好", **params)
    other = asyncio.ensure_future(engine.speak_async("我们今天去公园散步", **params))
    first = await stream.__anext__()
    assert first.size
    await stream.aclose()
    result = await other
    assert np.abs(result.astype(np.int32) - expected.astype(np.int32)).max() <= 2
    assert engine.stats()["active"] == 0
    assert engine.runtime.code_gen.stats()["active"] == 0


async def test_speakers_by_name_persist(checkpoint: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    eng = AsyncChatTTSEngine(checkpoint, dtype="float32", speakers_dir=store)
    try:
        await eng.add_speaker("alice", seed=11)
        wav = (np.sin(np.arange(36000) * 0.05) * 0.3).astype(np.float32)
        buf = io.BytesIO()
        sf.write(buf, wav, 24000, format="WAV")
        await eng.add_speaker("bob", audio=buf.getvalue(), reference_text="你好")
        a1 = await eng.speak_async("你好", name="alice", **FAST)
        b1 = await eng.speak_async("你好", name="bob", **FAST)
        assert not np.array_equal(a1, b1)
    finally:
        await eng.shutdown()
    eng2 = AsyncChatTTSEngine(checkpoint, dtype="float32", speakers_dir=store)
    try:
        assert {"alice", "bob"} <= set(eng2.list_speakers())
        a2 = await eng2.speak_async("你好", name="alice", **FAST)
        assert np.abs(a1.astype(np.int32) - a2.astype(np.int32)).max() <= 2
        await eng2.delete_speaker("alice")
        with pytest.raises(UnknownVoiceError):
            await eng2.speak_async("你好", name="alice", **FAST)
    finally:
        await eng2.shutdown()


async def test_clone_voice(engine: AsyncChatTTSEngine) -> None:
    wav = (np.sin(np.arange(36000) * 0.03) * 0.3).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, wav, 24000, format="WAV")
    audio = await engine.clone_voice_async("你好", buf.getvalue(), reference_text="你好", **FAST)
    assert audio.dtype == np.int16 and len(audio) == (2 * 40 - 1) * 256


async def test_bad_input(engine: AsyncChatTTSEngine) -> None:
    with pytest.raises(InvalidInputError):
        await engine.speak_async("   ")
    with pytest.raises(InvalidInputError):
        await engine.speak_async("你好", top_p=3.0, **FAST)
    with pytest.raises(InvalidInputError):
        await engine.add_speaker("x", spk_emb="garbage")
    with pytest.raises(InvalidInputError):
        await engine.clone_voice_async("你好", b"not audio")
    await engine.shutdown()
    with pytest.raises(EngineClosedError):
        await engine.speak_async("你好", **FAST)


async def test_auto_engine_builds_chattts(checkpoint: Path) -> None:
    eng = AutoEngine(checkpoint)  # default dtype "auto": bf16 where supported
    try:
        assert isinstance(eng, AsyncChatTTSEngine)
        assert (await eng.speak_async("你好", **FAST)).size
    finally:
        await eng.shutdown()


async def test_bf16_engine_decodes_in_bf16_close_to_float32(checkpoint: Path, tmp_path: Path) -> None:
    import torch

    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no bf16 kernels")
    eng = AsyncChatTTSEngine(checkpoint, dtype="bfloat16", speakers_dir=tmp_path / "speakers")
    try:
        runtime = eng.runtime
        assert runtime.decode_bf16
        frames = torch.randn(40, runtime.hidden_size, generator=torch.Generator().manual_seed(0)) * 0.5
        fast = runtime.decode(frames, True)
        runtime.decode_bf16 = False
        exact = runtime.decode(frames, True)
    finally:
        await eng.shutdown()
    assert fast.dtype == np.float32 and fast.shape == exact.shape
    assert not np.array_equal(fast, exact)  # the bf16 path really ran
    snr = 10 * np.log10(np.sum(exact.astype(np.float64) ** 2) / np.sum((fast - exact).astype(np.float64) ** 2))
    assert snr > 25, f"bf16 decode is {snr:.1f} dB from float32"


def test_cli_backend_options_reach_the_lm_backend(checkpoint: Path, capsys) -> None:
    from fast_tts.cli import main

    args = ["speak", "hello", "--model", str(checkpoint), "-o", "-", "--backend-option", "quantize=int9"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "quantize must be None or one of int8, int4, not 'int9'" in err[0]
