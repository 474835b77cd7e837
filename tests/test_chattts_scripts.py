"""What upstream ChatTTS's own scripts do with `Chat`, checked against the reference on the fixture-rule checkpoint.

Upstream's scripts (AGPL) are not vendored: each test makes the calls of one script and compares with what the
reference `chattts` 0.2.5 returned for the same calls on the same weights (tests/data/chattts_scripts_golden.json,
written by benchmarks/reference/chattts_scripts_golden.py; benchmarks/reference/chattts_upstream_scripts.py runs
the scripts themselves on both sides):
- tests/#511.py: a sampled speaker, eight texts in one batch, top_P 0.005 / top_K 1 (three tokens kept, so it still
  samples): the code ids of every row equal the reference's, drawn from the global torch generator;
- tests/#588.py: refinement of two texts from the global generator;
- tests/#655.py: `chat.tokenizer`, `chat.speaker`, `chat.config.gpt.num_vq`, `chat.device_gpt` and
  `chat.gpt._prepare_generation_outputs`, and a refinement with `manual_seed` (the reference re-seeds every step);
- examples/cmd/run.py: a default `infer` of two texts (refine, the first text alone as everyone's audio prompt,
  then the batch);
- a seeded batch of three, where each row's noise depends on its place in the batch.
As in the scripts, only the global generator is seeded, right after `load` (the two loaders draw differently from
it); afterwards it stands where the reference leaves it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from chattts_checkpoint import build_fixture_checkpoint

import fast_tts as ChatTTS

FIXTURES = Path(
    os.environ.get("FAST_TTS_CHATTTS_FIXTURES", Path(__file__).resolve().parents[1] / ".." / "shared/fixtures/chattts")
)
GOLDEN = json.loads((Path(__file__).with_name("data") / "chattts_scripts_golden.json").read_text(encoding="utf-8"))
pytestmark = pytest.mark.skipif(not (FIXTURES / "cases.json").is_file(), reason=f"no ChatTTS fixtures at {FIXTURES}")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("chattts_scripts_ckpt")
    build_fixture_checkpoint(root, FIXTURES)
    return root


@pytest.fixture(scope="module")
def chat(checkpoint: Path) -> Any:
    chat = ChatTTS.Chat(logging.getLogger("scripts"))
    assert chat.load(source="custom", custom_path=str(checkpoint), device="cpu")
    yield chat
    chat.unload()


def reference_like(chat: Any) -> Any:
    """The reference as the goldens ran it: no language normalizer registered (upstream's scripts try nemo and
    WeTextProcessing, which are not installed), and the DVAE residual scale of vector_quantize_pytorch 1.32."""
    for lang in list(chat.normalizer.defaults):
        chat.normalizer.unregister(lang)
    chat.config.residual_scale_base = "levels"
    return chat


@pytest.fixture(scope="module")
def ref_chat(checkpoint: Path) -> Any:
    chat = reference_like(ChatTTS.Chat(logging.getLogger("scripts")))
    assert chat.load(source="custom", custom_path=str(checkpoint), device="cpu")
    yield chat
    chat.unload()


def capture_codes(chat: Any, monkeypatch: pytest.MonkeyPatch) -> list[list[list[int]]]:
    """The code ids (T, 4) of every generation `infer` starts, in the order it starts them."""
    runtime, got = chat.runtime, []
    original = runtime.generate_codes

    def generate_codes(reqs: Any) -> Any:
        streams = original(reqs)
        for stream in streams:
            slot, collect = len(got), stream.collect
            got.append(None)

            async def recorded(collect: Any = collect, slot: int = slot) -> Any:
                result = await collect()
                got[slot] = result.token_ids.tolist()
                return result

            stream.collect = recorded
        return streams

    monkeypatch.setattr(runtime, "generate_codes", generate_codes)
    return got


def after_load(chat: Any) -> None:
    torch.manual_seed(GOLDEN["seed_after_load"])


def assert_generator_where_reference_left_it(case: dict) -> None:
    assert torch.rand(4).tolist() == case["after"]


def test_spaced_batch_with_top_k_1_equals_reference(ref_chat: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    case = GOLDEN["spaced_top_k1"]
    codes = capture_codes(ref_chat, monkeypatch)
    after_load(ref_chat)
    spk = ref_chat.sample_random_speaker()
    assert spk == case["speaker"]
    params = ChatTTS.Chat.InferCodeParams(spk_emb=spk, temperature=0.3, top_P=0.005, top_K=1, show_tqdm=False)
    wavs = ref_chat.infer(case["texts"], skip_refine_text=True, split_text=False, params_infer_code=params)
    assert_generator_where_reference_left_it(case)
    assert codes == case["codes"][0]
    assert len(wavs) == 8 and all(w is not None and w.size > 0 for w in wavs)  # what #511 itself checks
    # the reference's chat.coef is the random coef drawn before the checkpoint overwrites it; ours is the coef in use
    assert len(ref_chat.coef) == len(case["coef"])


def test_refine_from_the_global_generator_equals_reference(ref_chat: Any) -> None:
    case = GOLDEN["refine_global"]
    after_load(ref_chat)
    refined = ref_chat.infer(case["texts"], refine_text_only=True, split_text=False,
                             params_refine_text=ChatTTS.Chat.RefineTextParams(show_tqdm=False))
    assert refined == case["refined"]
    assert_generator_where_reference_left_it(case)


def test_tokenizer_speaker_gpt_attributes_and_seeded_refine(ref_chat: Any) -> None:
    case = GOLDEN["refine_seeded"]
    after_load(ref_chat)
    spk = ref_chat.sample_random_speaker()
    refined = ref_chat.infer(case["texts"], refine_text_only=True, split_text=False,
                             params_refine_text=ChatTTS.Chat.RefineTextParams(
                                 prompt="[oral_2][laugh_0][break_6]", manual_seed=12345, show_tqdm=False))
    assert refined == case["refined"]
    params = ChatTTS.Chat.InferCodeParams(spk_emb=spk)
    ids, mask, text_mask = ref_chat.tokenizer.encode(
        ref_chat.speaker.decorate_code_prompts(case["texts"], params.prompt, params.txt_smp, params.spk_emb),
        ref_chat.config.gpt.num_vq,
        prompt=ref_chat.speaker.decode_prompt(params.spk_smp) if params.spk_smp is not None else None,
        device=ref_chat.device_gpt,
    )
    assert ids.tolist() == case["input_ids"] and mask.tolist() == case["attention_mask"]
    assert text_mask.tolist() == case["text_mask"] and text_mask.dtype == torch.bool
    with torch.inference_mode():
        end = torch.zeros(ids.shape[0], dtype=torch.long).fill_(ids.shape[1])
        out = ref_chat.gpt._prepare_generation_outputs(ids, 0, end, [], [], True)
    assert ref_chat.tokenizer.decode(out.ids) == case["recoded"]


def test_default_split_infer_equals_reference(ref_chat: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Refine (global generator), the first text alone, its audio as everyone's prompt, then the batch of two."""
    case = GOLDEN["default_split"]
    codes = capture_codes(ref_chat, monkeypatch)
    after_load(ref_chat)
    spk = ref_chat.sample_random_speaker()
    assert spk == case["speaker"]
    wavs = ref_chat.infer(
        case["texts"],
        params_infer_code=ChatTTS.Chat.InferCodeParams(spk_emb=spk, max_new_token=48, show_tqdm=False),
        params_refine_text=ChatTTS.Chat.RefineTextParams(max_new_token=48, show_tqdm=False),
    )
    assert len(wavs) == 1  # split_text joins everything
    assert codes == [row for batch in case["codes"] for row in batch]
    assert_generator_where_reference_left_it(case)


