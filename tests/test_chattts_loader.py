"""ChatTTS loader, config inference, speaker strings and quantizer semantics on rule-built checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pybase16384
import pytest
import torch
from chattts_checkpoint import FULL_DIMS, build_checkpoint, file_sha256, state_shapes
from safetensors.torch import load_file, save_file

from fast_tts.errors import InvalidInputError, ModelLoadError
from fast_tts.models.chattts.decode import decode_rows, wav_length
from fast_tts.models.chattts.loader import HASHED_FILES, load_chattts, sha256_key
from fast_tts.models.chattts.quantizer import GFSQ
from fast_tts.models.chattts.speaker import (
    decode_prompt,
    decode_speaker,
    encode_prompt,
    encode_speaker,
    parse_spk_stat,
    randn_float16,
    sample_random_speaker,
    seeded_speaker,
)

# Sizes unlike the parity fixture's, to show that everything is inferred from the files.
SMALL_DIMS = {
    "gpt": {"hidden_size": 48, "intermediate_size": 96, "num_attention_heads": 3, "num_hidden_layers": 3,
            "num_audio_tokens": 626, "num_text_tokens": 120, "num_vq": 4},
    "embed": {"hidden_size": 48, "num_audio_tokens": 626, "num_text_tokens": 120, "num_vq": 4},
    "decoder": {"idim": 24, "odim": 24, "hidden": 40, "n_layer": 3, "bn_dim": 8},
    "dvae": {
        "encoder": {"idim": 16, "odim": 32, "hidden": 24, "n_layer": 1, "bn_dim": 8},
        "decoder": {"idim": 16, "odim": 16, "hidden": 24, "n_layer": 2, "bn_dim": 8},
        "vq": {"dim": 32, "levels": [5, 5, 5, 5], "G": 2, "R": 2},
    },
    "vocos": {"dim": 32, "intermediate_dim": 64, "num_layers": 3},
}


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("chattts_small")
    build_checkpoint(root, SMALL_DIMS, seed=3)
    return root


@pytest.fixture()
def ckpt_copy(small_ckpt: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(small_ckpt, dst)
    return dst


def test_full_size_layout_has_the_reference_parameter_count() -> None:
    counts = {c: sum(int(np.prod(s)) for k, s in entries if not k.endswith((".window", ".fb")))
              for c, entries in state_shapes(FULL_DIMS).items()}
    assert round(counts["gpt"] / 1e6, 1) == 188.8
    assert round(counts["embed"] / 1e6, 1) == 36.4
    assert round(sum(counts.values()) / 1e6, 1) == pytest.approx(279.8, abs=0.2)


def test_loads_any_size_and_runs(small_ckpt: Path) -> None:
    m = load_chattts(small_ckpt)
    cfg = m.config
    assert (cfg.gpt.hidden_size, cfg.gpt.num_layers, cfg.gpt.num_heads) == (48, 3, 3)
    assert (cfg.decoder.idim, cfg.decoder.hidden, cfg.decoder.n_layer) == (24, 40, 3)
    assert (cfg.dvae.encoder.n_layer, cfg.dvae.decoder.n_layer, cfg.dvae.vq_dim) == (1, 2, 32)
    assert (cfg.vocos.dim, cfg.vocos.num_layers, cfg.embed.num_text_tokens) == (32, 3, 120)
    assert cfg.dvae.residual_scale_base == "levels_minus_1"
    codes = torch.randint(0, 625, (5, 4))
    hidden = torch.randn(7, 48)
    assert [w.shape[0] for w in decode_rows(m, [codes, codes[:3]], use_decoder=False)] == [wav_length(5), wav_length(3)]
    assert [w.shape[0] for w in decode_rows(m, [hidden], use_decoder=True)] == [wav_length(7)]
    with torch.inference_mode():
        wav = torch.randn(24000) * 0.1
        idx = m.dvae.encode(wav)
    assert idx.shape == (1, 4, 47) and int(idx.min()) >= 0 and int(idx.max()) < 625
    assert [w.shape[0] for w in decode_rows(m, [codes[:0], codes], use_decoder=False)] == [0, wav_length(5)]
    for bad in (torch.zeros(1, 1, 4000), torch.zeros(100)):
        with pytest.raises(InvalidInputError) as err:
            m.dvae.encode(bad)
        assert err.value.field == "wav"


def test_gpt_in_bfloat16_tracks_float32(small_ckpt: Path) -> None:
    full, half = load_chattts(small_ckpt), load_chattts(small_ckpt, dtype=torch.bfloat16)
    assert half.gpt.embed.emb_text.weight.dtype == torch.bfloat16 and half.vocos.head.out.weight.dtype == torch.float32
    ids = torch.randint(0, 600, (2, 9, 4))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :3] = 0
    outs = []
    with torch.inference_mode():
        for m in (full, half):
            emb = m.gpt.embed.prompt_embedding(ids, torch.zeros(2, 9, dtype=torch.bool))
            hidden, _ = m.gpt.prefill(emb, mask, m.gpt.transformer.new_cache(2, 16))
            outs.append(m.code_lm.logits(hidden))
    assert outs[1].dtype == torch.float32
    err = (outs[0] - outs[1]).abs().max() / outs[0].abs().max()
    assert err < 0.05, err


def test_weight_norm_is_folded_at_load(small_ckpt: Path) -> None:
    m = load_chattts(small_ckpt)
    raw = load_file(str(small_ckpt / "asset/Embed.safetensors"))
    g = raw["head_code.2.parametrizations.weight.original0"]
    v = raw["head_code.2.parametrizations.weight.original1"]
    torch.testing.assert_close(m.gpt.embed.head_code[2].weight, g * v / v.norm(dim=1, keepdim=True))


def test_missing_file_names_it(ckpt_copy: Path) -> None:
    (ckpt_copy / "asset/tokenizer/tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match="tokenizer.json"):
        load_chattts(ckpt_copy)
    (ckpt_copy / "asset/DVAE.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="DVAE.safetensors"):
        load_chattts(ckpt_copy)


def test_wrong_shape_names_key_and_both_shapes(ckpt_copy: Path) -> None:
    path = ckpt_copy / "asset/Embed.safetensors"
    tensors = load_file(str(path))
    tensors["emb_code.1.weight"] = torch.zeros(626, 40)
    save_file(tensors, str(path))
    with pytest.raises(ModelLoadError, match=r"emb_code\.1\.weight.*\(626, 40\).*\(626, 48\)"):
        load_chattts(ckpt_copy)


def test_inconsistent_block_and_missing_tensor(ckpt_copy: Path) -> None:
    path = ckpt_copy / "asset/gpt/model.safetensors"
    tensors = load_file(str(path))
    save_file(tensors | {"embed_tokens.weight": torch.zeros(32000, 48)}, str(path))
    load_chattts(ckpt_copy)  # the unused token embedding some exports keep is accepted and dropped
    tensors["layers.1.mlp.up_proj.weight"] = torch.zeros(90, 48)
    save_file(tensors, str(path))
    named = r"model\.safetensors.*layers\.1\.mlp\.up_proj\.weight.*\(90, 48\).*\(96, 48\)"
    with pytest.raises(ModelLoadError, match=named):
        load_chattts(ckpt_copy)
    del tensors["layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(path))
    with pytest.raises(ModelLoadError, match=r"missing tensor 'layers\.1\.mlp\.up_proj\.weight'"):
        load_chattts(ckpt_copy)


def test_sha256_verification(ckpt_copy: Path) -> None:
    assert sha256_key("asset/gpt/config.json") == "sha256_asset_gpt_config_json"
    assert sha256_key("asset/DVAE.safetensors") == "sha256_asset_DVAE_safetensors"
    present = [p for p in HASHED_FILES if (ckpt_copy / p).is_file()]
    hashes = {sha256_key(p): file_sha256(ckpt_copy / p) for p in present}
    load_chattts(ckpt_copy, verify_sha256=hashes)
    bad = dict(hashes, sha256_asset_Vocos_safetensors="0" * 64)
    with pytest.raises(ModelLoadError, match="sha256 mismatch for .*Vocos.safetensors"):
        load_chattts(ckpt_copy, verify_sha256=bad)
    with pytest.raises(ModelLoadError, match="unknown sha256 map key"):
        load_chattts(ckpt_copy, verify_sha256={"sha256_asset_nothing": "0"})


def test_spk_stat_from_file_argument_or_absent(ckpt_copy: Path) -> None:
    m = load_chattts(ckpt_copy)
    assert m.spk_std is not None and m.spk_std.shape == (48,)
    (ckpt_copy / "asset/spk_stat.json").unlink()
    assert load_chattts(ckpt_copy).spk_std is None
    torch.save(torch.cat([m.spk_std, m.spk_mean]).float(), ckpt_copy / "asset/spk_stat.pt")
    from_pt = load_chattts(ckpt_copy)
    assert torch.equal(from_pt.spk_std, m.spk_std) and torch.equal(from_pt.spk_mean, m.spk_mean)
    torch.save(torch.zeros(7), ckpt_copy / "asset/spk_stat.pt")
    with pytest.raises(ModelLoadError, match="spk_stat.pt"):
        load_chattts(ckpt_copy)
    with pytest.raises(InvalidInputError, match="96"):  # a spk_stat of the wrong size is refused
        parse_spk_stat(pybase16384.encode_to_string(np.zeros(10, "<f2").tobytes()), 48)


def test_speaker_strings_round_trip_and_reject_garbage() -> None:
    std, mean = torch.ones(32, dtype=torch.float16), torch.zeros(32, dtype=torch.float16)
    torch.manual_seed(0)
    s = sample_random_speaker(std, mean)
    torch.manual_seed(0)
    assert torch.equal(decode_speaker(s, 32), randn_float16(32))
    assert encode_speaker(decode_speaker(s)) == s
    with pytest.raises(InvalidInputError) as err:
        decode_speaker("not a speaker")
    assert err.value.field == "spk_emb"
    with pytest.raises(InvalidInputError):
        decode_speaker(s, 64)
    codes = torch.randint(0, 625, (4, 9), dtype=torch.int32)
    assert torch.equal(decode_prompt(encode_prompt(codes)), codes)
    with pytest.raises(InvalidInputError) as err:
        decode_prompt("garbage")
    assert err.value.field == "spk_smp"


def test_a_seeded_speaker_is_the_draw_after_that_seed_and_leaves_the_global_rng_alone() -> None:
    std, mean = torch.ones(32, dtype=torch.float16), torch.zeros(32, dtype=torch.float16)
    torch.manual_seed(5)
    want = sample_random_speaker(std, mean)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    assert seeded_speaker(std, mean, 5) == want
    assert torch.equal(torch.random.get_rng_state(), state)


def test_randn_float16_is_a_standard_normal_stream() -> None:
    torch.manual_seed(1)
    x = randn_float16(4096 + 5).float()
    assert abs(x.mean().item()) < 0.06 and abs(x.std().item() - 1) < 0.06
    torch.manual_seed(1)
    assert torch.equal(randn_float16(100)[:80], x[:80].half())  # the last 16 of a size not divisible by 16 are redrawn


def test_residual_scale_semantics() -> None:
    trained = GFSQ(8, (5, 5, 5, 5), 2, 2, "levels_minus_1")
    current = GFSQ(8, (5, 5, 5, 5), 2, 2, "levels")
    assert trained.scales[:, 0].tolist() == [1.0, 0.25]
    assert current.scales[:, 0].tolist() == pytest.approx([1.0, 0.2])
    # digit d of level 5 maps to d * 0.5 - 1 in both releases
    assert trained.codebook[:5, 0].tolist() == current.codebook[:5, 0].tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]
    current.load_state_dict(trained.state_dict())
    idx = torch.randint(0, 625, (2, 4, 6))
    with torch.inference_mode():
        assert not torch.allclose(trained.decode(idx), current.decode(idx))
        for q in (trained, current):
            codes = q.encode(torch.randn(2, 8, 6) * 3)
            assert codes.shape == (2, 4, 6) and int(codes.min()) >= 0 and int(codes.max()) < 625
    with pytest.raises(ValueError, match="residual_scale_base"):
        GFSQ(8, (5, 5, 5, 5), 2, 2, "levels_plus_1")  # type: ignore[arg-type]


_VQ_ORACLE = """
import sys, torch
from safetensors.torch import save_file
from vector_quantize_pytorch import GroupedResidualFSQ
torch.manual_seed(0)
ref = GroupedResidualFSQ(dim=64, levels=[5, 5, 5, 5], num_quantizers=2, groups=2).eval()
for p in ref.parameters():
    p.data.normal_(0, 0.5)
