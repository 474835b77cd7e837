"""MegaTTS3 small parts: phone ids (fixture a), front end (fixture f), text cleanup, crossfade, G2P, loader errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from megatts3_fixtures import tensors

from fast_tts.errors import InvalidInputError, ModelLoadError
from fast_tts.models.megatts3 import frontend
from fast_tts.models.megatts3.phones import (
    fix_total,
    length_regulate,
    merge,
    split_merged,
    split_stream,
)
from fast_tts.models.megatts3.pipeline import REFERENCE_JOIN, clean_text


def test_phone_tone_fixture_a() -> None:
    d = tensors("a_phone_tone")
    ph, tone = split_merged(d["merged"])
    assert torch.equal(ph, d["ph"]) and torch.equal(tone, d["tone"])
    assert torch.equal(merge(d["remerge_in_ph"], d["remerge_in_tone"]), d["remerged"])
    sp, st, sd = split_stream(d["stream"])
    assert torch.equal(sp, d["stream_ph"]) and torch.equal(st, d["stream_tone"]) and torch.equal(sd, d["stream_dur"])


def test_fix_total_and_length_regulator() -> None:
    dur = torch.tensor([3, 1, 2])
    assert fix_total(dur, 9).tolist() == [3, 1, 5]
    assert fix_total(dur, 2).tolist() == [1, 0, 1]  # 4 too many: one from each in turn, twice from the first
    assert int(fix_total(torch.tensor([1, 1]), 0).sum()) == 0
    assert length_regulate(torch.tensor([[2, 0, 3]])).tolist() == [[1, 1, 3, 3, 3]]


def test_frontend_fixture_f() -> None:
    d = tensors("f_frontend")
    padded = frontend.pad_prompt(d["wav_24k"].numpy())
    np.testing.assert_array_equal(padded, d["wav_24k_padded"].numpy())
    assert abs(frontend.loudness(padded) - float(d["loudness"][0])) <= 1e-6
    wav16 = frontend.to_16k(padded)
    np.testing.assert_array_equal(wav16, d["wav_16k"].numpy())
    mel_full = frontend.log_mel(d["wav_16k"].numpy())
    assert mel_full.shape == d["mel_full"].shape[1:]
    assert float((mel_full - d["mel_full"][0]).abs().max()) <= 1e-4
    _, mel = frontend.prompt_mel(padded)
    assert mel.shape == d["mel"].shape and float((mel - d["mel"]).abs().max()) <= 1e-4


def test_pad_prompt_rule() -> None:
    assert len(frontend.pad_prompt(np.zeros(960))) == 960 + 959 + 12000
    assert len(frontend.pad_prompt(np.zeros(959))) == 959 + 12000


def test_mel_filters_are_slaney_normalised() -> None:
    fb = frontend.mel_filters()
    assert fb.shape == (80, 201) and bool((fb >= 0).all())
    # Slaney norm: each triangle's area in Hz is 1, so sum * bin width ~ 1 up to the FFT grid's coarseness
    area = fb.sum(1) * (16000 / 400)
    assert float(area[20:].sub(1).abs().max()) < 0.1


def test_clean_text() -> None:
    assert clean_text("《三体》很好看\n第二行") == "三体很好看 第二行"
    assert clean_text("a\r\n\tb") == "a b"


def test_crossfade_and_int16() -> None:
    a, b = np.ones(10000), np.ones(10000)
    out = REFERENCE_JOIN.join([a, b], 24000)
    assert len(out) == 20000 - 3840
    assert np.allclose(out[:6000], 1) and np.allclose(out[-6000:], 1)
    assert REFERENCE_JOIN.int16(np.array([0.99999, -0.99999, 0.5])).tolist() == [32766, -32766, 16383]


def test_g2p_tiny_qwen2_follows_chain_and_cache_matches_full(tmp_path) -> None:
    from megatts3_checkpoint import write_g2p

    from fast_tts.models.lm import LMAdapter
    from fast_tts.models.megatts3.g2p import G2P

    chain = [145, 263, 302, 163, 101, 148, 801]
    write_g2p(tmp_path / "g2p", chain)
    g2p = G2P.from_folder(tmp_path / "g2p")
    assert isinstance(g2p, LMAdapter)
    ids = g2p.prompt_ids("你好, world")
    assert ids[-1] == g2p.speech_start + 145 and ids[0] == g2p.tokenizer.token_to_id("<BOT>")
    out = g2p.generate("你好, world")
    assert [i - g2p.speech_start for i in out] == chain[1:]
    ph, tone = g2p.phones(out)
    want_ph, want_tone = split_merged(torch.tensor(chain[:-1]))
    assert torch.equal(ph[0], want_ph) and torch.equal(tone[0], want_tone)
    # the cached greedy path equals a full recompute of the sequence without the cache
    seq = torch.tensor([ids + out])
    with torch.inference_mode():
        hidden = g2p.transformer(g2p.embed(seq[..., None]), torch.arange(seq.shape[1])[None])
        full = g2p.logits(hidden[0])[:, 0].argmax(-1)
    assert full[len(ids) - 1: len(ids) - 1 + len(out)].tolist() == out


def test_loader_names_missing_parts(tmp_path) -> None:
    from fast_tts.models.megatts3.loader import load_megatts3, read_state

    with pytest.raises(ModelLoadError, match="not found"):
        load_megatts3(tmp_path / "nope")
    (tmp_path / "diffusion_transformer").mkdir()
    with pytest.raises(ModelLoadError, match="duration_lm"):
        load_megatts3(tmp_path)
    bad = tmp_path / "x.ckpt"
    torch.save({"state_dict": {"other": {}}}, bad)
    with pytest.raises(ModelLoadError, match="'dit'"):
        read_state(bad, "dit")
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="cannot load"):
        read_state(bad, "dit")


def test_a_reference_is_a_wav_or_a_wav_with_its_latent(tmp_path) -> None:
    from fast_tts.audio import write_audio

    wav_path = tmp_path / "ref.wav"
    write_audio((np.sin(np.arange(24000) / 10) * 8000).astype(np.int16), wav_path, 24000)
    latent = np.zeros((1, 25, 32), dtype=np.float64)
    np.save(tmp_path / "ref.npy", latent)
    wav, none = frontend.read_reference(str(wav_path))
    assert wav.dtype == np.float32 and wav.shape == (24000,) and none is None
    for source in (str(tmp_path / "ref.npy"), (tmp_path / "ref.npy").read_bytes(), latent):
        wav2, lat = frontend.read_reference((wav_path.read_bytes(), source))
        assert np.array_equal(wav2, wav) and lat.dtype == np.float32 and lat.shape == (1, 25, 32)
    with pytest.raises(InvalidInputError) as err:
        frontend.read_reference((str(wav_path),))
    assert err.value.field == "reference_audio"
    with pytest.raises(InvalidInputError, match="latent"):
        frontend.read_reference((str(wav_path), b"not an npy file"))
