"""ChatTTS at full size with random weights: `Chat.infer` end to end, ours in float32 and bfloat16 vs the reference.

Builds (once, cached) a checkpoint in the official layout with the real model's shapes (20 layers, hidden 768, ...)
from the seeded weight rule of tests/chattts_checkpoint.py. For each dtype it loads `fast_tts.Chat` and times
`infer(texts, skip_refine_text=True, split_text=False)` with exactly --tokens code frames per text (the random
weights never emit EOS; min = max new tokens), decode included, at every --batches size; the reference `chattts`
0.2.5 runs the same call on the same files in the same run (a subprocess in its own environment:
$FAST_TTS_REFERENCE_PYTHON, default ~/.cache/fast-tts/ci-envs/chattts-ref/bin/python, recipe in
benchmarks/reference/chattts_reference.py). The table shows wall seconds and the speed-up over the reference, plus
how much of our time the decoders (Decoder + Vocos on the batch) take.

    python benchmarks/chattts.py                           # float32 and bfloat16, batches 1 and 8, 100 frames
    python benchmarks/chattts.py --threads 2 --no-reference
    python benchmarks/chattts.py --gpt-steps               # also GPT ms/step through the KV cache (greedy)
    python benchmarks/chattts.py --rounds 3                # ours then the reference, 3 times: the speed-up's spread
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from chattts_checkpoint import FULL_DIMS, build_checkpoint, spk_stat_string

import fast_tts
from fast_tts.models.chattts.gpt import ChatTTSGPT
from fast_tts.models.chattts.loader import ChatTTSModels, load_chattts
from fast_tts.models.chattts.tokenizer import decorate_code_prompts

TEXTS = ["hello world this is a benchmark sentence", "一二三四五六七八九十", "some more text to read aloud today",
         "四月的天气很好", "the quick brown fox jumps", "我们一起去公园", "numbers are words too", "你好世界"]
SAMPLE_RATE = 24000
REFERENCE_PYTHON = Path.home() / ".cache/fast-tts/ci-envs/chattts-ref/bin/python"


def ensure_checkpoint(path: Path) -> Path:
    """Build the full-size checkpoint once (about 1.1 GB); a `done` marker makes reruns reuse it."""
    if not (path / "done").is_file():
        print(f"building full-size checkpoint in {path} ...", flush=True)
        build_checkpoint(path, FULL_DIMS, seed=0)
        (path / "done").write_text("ok")
    return path


def reference_python() -> Path | None:
    """The reference environment's python ($FAST_TTS_REFERENCE_PYTHON or the CI env path), None when absent."""
    path = Path(os.environ.get("FAST_TTS_REFERENCE_PYTHON", REFERENCE_PYTHON))
    return path if path.is_file() else None


def rows_for(batch: int) -> list[str]:
    return [TEXTS[i % len(TEXTS)] for i in range(batch)]


# ----- Chat.infer ------------------------------------------------------------------------------------------------


def infer_params(tokens: int) -> fast_tts.Chat.InferCodeParams:
    return fast_tts.Chat.InferCodeParams(min_new_token=tokens, max_new_token=tokens, manual_seed=5, show_tqdm=False)


def time_infer(chat: fast_tts.Chat, texts: list[str], tokens: int, repeat: int) -> dict:
    """Best wall seconds (with its CPU seconds) of one `infer` over the texts as one list, decode included."""
    best: dict = {}
    for _ in range(repeat):
        start, cpu = time.perf_counter(), time.process_time()
        wavs = chat.infer(texts, skip_refine_text=True, split_text=False, params_infer_code=infer_params(tokens),
                          do_text_normalization=False)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        assert len(wavs) == len(texts)
        if not best or wall < best["wall_s"]:
            best = {"wall_s": wall, "cpu_s": cpu, "audio_s": sum(len(w) for w in wavs) / SAMPLE_RATE}
    return best


def time_decode(chat: fast_tts.Chat, batch: int, tokens: int) -> float:
    """Seconds the runtime's decode (Decoder + Vocos, as `infer` runs it) takes on `batch` rows of `tokens` frames."""
    hidden = chat.runtime.hidden_size
    rows = [torch.randn(tokens, hidden, generator=torch.Generator().manual_seed(i)) for i in range(batch)]
    start = time.perf_counter()
    chat.runtime._decode_batch(True, rows)
    return time.perf_counter() - start


