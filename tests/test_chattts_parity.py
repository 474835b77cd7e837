"""Parity of our ChatTTS modules with the reference package's golden outputs (the fixture folder).

The checkpoint is rebuilt from the fixture's weight rule in the official layout and loaded through the real loader.
The fixture folder comes from FAST_TTS_CHATTTS_FIXTURES (default ../shared/fixtures/chattts next to the repo); the
tests read every expected value from it, so any fixture set of the same format runs unchanged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from chattts_checkpoint import build_fixture_checkpoint
from mkl_path import under_compatible_mkl
from safetensors.torch import load_file

from fast_tts.models.chattts.decode import decode_rows, rows_to_mel, wav_length
from fast_tts.models.chattts.gpt import ChatTTSGPT, compact_left_padding, inject_speaker
from fast_tts.models.chattts.loader import ChatTTSModels, load_chattts
from fast_tts.models.chattts.speaker import (
    decode_prompt,
    decode_speaker,
    encode_prompt,
    normalize_speaker,
    sample_random_speaker,
)
from fast_tts.models.chattts.tokenizer import decorate_code_prompts, decorate_text_prompts
from fast_tts.models.lm import LMAdapter

FIXTURES = Path(
    os.environ.get("FAST_TTS_CHATTTS_FIXTURES", Path(__file__).resolve().parents[1] / ".." / "shared/fixtures/chattts")
)
pytestmark = pytest.mark.skipif(not (FIXTURES / "cases.json").is_file(), reason=f"no ChatTTS fixtures at {FIXTURES}")

REL_TOL = 1e-4  # of each tensor's max magnitude (fixture README)
WAV_ATOL = 1e-5


def close(ours: torch.Tensor, ref: torch.Tensor, rel: float = REL_TOL, atol: float = 0.0) -> float:
    """Assert shapes equal and max |ours - ref| <= rel * max|ref| + atol; return the max error."""
    assert tuple(ours.shape) == tuple(ref.shape), (tuple(ours.shape), tuple(ref.shape))
    err = (ours.double() - ref.double()).abs().max().item() if ref.numel() else 0.0
    bound = rel * ref.double().abs().max().item() + atol
    assert err <= bound, f"max error {err:.3g} > {bound:.3g}"
    return err


@pytest.fixture(scope="session")
def cases() -> dict[str, Any]:
    data = json.loads((FIXTURES / "cases.json").read_text(encoding="utf-8"))
    return {c["name"]: c for c in data["cases"]} | {"_env": data["env"]}


@pytest.fixture(scope="session")
def ref() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "tensors.safetensors"))


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("chattts_fixture_ckpt")
    hashes = build_fixture_checkpoint(root, FIXTURES)
    manifest = json.loads((FIXTURES / "weights_manifest.json").read_text())
    names = [(f"{e['component']}.{e['key']}", e["sha256"]) for e in manifest]
    wrong = [name for name, sha in names if hashes.get(name) != sha]
    assert not wrong, f"rebuilt tensors differ from the manifest: {wrong[:5]}"
    assert len(hashes) == len(manifest)
    return root


@pytest.fixture(scope="session")
def models(checkpoint: Path, cases: dict[str, Any]) -> ChatTTSModels:
    # The fixture's quantizer version fixes the residual scale: 1.26+ uses levels^-r, 1.12.5-1.25 (levels-1)^-r.
    major, minor = (int(x) for x in cases["_env"]["vector_quantize_pytorch"].split(".")[:2])
    base = "levels" if (major, minor) >= (1, 26) else "levels_minus_1"
    return load_chattts(checkpoint, "cpu", torch.float32, residual_scale_base=base)


def _spk_vector(models: ChatTTSModels, spk: str) -> torch.Tensor:
    return normalize_speaker(decode_speaker(spk, models.config.gpt.hidden_size))


DEFAULT_CODE_PROMPT = "[speed_5]"  # InferCodeParams.prompt default of the reference


def _code_prompt(models: ChatTTSModels, texts: list[str], spk: str | None, txt_smp: str | None = None,
                 codes: torch.Tensor | None = None, prompt: str = DEFAULT_CODE_PROMPT
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, attention_mask, text_mask and the prefill embedding (speaker injected) of a code prompt."""
    prompts = decorate_code_prompts(texts, prompt, txt_smp, spk)
    ids, mask, text_mask = models.tokenizer.encode(prompts, models.config.embed.num_vq, codes)
    with torch.inference_mode():
        emb = models.gpt.embed.prompt_embedding(ids, text_mask)
        if spk is not None:
            emb = inject_speaker(emb, ids[..., 0], _spk_vector(models, spk), models.tokenizer.spk_emb_id)
    return ids, mask, text_mask, emb


