"""AsyncMega3Engine on the rule checkpoint (engineered aligner and G2P): cloning, named speakers, streaming, errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
import pytest_asyncio
import torch
from megatts3_checkpoint import DEFAULT_ALIGNER_SEQ
from megatts3_fixtures import aligner_variant, encoder_variant, mega_root  # noqa: F401  (mega_root: fixture)

from fast_tts.errors import InvalidInputError, UnknownVoiceError
from fast_tts.kernels.linear import quantized_available

FAST = {"time_step": 1, "dur_alpha": 0.1, "seed": 7}  # short target audio keeps the full-size DiT/WaveVAE quick


def _prompt(tmp_path) -> tuple[bytes, str]:
    """A 1.2 s 16-bit wav (bytes) and a matching random latent (.npy path)."""
    import soundfile as sf

    sr = 24000
    t = np.arange(int(1.2 * sr)) / sr
    wav = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * np.random.default_rng(0).standard_normal(t.size)
    buf = io.BytesIO()
    sf.write(buf, wav.astype(np.float32), sr, format="WAV", subtype="PCM_16")
    lat = np.random.default_rng(1).standard_normal((1, 50, 32)).astype(np.float32)
    path = tmp_path / "ref.npy"
    np.save(path, lat)
    return buf.getvalue(), str(path)


@pytest_asyncio.fixture
async def engine(mega_root):  # noqa: F811
    from fast_tts.engine.megatts3 import AsyncMega3Engine

    eng = AsyncMega3Engine(aligner_variant(mega_root, DEFAULT_ALIGNER_SEQ), max_concurrency=2)
    yield eng
    await eng.shutdown()


async def test_reference_errors(engine, tmp_path) -> None:
    assert not engine.pipeline.bf16  # torch_dtype="auto" keeps the reference's float32
    wav, npy = _prompt(tmp_path)
    with pytest.raises(InvalidInputError, match="latent") as err:
        await engine.clone_voice_async("hello", wav, **FAST)
    assert err.value.field == "reference_latent"
    short = tmp_path / "short.npy"
    np.save(short, np.zeros((1, 3, 32), np.float32))
    with pytest.raises(InvalidInputError, match="does not belong"):
        await engine.clone_voice_async("hello", (wav, str(short)), **FAST)
    with pytest.raises(InvalidInputError):
        await engine.clone_voice_async("hello", (b"not audio", npy), **FAST)
    with pytest.raises(UnknownVoiceError):
        await engine.speak_async("hello", "nobody", **FAST)
    with pytest.raises(InvalidInputError, match="time_step"):
        await engine.clone_voice_async("hello", (wav, npy), time_step=0)


@pytest.mark.slow
@pytest.mark.timeout(1800)
async def test_clone_speaker_and_stream(engine, tmp_path) -> None:
    wav, npy = _prompt(tmp_path)
    with pytest.warns(UserWarning, match="pitch"):
        cloned = await engine.clone_voice_async("Hello there.", (wav, npy), pitch="high", **FAST)
    assert cloned.dtype == np.int16 and cloned.size > 24000 * 0.3 and int(np.abs(cloned).max()) > 0
    from fast_tts.devices import bf16_fast as bf16_supported

    # torch_dtype="auto": the G2P LM in bf16 where bf16 is fast (the DiT and WaveVAE stay float32)
    assert engine._backend.dtype == (torch.bfloat16 if bf16_supported("cpu") else torch.float32)
    await engine.add_speaker("alice", audio=(wav, npy))
    assert "alice" in engine.list_speakers()
    again = await engine.speak_async("Hello there.", "alice", **FAST)
    # Same voice, text and seed: the same samples up to float rounding (CPU kernels may pick other vector paths
    # between runs, which can flip the int16 truncation by one step).
    assert again.shape == cloned.shape and int(np.abs(again.astype(np.int32) - cloned).max()) <= 2
    text = "First part here. Second part there."
    params = dict(FAST, length_threshold=3, window_size=3)
    whole = await engine.speak_async(text, "alice", **params)
    chunks = [c async for c in engine.speak_stream_async(text, "alice", **params)]
    assert len(chunks) >= 2
    streamed = np.concatenate(chunks)
    assert streamed.shape == whole.shape
    # segments after the first are the non-streamed samples
    tail = chunks[-1].size
    assert int(np.abs(streamed[-tail:].astype(np.int32) - whole[-tail:]).max()) <= 2
    assert whole.size > cloned.size


def _fit_gain(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    """Least-squares g with got ~ g * want, and the largest |got - g * want| in int16 steps."""
    got64, want64 = got.astype(np.float64), want.astype(np.float64)
    gain = float(got64 @ want64 / (want64 @ want64))
    return gain, float(np.abs(got64 - gain * want64).max())


@pytest.mark.slow
@pytest.mark.timeout(1800)
async def test_a_streamed_first_segment_leaves_in_pieces_at_one_gain(engine, tmp_path) -> None:
    wav, npy = _prompt(tmp_path)
    await engine.add_speaker("bob", audio=(wav, npy))
    text = "One sentence, over a second long."
    params = dict(FAST, dur_alpha=0.15)
    whole = await engine.speak_async(text, "bob", **params)
    assert whole.size > 1.2 * 24000  # one segment, long enough to decode in more than one piece
    chunks = [c async for c in engine.speak_stream_async(text, "bob", **params)]
    streamed = np.concatenate(chunks)
    assert len(chunks) >= 2 and chunks[0].size <= 24000 + 3840  # the first second leaves first
    assert streamed.shape == whole.shape
    gain, worst = _fit_gain(streamed, whole)
    # the same samples times one constant (the level read from the first second): only int16 truncation differs
    assert 0.25 < gain < 4 and worst <= 2 + abs(gain) * 2


async def test_torch_dtype_bfloat16_runs_dit_and_wavvae_in_bf16(mega_root, tmp_path) -> None:  # noqa: F811
    from fast_tts.devices import bf16_fast as bf16_supported
    from fast_tts.engine.megatts3 import AsyncMega3Engine

    with pytest.raises(InvalidInputError, match="torch_dtype") as err:
        AsyncMega3Engine(tmp_path / "nothing-here", torch_dtype="float64")  # refused before any loading
    assert err.value.field == "torch_dtype"
    eng = AsyncMega3Engine(aligner_variant(mega_root, DEFAULT_ALIGNER_SEQ), torch_dtype="bfloat16")
    try:
        assert eng.pipeline.bf16 == bf16_supported("cpu")
        wav, npy = _prompt(tmp_path)
        out = await eng.clone_voice_async("Hello there.", (wav, npy), **FAST)
        assert out.dtype == np.int16 and out.size > 24000 * 0.3 and int(np.abs(out).max()) > 0
    finally:
        await eng.shutdown()


@pytest.mark.slow
async def test_a_wav_alone_clones_when_the_checkpoint_has_the_wavvae_encoder(mega_root, tmp_path) -> None:  # noqa: F811
    from fast_tts.audio import read_audio
    from fast_tts.engine.megatts3 import AsyncMega3Engine
    from fast_tts.models.megatts3 import frontend

    eng = AsyncMega3Engine(encoder_variant(mega_root), max_concurrency=1)
    try:
        wav, _ = _prompt(tmp_path)
        alone = await eng.clone_voice_async("Hello there.", wav, **FAST)
        assert alone.dtype == np.int16 and int(np.abs(alone).max()) > 0
        # the same as handing over, as the .npy, the encoder's latent of the padded reference
        ref, _ = read_audio(wav, target_sr=eng.sample_rate)
        padded = frontend.pad_prompt(np.asarray(ref, np.float32), eng.models.win_size)
        with torch.inference_mode():
            latent = eng.models.wavvae_encoder(torch.from_numpy(padded)[None]).numpy()
        given = await eng.clone_voice_async("Hello there.", (wav, latent), **FAST)
        assert given.shape == alone.shape and int(np.abs(given.astype(np.int32) - alone).max()) <= 2
        with pytest.raises(InvalidInputError, match="does not belong"):  # a given latent is still checked
            await eng.clone_voice_async("Hello there.", (wav, latent[:, :2]), **FAST)
    finally:
        await eng.shutdown()


@pytest.mark.skipif(not quantized_available("int4"), reason="this CPU lacks AVX-512 VNNI and BF16")
async def test_the_g2p_runs_on_4_bit_weights_when_asked(mega_root, tmp_path) -> None:  # noqa: F811
    from fast_tts.engine.megatts3 import AsyncMega3Engine
    from fast_tts.kernels.linear import TiledInt4Linear

    eng = AsyncMega3Engine(aligner_variant(mega_root, DEFAULT_ALIGNER_SEQ),
                           backend_options={"dtype": "bfloat16", "quantize": "int4"})
    try:
        linears = [m for m in eng.models.g2p.transformer.modules() if isinstance(m, TiledInt4Linear)]
        assert len(linears) == 4 * len(eng.models.g2p.transformer.layers)
        wav, npy = _prompt(tmp_path)
        out = await eng.clone_voice_async("Hello there.", (wav, npy), **FAST)
        assert out.dtype == np.int16 and out.size > 24000 * 0.3 and int(np.abs(out).max()) > 0
    finally:
        await eng.shutdown()