def test_seeded_batch_rows_follow_their_place_in_the_batch(ref_chat: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    case = GOLDEN["seeded_batch"]
    codes = capture_codes(ref_chat, monkeypatch)
    ref_chat.infer(case["texts"], skip_refine_text=True, split_text=False,
                   params_infer_code=ChatTTS.Chat.InferCodeParams(manual_seed=7, max_new_token=32, show_tqdm=False))
    assert codes == case["codes"][0]


def test_same_global_seed_same_audio(chat: Any) -> None:
    """Without manual_seed, torch.manual_seed makes infer reproducible (as in the reference)."""
    params = ChatTTS.Chat.InferCodeParams(max_new_token=20, show_tqdm=False)
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        runs.append(chat.infer(["你好世界", "天气很好"], skip_refine_text=True, split_text=False,
                               params_infer_code=params))
    for a, b in zip(*runs):
        assert a.shape == b.shape  # same tokens; the decoder may batch the rows differently (float rounding)
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


# ----- attributes ---------------------------------------------------------------------------------------------


def test_reference_attributes_after_load(chat: Any, checkpoint: Path) -> None:
    assert chat.config.gpt.num_vq == 4 and chat.config.gpt.hidden_size == 64
    assert chat.config.embed.num_text_tokens == 175 and chat.config.decoder.idim == 32
    assert chat.config.dvae.vq.levels == (5, 5, 5, 5) and chat.config.vocos.backbone.init_args.dim == 64
    assert chat.device == chat.device_gpt == torch.device("cpu") and chat.compile is False
    assert chat.tokenizer.len == 175 and chat.tokenizer.eos_token != chat.tokenizer.spk_emb_ids
    assert chat.gpt.num_vq == 4 and chat.gpt.num_audio_tokens == 626 and not chat.gpt.is_vllm
    assert chat.has_loaded() and chat.has_loaded(use_decoder=True)
    emb = chat.embed(*chat.tokenizer.encode(["[Stts][empty_spk]你好[Ptts]"], 4)[::2])
    assert emb.shape == (1, 5, 64)
    mel = chat.decoder(torch.zeros(1, 64, 3))
    assert mel.shape == (1, 100, 6) and chat.vocos.decode(mel).shape == (1, 5 * 256)
    codes = chat.dvae.sample_audio(np.sin(np.arange(24000, dtype=np.float32) / 7))
    assert codes.shape[0] == 4 and chat.speaker.decode_prompt(chat.speaker.encode_prompt(codes)).tolist() == \
        codes.tolist()
    assert chat.dvae(codes[None], "decode").shape == (1, 100, 2 * codes.shape[1])
    chat.context.set(True)
    assert chat.context.get() is True
    chat.infer("你好", skip_refine_text=True, params_infer_code=ChatTTS.Chat.InferCodeParams(max_new_token=2))
    assert chat.context.get() is False  # infer clears the interrupt flag, as the reference


def test_speaker_apply_puts_the_normalised_vector_at_spk_emb(chat: Any) -> None:
    spk = chat.sample_random_speaker()
    ids, _, text_mask = chat.tokenizer.encode(chat.speaker.decorate_code_prompts(["你好"], "", None, spk), 4)
    emb = chat.embed(ids, text_mask)
    out = chat.speaker.apply(emb, spk, ids, chat.tokenizer.spk_emb_ids, chat.device_gpt)
    assert out is emb
    vector = torch.from_numpy(chat.speaker._decode(spk)).float()
    at = ids[0, :, 0] == chat.tokenizer.spk_emb_ids
    torch.testing.assert_close(emb[0, at][0], (vector / vector.norm()), atol=1e-3, rtol=0)


def test_reference_internals_say_what_to_use(chat: Any, checkpoint: Path) -> None:
    for name, hint in (("_infer_code", "chat.infer"), ("_decode_to_wavs", "decode_rows")):
        with pytest.raises(AttributeError, match=hint):
            getattr(chat, name)
    for name in ("gpt", "generate", "llm"):
        with pytest.raises(AttributeError, match="reference internal"):
            getattr(chat.gpt, name)
    with pytest.raises(AttributeError, match="tokenizers"):
        _ = chat.tokenizer._tokenizer
    fresh = ChatTTS.Chat()
    with pytest.raises(AttributeError, match=r"call chat.load\(\) first"):
        _ = fresh.tokenizer
    assert not fresh.has_loaded()


def test_config_path_and_private_load(tmp_path: Path, checkpoint: Path) -> None:
    """`config.path` names the files `load` reads (the reference's layout by default); `_load` takes them as-is."""
    moved = tmp_path / "elsewhere"
    (moved / "weights").mkdir(parents=True)
    for name in ("Vocos", "DVAE", "Decoder", "Embed"):
        (moved / "weights" / f"{name}.safetensors").symlink_to(checkpoint / "asset" / f"{name}.safetensors")
    (moved / "gpt").symlink_to(checkpoint / "asset" / "gpt")
    (moved / "tok").symlink_to(checkpoint / "asset" / "tokenizer")
    chat = ChatTTS.Chat()
    chat.config.spk_stat = json.loads((FIXTURES / "config.json").read_text())["spk_stat"]
    chat.config.path.vocos_ckpt_path = "weights/Vocos.safetensors"
    chat.config.path.dvae_ckpt_path = "weights/DVAE.safetensors"
    chat.config.path.decoder_ckpt_path = "weights/Decoder.safetensors"
    chat.config.path.embed_path = "weights/Embed.safetensors"
    chat.config.path.gpt_ckpt_path = "gpt"
    chat.config.path.tokenizer_path = "tok"
    other = ChatTTS.Chat()
    assert other.config.path.vocos_ckpt_path == "asset/Vocos.safetensors"  # no shared defaults
    try:
        assert chat.load(source="custom", custom_path=str(moved))
        assert chat.sample_random_speaker()
        chat.unload()
        assert chat.config.path.vocos_ckpt_path == "asset/Vocos.safetensors"  # unload starts afresh
        a = checkpoint / "asset"
        assert chat._load(str(a / "Vocos.safetensors"), str(a / "DVAE.safetensors"), str(a / "gpt"),
                          str(a / "Embed.safetensors"), str(a / "Decoder.safetensors"), str(a / "tokenizer"))
        assert chat.config.gpt.hidden_size == 64
    finally:
        chat.unload()


def test_huggingface_source_reads_a_linked_snapshot_offline(tmp_path: Path, checkpoint: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    snapshots = tmp_path / "hub" / "models--2Noise--ChatTTS" / "snapshots"
    snapshots.mkdir(parents=True)
    (snapshots / "any").symlink_to(checkpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    chat = ChatTTS.Chat()
    try:
        assert chat.load(source="huggingface")
        assert chat.download_models("huggingface", custom_path=str(tmp_path / "hub")) == str(snapshots / "any")
    finally:
        chat.unload()


# ----- normalizer registry ------------------------------------------------------------------------------------


def test_user_normalizer_wins_before_and_after_load(checkpoint: Path) -> None:
    chat = ChatTTS.Chat()
    assert set(chat.normalizer.defaults) == {"zh", "en"}
    assert chat.normalizer.register("zh", lambda s: s.replace("你", "您"))  # replaces our default
    assert chat.normalizer.defaults == ("en",)
    assert not chat.normalizer.register("zh", str.upper)  # a user's registration is kept, as in the reference
    try:
        assert chat.load(source="custom", custom_path=str(checkpoint))
        assert chat.normalizer("你好你好") == "您好您好"
        assert chat.normalizer.register("en", str.upper)
        assert chat.normalizer("hello world", lang="en") == "HELLO WORLD"
        chat.normalizer.unregister("en")
        assert "en" not in chat.normalizer.normalizers and chat.normalizer.defaults == ()
    finally:
        chat.unload()
    assert set(chat.normalizer.defaults) == {"zh", "en"}  # unload starts afresh, as the reference
    assert chat.normalizer.register("zh", str.upper)


# ----- the replayed random streams ------------------------------------------------------------------------------


def test_batch_draws_hand_each_row_its_slice_of_one_draw_per_step() -> None:
    from fast_tts.models.chattts.reference_rng import BatchDraws

    draws = BatchDraws(torch.Generator().manual_seed(3), 3, 2, 10)
    rows = [draws.row(i) for i in range(3)]
    ahead = [rows[2].noise(s) for s in range(3)]  # rows may run ahead of or behind each other
    behind = [rows[0].noise(s) for s in range(3)]
    rows[1].release()
    gen = torch.Generator().manual_seed(3)
    blocks = [torch.empty(6, 10).exponential_(generator=gen).view(3, 2, 10) for _ in range(3)]
    for s in range(3):
        assert torch.equal(ahead[s], blocks[s][2]) and torch.equal(behind[s], blocks[s][0])
    with pytest.raises(RuntimeError, match="already taken"):
        rows[0].noise(1)


@pytest.mark.parametrize("codebooks, vocab", [(4, 626), (1, 21178)])
def test_seeded_draws_are_the_rows_slice_of_a_whole_batch_draw(codebooks: int, vocab: int) -> None:
    from fast_tts.models.chattts.reference_rng import SeededDraws

    whole = torch.empty(8 * codebooks, vocab).exponential_(generator=torch.Generator().manual_seed(12345))
    for position in (0, 3, 7):
        row = SeededDraws(12345, position, codebooks, vocab)
        assert torch.equal(row.noise(0), whole[position * codebooks : (position + 1) * codebooks])
        assert row.noise(5) is row.noise(0)  # re-seeded every step: the same noise each step