@torch.inference_mode()
def _teacher_forced(gpt: ChatTTSGPT, emb: torch.Tensor, mask: torch.Tensor, forced: torch.Tensor, code: bool
                    ) -> torch.Tensor:
    """Hidden states (B, S, H) that predict each of the S forced tokens (B, S, nq) through the KV cache."""
    b, steps = forced.shape[:2]
    cache = gpt.transformer.new_cache(b, mask.shape[1] + steps + 1)
    hidden, pos = gpt.prefill(emb, mask, cache)
    out = [hidden]
    for s in range(steps - 1):
        tok = forced[:, s]
        step_emb = gpt.embed.code_embedding(tok) if code else gpt.embed.emb_text(tok[..., 0])
        hidden = gpt.step(step_emb, pos + s, cache)
        out.append(hidden)
    return torch.stack(out, 1)


def test_tokenize(models: ChatTTSModels, cases: dict[str, Any], ref: dict[str, torch.Tensor]) -> None:
    case = cases["tokenize"]
    inp, out = case["inputs"], case["outputs"]
    texts, spk, tok = inp["texts"], cases["speaker"]["outputs"]["strings"][0], models.tokenizer
    assert decorate_code_prompts(texts, inp["prompt"], None, spk) == out["code_prompts_spk"]
    assert decorate_code_prompts(texts, inp["prompt"], None, None) == out["code_prompts_nospk"]
    assert decorate_text_prompts(texts, "") == out["refine_prompts"]
    assert [tok.ids(t) for t in texts] == out["per_text_ids_no_special"]
    assert (len(tok), tok.spk_emb_id, tok.break_0_id, tok.eos_id) == (
        out["len_tokenizer"], out["spk_emb_ids"], out["break_0_ids"], out["eos_token_text"])
    for prompts, name in ((out["code_prompts_spk"], "code_%s_spk"), (out["code_prompts_nospk"], "code_%s_nospk"),
                          (out["refine_prompts"], "refine_%s")):
        ids, mask, text_mask = tok.encode(prompts, models.config.embed.num_vq)
        assert torch.equal(ids[..., 0], ref[f"tokenize/{name % 'ids'}"])
        assert torch.equal(ids, ids[..., :1].expand_as(ids))
        assert torch.equal(mask, ref[f"tokenize/{name % 'mask'}"])
        assert torch.equal(text_mask, mask.bool())


def test_speaker(models: ChatTTSModels, cases: dict[str, Any], ref: dict[str, torch.Tensor]) -> None:
    case = cases["speaker"]
    strings = case["outputs"]["strings"]
    for k, seed in enumerate(case["inputs"]["seeds"]):
        torch.manual_seed(seed)
        assert sample_random_speaker(models.spk_std, models.spk_mean) == strings[k]
        assert torch.equal(decode_speaker(strings[k]), ref["speaker/vectors"][k])
    assert torch.equal(normalize_speaker(decode_speaker(strings[0])), ref["speaker/normalized0"])


def test_code_generation_prefill(models: ChatTTSModels, cases: dict[str, Any], ref: dict[str, torch.Tensor]) -> None:
    inp = cases["code_generation"]["inputs"]
    spk = cases["speaker"]["outputs"]["strings"][0]
    _, mask, _, emb = _code_prompt(models, inp["normalized_texts"], spk, prompt=inp["prompt"])
    ref_mask = ref["codegen/prefill_attention_mask"]
    assert torch.equal(mask.float(), ref_mask)
    close(emb, ref["codegen/prefill_inputs_embeds"])
    # Our cache holds each row's prompt at positions 0..n-1: the reference's positions of its real tokens.
    _, positions, lengths = compact_left_padding(emb, mask)
    for b in range(mask.shape[0]):
        valid = ref["codegen/prefill_position_ids"][b][ref_mask[b].bool()]
        assert torch.equal(positions[b, : lengths[b]].float(), valid)