x = torch.randn(3, 50, 64) * 2
with torch.no_grad():
    _, ind = ref(x)
    feat = ref.get_output_from_indices(ind)
out = {k: v.contiguous() for k, v in ref.state_dict().items() if "project" in k}
save_file(out | {"x": x, "ind": ind.long().contiguous(), "feat": feat.contiguous()}, sys.argv[1])
"""


@pytest.mark.skipif(not os.environ.get("FAST_TTS_VQ_LEGACY_PYTHON"),
                    reason="set FAST_TTS_VQ_LEGACY_PYTHON to a python with vector_quantize_pytorch 1.14.x")
def test_trained_semantics_match_vector_quantize_pytorch_1_14(tmp_path: Path) -> None:
    """Oracle run in a side environment (`pip install --no-deps vector_quantize_pytorch==1.14.8 einops einx`)."""
    out = tmp_path / "vq.safetensors"
    subprocess.run([os.environ["FAST_TTS_VQ_LEGACY_PYTHON"], "-c", _VQ_ORACLE, str(out)], check=True)
    ref = load_file(str(out))
    ours = GFSQ(64, (5, 5, 5, 5), 2, 2, "levels_minus_1")
    ours.quantizer.load_state_dict({k: v for k, v in ref.items() if "project" in k})
    ind = ref["ind"].permute(1, 2, 0, 3).reshape(3, 50, 4).transpose(1, 2)  # (G, B, T, R) -> (B, G*R, T)
    with torch.inference_mode():
        assert torch.equal(ours.encode(ref["x"].transpose(1, 2)), ind)
        torch.testing.assert_close(ours.decode(ind).transpose(1, 2), ref["feat"], rtol=0, atol=1e-6)


def test_tokenizer_larger_than_embedding_is_refused(ckpt_copy: Path) -> None:
    path = ckpt_copy / "asset/Embed.safetensors"
    tensors = load_file(str(path))
    tensors["emb_text.weight"] = tensors["emb_text.weight"][:100].clone()
    for part in ("original0", "original1"):
        key = f"head_text.parametrizations.weight.{part}"
        tensors[key] = tensors[key][:100].clone()
    save_file(tensors, str(path))
    with pytest.raises(ModelLoadError, match="120 tokens but emb_text has 100 rows"):
        load_chattts(ckpt_copy)


def test_gpt_config_json_is_read(ckpt_copy: Path) -> None:
    cfg_path = ckpt_copy / "asset/gpt/config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["hidden_act"] = "gelu"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="hidden_act"):
        load_chattts(ckpt_copy)