def ours_infer(ckpt: Path, dtype: str, batches: list[int], tokens: int, repeat: int) -> dict:
    chat = fast_tts.Chat()
    chat.config.spk_stat = spk_stat_string(FULL_DIMS["gpt"]["hidden_size"])
    assert chat.load(source="custom", custom_path=str(ckpt), device="cpu", dtype=dtype)
    try:
        time_infer(chat, rows_for(1), 4, 1)  # warm-up
        out = {}
        for b in batches:
            out[f"batch{b}"] = time_infer(chat, rows_for(b), tokens, repeat)
            out[f"batch{b}"]["decode_s"] = time_decode(chat, b, tokens)
        return out
    finally:
        chat.unload()


# ----- GPT decode steps (optional) -------------------------------------------------------------------------------


@torch.inference_mode()
def prompt(models: ChatTTSModels, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt embeddings and mask for texts (no speaker)."""
    ids, mask, text_mask = models.tokenizer.encode(decorate_code_prompts(texts, "[speed_5]", None, None), 4)
    return models.gpt.embed.prompt_embedding(ids, text_mask), mask


@torch.inference_mode()
def generate(gpt: ChatTTSGPT, emb: torch.Tensor, mask: torch.Tensor, steps: int) -> None:
    """Greedy code generation for `steps` frames through a KV cache of the module."""
    cache = gpt.transformer.new_cache(emb.shape[0], mask.shape[1] + steps + 1)
    hidden, pos = gpt.prefill(emb, mask, cache)
    for s in range(steps - 1):
        hidden = gpt.step(gpt.embed.code_embedding(gpt.embed.code_logits(hidden).argmax(-1)), pos + s, cache)


def ours_gpt_steps(ckpt: Path, batches: list[int], tokens: int) -> dict:
    """ms per GPT step: (t(tokens) - t(8)) / (tokens - 8), so that the prefill cancels out."""
    models = load_chattts(ckpt)
    out = {}
    for batch in batches:
        emb, mask = prompt(models, rows_for(batch))
        generate(models.gpt, emb, mask, 8)  # warm-up
        times = []
        for n in (8, tokens):
            start = time.perf_counter()
            generate(models.gpt, emb, mask, n)
            times.append(time.perf_counter() - start)
        out[f"batch{batch}"] = {"ms_per_step": (times[1] - times[0]) / (tokens - 8) * 1000}
    return out


# ----- reference -------------------------------------------------------------------------------------------------


def reference(python: str | Path, ckpt: Path, batches: list[int], tokens: int, e2e_tokens: int, threads: int,
              serving_tokens: int = 0, infer_batches: list[int] = (), infer_tokens: int = 100,
              repeat: int = 1) -> dict:
    """Run benchmarks/reference/chattts_reference.py in the reference's environment on the same checkpoint."""
    tmp = ckpt / "bench"
    tmp.mkdir(exist_ok=True)
    (tmp / "dims.json").write_text(json.dumps(FULL_DIMS))
    (tmp / "texts.json").write_text(json.dumps(TEXTS, ensure_ascii=False))
    cmd = [str(python), str(ROOT / "benchmarks/reference/chattts_reference.py"), "--checkpoint", str(ckpt),
           "--dims", str(tmp / "dims.json"), "--spk-stat", spk_stat_string(FULL_DIMS["gpt"]["hidden_size"]),
           "--texts", str(tmp / "texts.json"), "--batches", ",".join(map(str, batches)), "--tokens", str(tokens),
           "--threads", str(threads), "--e2e-tokens", str(e2e_tokens), "--serving-tokens", str(serving_tokens),
           "--infer-batches", ",".join(map(str, infer_batches)), "--infer-tokens", str(infer_tokens),
           "--repeat", str(repeat)]
    run = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"reference run failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def print_round(mine: dict, ref: dict | None, batches: list[int]) -> None:
    """One round's table: wall (CPU) seconds of ours, of which the decoders, the reference's, and the ratios."""
    print("wall s (CPU s of the process): ours, of which the decoders, and the reference")
    print(f"{'case':22} {'ours':>15} {'decode':>7} {'reference':>16} {'speed-up':>9} {'CPU ratio':>9}")
    for dtype, res in mine.items():
        for b in batches:
            cell = res[f"batch{b}"]
            r = ref["infer"][f"batch{b}"] if ref else None
            ours_s = f"{cell['wall_s']:.2f} ({cell['cpu_s']:.1f})"
            ref_s = f"{r['wall_s']:.2f} ({r['cpu_s']:.1f})" if r else "-"
            speed = f"{r['wall_s'] / cell['wall_s']:8.2f}x" if r else f"{'-':>9}"
            cpu = f"{r['cpu_s'] / cell['cpu_s']:8.2f}x" if r else f"{'-':>9}"
            print(f"{dtype + ' batch ' + str(b):22} {ours_s:>15} {cell['decode_s']:7.2f} {ref_s:>16} {speed} {cpu}")


def print_summary(rounds: list[tuple[dict, dict]], batches: list[int]) -> None:
    """Over rounds (each: ours, then the reference right after): each side's best and each round's speed-up."""
    print(f"\nover {len(rounds)} rounds: best wall s of each side, and the speed-up of each round (min / median / max)")
    print(f"{'case':22} {'ours best':>9} {'ref best':>9} {'best/best':>9} {'round speed-ups':>24}")
    for dtype in rounds[0][0]:
        for b in batches:
            key = f"batch{b}"
            ours = [mine[dtype][key]["wall_s"] for mine, _ in rounds]
            refs = [ref["infer"][key]["wall_s"] for _, ref in rounds]
            ratios = sorted(r / o for o, r in zip(ours, refs))
            spread = f"{ratios[0]:.2f} / {ratios[len(ratios) // 2]:.2f} / {ratios[-1]:.2f}"
            print(f"{dtype + ' batch ' + str(b):22} {min(ours):9.2f} {min(refs):9.2f} {min(refs) / min(ours):8.2f}x "
                  f"{spread:>24}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "fast_tts_chattts_full")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--tokens", type=int, default=100, help="code frames per text")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs per cell (the best is kept)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="ours then the reference, this many times (a summary gives each round's speed-up)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gpt-steps", action="store_true", help="also time GPT steps alone (ours and the reference)")
    ap.add_argument("--no-reference", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    ckpt = ensure_checkpoint(args.checkpoint)
    python = reference_python()
    if not args.no_reference and python is None:
        print("reference environment not found (set FAST_TTS_REFERENCE_PYTHON): printing ours only")
    rounds = []
    for n in range(args.rounds):
        load_before = os.getloadavg()[0]
        mine = {dtype: ours_infer(ckpt, dtype, batches, args.tokens, args.repeat) for dtype in args.dtypes.split(",")}
        steps = ours_gpt_steps(ckpt, batches, args.tokens) if args.gpt_steps else None
        ref = None
        if not args.no_reference and python is not None:
            ref = reference(python, ckpt, batches if args.gpt_steps else [], args.tokens, 0, args.threads,
                            infer_batches=batches, infer_tokens=args.tokens, repeat=args.repeat)
            rounds.append((mine, ref))
        print(f"\n{f'round {n + 1}: ' if args.rounds > 1 else ''}Chat.infer, full-size random weights, {args.tokens} "
              f"frames per text, decode included; torch {torch.__version__}, {args.threads} threads, load average "
              f"{load_before:.1f} -> {os.getloadavg()[0]:.1f}")
        print_round(mine, ref, batches)
        if steps:
            print(f"\n{'GPT ms/step (float32)':24} {'ours':>8} {'reference':>12}")
            for b in batches:
                r = ref[f"batch{b}"]["ms_per_step"] if ref else float("nan")
                print(f"{'batch ' + str(b):24} {steps[f'batch{b}']['ms_per_step']:8.1f} {r:12.1f}")
        print(json.dumps({"ours": mine, "gpt_steps": steps, "reference": ref}), flush=True)
    if len(rounds) > 1:
        print_summary(rounds, batches)


if __name__ == "__main__":
    main()