def test_code_generation_logits_and_hiddens(models: ChatTTSModels, cases: dict[str, Any],
                                            ref: dict[str, torch.Tensor]) -> None:
    inp = cases["code_generation"]["inputs"]
    _, mask, _, emb = _code_prompt(models, inp["normalized_texts"], cases["speaker"]["outputs"]["strings"][0],
                                   prompt=inp["prompt"])
    forced = ref["codegen/ids"]
    hiddens = _teacher_forced(models.gpt, emb, mask, forced, code=True)
    close(hiddens, ref["codegen/hiddens"])
    with torch.inference_mode():
        logits = models.code_lm.logits(hiddens[:, :3].transpose(0, 1).reshape(-1, hiddens.shape[-1]))
    close(logits.view(3, forced.shape[0], 4, -1), ref["codegen/logits_first3"])


def test_code_generation_adapter_matches_embed(models: ChatTTSModels, cases: dict[str, Any],
                                               ref: dict[str, torch.Tensor]) -> None:
    forced = ref["codegen/ids"][:, :2]
    assert isinstance(models.code_lm, LMAdapter) and isinstance(models.text_lm, LMAdapter)
    assert (models.code_lm.num_codebooks, models.text_lm.num_codebooks) == (models.config.embed.num_vq, 1)
    with torch.inference_mode():
        assert torch.equal(models.code_lm.embed(forced), models.gpt.embed.code_embedding(forced))
        assert models.code_lm.logits(torch.zeros(2, models.config.gpt.hidden_size)).shape == (
            2, models.config.embed.num_vq, models.config.embed.num_audio_tokens)
        assert models.text_lm.logits(torch.zeros(2, models.config.gpt.hidden_size)).shape == (
            2, 1, models.config.embed.num_text_tokens)


def test_decode_full_rows(models: ChatTTSModels, ref: dict[str, torch.Tensor]) -> None:
    codes, hiddens = ref["codegen/ids"], ref["codegen/hiddens"]
    for rows, use_decoder, name in ((list(hiddens), True, "decoder"), (list(codes), False, "dvae")):
        mel, _ = rows_to_mel(models, rows, use_decoder)
        close(mel, ref[f"decode/mel_{name}"])
        wavs = decode_rows(models, rows, use_decoder)
        close(torch.stack(wavs), ref[f"decode/wav_{name}"], atol=WAV_ATOL)


def test_decode_uneven_batch_has_no_padding_leak(models: ChatTTSModels, cases: dict[str, Any],
                                                 ref: dict[str, torch.Tensor]) -> None:
    lengths = cases["decode"]["inputs"]["uneven_code_lengths"]
    full = max(lengths)
    for use_decoder, source in ((False, ref["codegen/ids"]), (True, ref["codegen/hiddens"])):
        rows = [source[b, :n] for b, n in enumerate(lengths)]
        wavs = decode_rows(models, rows, use_decoder=use_decoder)
        for b, n in enumerate(lengths):
            assert wavs[b].shape[0] == wav_length(n)
            alone = decode_rows(models, [rows[b]], use_decoder=use_decoder)[0]
            close(wavs[b], alone, rel=1e-5, atol=1e-6)
            if n == full and not use_decoder:  # a full-length row is what the reference decodes too
                close(wavs[b], ref["decode/wav_dvae_uneven"][b], atol=WAV_ATOL)
                close(rows_to_mel(models, rows, False)[0][b], ref["decode/mel_dvae_uneven"][b])


