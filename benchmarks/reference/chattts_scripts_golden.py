"""Goldens for tests/test_chattts_scripts.py: what the reference `chattts` 0.2.5 generates, on the fixture-rule
checkpoint, for the calls upstream's scripts make (tests/#511, #588, #655, examples/cmd/run.py) plus a seeded batch.

Runs in the reference's environment (recipe in chattts_reference.py) on a checkpoint built by
tests/chattts_checkpoint.py `build_fixture_checkpoint`:

    python benchmarks/reference/chattts_scripts_golden.py --checkpoint CKPT --fixtures ../shared/fixtures/chattts \
        --out tests/data/chattts_scripts_golden.json

As in the scripts, nothing is seeded except the global torch generator, right after `load` (our loader and the
reference's draw differently from it while loading). Code ids are captured from the reference's `_infer_code`
(every batch it generates, in order); refined texts are what `infer(refine_text_only=True)` returns. The texts are
ours (upstream's are AGPL), of the same kinds: spaced Chinese with [uv_break], mixed Chinese/English.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import ChatTTS
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chattts_reference import configure

SEED_AFTER_LOAD = 1234
# Eight spaced texts with a [uv_break], as tests/#511.py sends them (split_text=False, top_K=1).
SPACED = [
    "今 天 的 天 气 很 好 ， 我 们 去 公 园 走 走 [uv_break]",
    "这 是 一 个 测 试 ， 看 看 声 音 是 否 稳 定 [uv_break] 好 的",
    "然 后 我 们 [uv_break] 一 起 读 一 段 很 长 的 句 子 。",
    "声 音 太 短 了 ， 这 里 多 写 几 个 字 [uv_break] 占 位 。 test id",
    "在 不 同 的 地 方 [uv_break] 说 话 的 人 不 一 样",
    "我 们 今 天 去 公 园 散 步 。 天 气 [uv_break] 很 好 吗",
    "， 第 一 批 测 试 有 两 千 条 [uv_break] ， 不 太 准",
    "仅 供 参 考 。 如 果 有 更 好 的 方 法 ， 欢 迎 pr [uv_break] 。",
]
MIXED = ["总结一下，AI Agent是大模型的扩展，也就是AGI。", "你真是太聪明啦。"]
TAGGED = ["What is [uv_break]your favorite english food?[laugh][lbreak]"]
RUN_TEXTS = ["你好，今天天气很好。", "hello world, this is a test."]


def load(ckpt: Path, fixtures: Path) -> ChatTTS.Chat:
    cfg = json.loads((fixtures / "config.json").read_text())
    chat = ChatTTS.Chat(logging.getLogger("reference"))
    configure(chat, ckpt, cfg["dims"], cfg["spk_stat"])
    assert chat.load(source="custom", custom_path=str(ckpt), device=torch.device("cpu"))
    torch.manual_seed(SEED_AFTER_LOAD)
    return chat


def capture_codes(chat: ChatTTS.Chat) -> list:
    """Record the ids of every batch `_infer_code` generates (a list of per-row (T, 4) lists per batch)."""
    batches: list = []
    original = chat._infer_code

    def wrapped(*args, **kwargs):
        for result in original(*args, **kwargs):
            batches.append([ids.tolist() for ids in result.ids])
            yield result

    chat._infer_code = wrapped
    return batches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--fixtures", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    out: dict = {"seed_after_load": SEED_AFTER_LOAD, "chattts": ChatTTS.__name__, "torch": torch.__version__}

    # tests/#511.py: a sampled speaker, eight texts in one batch, top_P 0.005, top_K 1 (3 tokens kept)
    chat = load(args.checkpoint, args.fixtures)
    codes = capture_codes(chat)
    spk = chat.sample_random_speaker()
    params = chat.InferCodeParams(spk_emb=spk, temperature=0.3, top_P=0.005, top_K=1, show_tqdm=False)
    chat.infer(SPACED, skip_refine_text=True, split_text=False, params_infer_code=params)
    out["spaced_top_k1"] = {"texts": SPACED, "speaker": spk, "codes": codes, "after": torch.rand(4).tolist(),
                            "coef": chat.coef}  # a random string: the coef drawn before the checkpoint's replaces it

    # tests/#588.py: refine two texts, global generator
    chat = load(args.checkpoint, args.fixtures)
    refined = chat.infer(MIXED, refine_text_only=True, split_text=False,
                         params_refine_text=chat.RefineTextParams(show_tqdm=False))
    out["refine_global"] = {"texts": MIXED, "refined": refined, "after": torch.rand(4).tolist()}

    # tests/#655.py: refine with a prompt and manual_seed, then the code prompt through tokenizer/speaker/gpt
    chat = load(args.checkpoint, args.fixtures)
    spk = chat.sample_random_speaker()
    refined = chat.infer(TAGGED, refine_text_only=True, split_text=False,
                         params_refine_text=chat.RefineTextParams(prompt="[oral_2][laugh_0][break_6]",
                                                                  manual_seed=12345, show_tqdm=False))
    params = chat.InferCodeParams(spk_emb=spk)
    ids, mask, text_mask = chat.tokenizer.encode(
        chat.speaker.decorate_code_prompts(list(TAGGED), params.prompt, params.txt_smp, params.spk_emb),
        chat.config.gpt.num_vq, prompt=None, device=chat.device_gpt,
    )
    with torch.inference_mode():
        end = torch.zeros(ids.shape[0], dtype=torch.long).fill_(ids.shape[1])
        recoded = chat.tokenizer.decode(chat.gpt._prepare_generation_outputs(ids, 0, end, [], [], True).ids)
    out["refine_seeded"] = {"texts": TAGGED, "refined": refined, "recoded": recoded, "input_ids": ids.tolist(),
                            "attention_mask": mask.tolist(), "text_mask": text_mask.tolist()}

    # examples/cmd/run.py: default infer of two texts with a sampled speaker (refine, the first text alone as the
    # audio prompt of the rest, then the batch), capped at 48 frames per text
    chat = load(args.checkpoint, args.fixtures)
    codes = capture_codes(chat)
    spk = chat.sample_random_speaker()
    chat.infer(RUN_TEXTS, params_infer_code=chat.InferCodeParams(spk_emb=spk, max_new_token=48, show_tqdm=False),
               params_refine_text=chat.RefineTextParams(max_new_token=48, show_tqdm=False))
    out["default_split"] = {"texts": RUN_TEXTS, "speaker": spk, "codes": codes, "after": torch.rand(4).tolist()}

    # a seeded batch of three (manual_seed: every row's noise depends on its place in the batch)
    chat = load(args.checkpoint, args.fixtures)
    codes = capture_codes(chat)
    chat.infer(SPACED[:3], skip_refine_text=True, split_text=False,
               params_infer_code=chat.InferCodeParams(manual_seed=7, max_new_token=32, show_tqdm=False))
    out["seeded_batch"] = {"texts": SPACED[:3], "codes": codes}
    args.out.write_text(json.dumps(out, ensure_ascii=False, separators=(",", ":")))


if __name__ == "__main__":
    main()