def test_infer_wavs_after_silence_strip(models: ChatTTSModels, ref: dict[str, torch.Tensor]) -> None:
    """infer() strips |x| <= 1e-5; compare where the kept lengths agree (a sample at the threshold may flip)."""
    for use_decoder, name, rows in ((True, "use_decoder", list(ref["codegen/hiddens"])),
                                    (False, "use_dvae", list(ref["codegen/ids"]))):
        for b, wav in enumerate(decode_rows(models, rows, use_decoder)):
            kept = wav[wav.abs() > 1e-5]
            want = ref[f"codegen/wav_{name}_{b}"]
            assert abs(kept.shape[0] - want.shape[0]) <= 1
            if kept.shape[0] == want.shape[0]:
                close(kept, want, atol=WAV_ATOL)


@under_compatible_mkl
def test_audio_prompt(models: ChatTTSModels, cases: dict[str, Any], ref: dict[str, torch.Tensor]) -> None:
    out = cases["audio_prompt"]["outputs"]
    wav = ref["audio_prompt/wav"]
    with torch.inference_mode():
        close(models.dvae.log_mel(wav), ref["audio_prompt/log_mel"])
        close(models.dvae.encoder_features(wav), ref["audio_prompt/encoder_out"])
        codes = models.dvae.encode(wav)[0]
    assert torch.equal(codes.long(), ref["audio_prompt/codes"])
    assert encode_prompt(codes) == out["string"]
    assert torch.equal(decode_prompt(out["string"]).long(), ref["audio_prompt/codes"])


def test_code_generation_audio_prompt(models: ChatTTSModels, cases: dict[str, Any],
                                      ref: dict[str, torch.Tensor]) -> None:
    case = cases["code_generation_audio_prompt"]
    inp, out = case["inputs"], case["outputs"]
    codes = decode_prompt(cases["audio_prompt"]["outputs"]["string"])
    prompt = inp.get("prompt", DEFAULT_CODE_PROMPT)
    assert decorate_code_prompts([inp["normalized_text"]], prompt, inp["txt_smp"], None) == [out["prompt_string"]]
    ids, mask, text_mask, emb = _code_prompt(models, [inp["normalized_text"]], None, inp["txt_smp"], codes, prompt)
    assert torch.equal(ids[0], ref["smpgen/input_ids"])
    assert torch.equal(text_mask[0].long(), ref["smpgen/text_mask"])
    close(emb, ref["smpgen/prefill_inputs_embeds"])
    forced = ref["smpgen/ids"][None]
    hiddens = _teacher_forced(models.gpt, emb, mask, forced, code=True)
    close(hiddens[0], ref["smpgen/hiddens"])
    with torch.inference_mode():
        logits = models.code_lm.logits(hiddens[0, :3])
    close(logits[:, None], ref["smpgen/logits_first3"])
    wav = decode_rows(models, [ref["smpgen/hiddens"]], use_decoder=True)[0]
    kept = wav[wav.abs() > 1e-5]
    assert abs(kept.shape[0] - ref["smpgen/wav"].shape[0]) <= 1
    if kept.shape[0] == ref["smpgen/wav"].shape[0]:
        close(kept, ref["smpgen/wav"], atol=WAV_ATOL)


def test_refine_logits_and_strings(models: ChatTTSModels, cases: dict[str, Any], ref: dict[str, torch.Tensor]) -> None:
    case = cases["refine"]
    texts, out = case["inputs"]["texts"], case["outputs"]
    tok = models.tokenizer
    ids, mask, text_mask = tok.encode(decorate_text_prompts(texts, case["inputs"].get("prompt", "")), 1)
    with torch.inference_mode():
        emb = models.gpt.embed.prompt_embedding(ids, text_mask)
    raw = ref["refine/raw_ids"]
    hiddens = _teacher_forced(models.gpt, emb, mask, raw[..., None], code=False)
    with torch.inference_mode():
        logits = models.text_lm.logits(hiddens[:, :3].transpose(0, 1).reshape(-1, hiddens.shape[-1]))
    close(logits.view(3, raw.shape[0], -1), ref["refine/logits_first3"])
    strings = [tok.decode([i for i in row.tolist() if i < tok.break_0_id]) for row in raw]
    assert strings == out["strings"]
    assert "\n".join(strings) == out["strings_split_text_true"]
