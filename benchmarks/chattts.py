"""ChatTTS at full size with random weights: GPT decode speed and end-to-end real-time factor, ours vs the reference.

Builds (once, cached) a checkpoint in the official layout with the real model's shapes (20 layers, hidden 768, ...)
from the seeded weight rule of tests/chattts_checkpoint.py, loads it with our loader, and measures:
- GPT decode: ms per step and code frames per second at batch 1 and batch 8 (greedy, through the KV cache; the
  per-step cost is (t(long) - t(short)) / (long - short) so that the prefill cancels out);
- end to end: prompt -> E2E_TOKENS code frames (about 10 s of audio) -> Decoder -> Vocos, wall time / audio time.
When the reference environment exists ($FAST_TTS_REFERENCE_PYTHON, default /work/refenv/bin/python, recipe in
benchmarks/reference/chattts_reference.py), the reference runs on the same files in the same run, and the table
shows both and the ratio.

    python benchmarks/chattts.py                     # 1 thread, batches 1 and 8
    python benchmarks/chattts.py --threads 2 --no-reference
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

from fast_tts.models.chattts.decode import decode_rows
from fast_tts.models.chattts.gpt import ChatTTSGPT
from fast_tts.models.chattts.loader import ChatTTSModels, load_chattts
from fast_tts.models.chattts.tokenizer import decorate_code_prompts

TEXTS = ["hello world this is a benchmark sentence", "一二三四五六七八九十", "some more text to read aloud today",
         "四月的天气很好", "the quick brown fox jumps", "我们一起去公园", "numbers are words too", "你好世界"]
SAMPLE_RATE = 24000


def ensure_checkpoint(path: Path) -> Path:
    """Build the full-size checkpoint once (about 1.1 GB); a `done` marker makes reruns reuse it."""
    if not (path / "done").is_file():
        print(f"building full-size checkpoint in {path} ...", flush=True)
        build_checkpoint(path, FULL_DIMS, seed=0)
        (path / "done").write_text("ok")
    return path


@torch.inference_mode()
def prompt(models: ChatTTSModels, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt embeddings and mask for texts (no speaker)."""
    ids, mask, text_mask = models.tokenizer.encode(decorate_code_prompts(texts, "[speed_5]", None, None), 4)
    return models.gpt.embed.prompt_embedding(ids, text_mask), mask


@torch.inference_mode()
def generate(gpt: ChatTTSGPT, emb: torch.Tensor, mask: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy code generation for `steps` frames: codes (B, steps, 4) and hiddens (B, steps, H)."""
    b = emb.shape[0]
    cache = gpt.transformer.new_cache(b, mask.shape[1] + steps + 1)
    hidden, pos = gpt.prefill(emb, mask, cache)
    codes, hiddens = [], []
    for s in range(steps):
        hiddens.append(hidden)
        tok = gpt.embed.code_logits(hidden).argmax(-1)  # (B, 4)
        codes.append(tok)
        if s + 1 < steps:
            hidden = gpt.step(gpt.embed.code_embedding(tok), pos + s, cache)
    return torch.stack(codes, 1), torch.stack(hiddens, 1)


def timed(fn, *args) -> tuple[float, float]:
    """(wall, process CPU) seconds of one call; CPU time stays meaningful when other jobs share the cores."""
    start, cpu = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - start, time.process_time() - cpu


def ours(models: ChatTTSModels, batches: list[int], tokens: int, e2e_tokens: int) -> dict:
    out: dict = {}
    short = 8
    for batch in batches:
        emb, mask = prompt(models, [TEXTS[i % len(TEXTS)] for i in range(batch)])
        generate(models.gpt, emb, mask, short)  # warm-up
        (t_short, c_short), (t_long, c_long) = (timed(generate, models.gpt, emb, mask, n) for n in (short, tokens))
        step = (t_long - t_short) / (tokens - short)
        cpu_ms = (c_long - c_short) / (tokens - short) * 1000 / torch.get_num_threads()
        out[f"batch{batch}"] = {"ms_per_step": step * 1000, "frames_per_s": batch / step, "total_s": t_long,
                                "cpu_ms_per_step_per_thread": cpu_ms}
    start = time.perf_counter()
    emb, mask = prompt(models, TEXTS[:1])
    _, hiddens = generate(models.gpt, emb, mask, e2e_tokens)
    mid = time.perf_counter()
    wav = decode_rows(models, [hiddens[0]], use_decoder=True)[0]
    elapsed = time.perf_counter() - start
    audio = wav.shape[0] / SAMPLE_RATE
    out["e2e"] = {"audio_s": audio, "wall_s": elapsed, "rtf": elapsed / audio,
                  "decode_s": time.perf_counter() - mid}
    return out


def reference(python: str, ckpt: Path, batches: list[int], tokens: int, e2e_tokens: int, threads: int,
              serving_tokens: int = 0) -> dict:
    """Run benchmarks/reference/chattts_reference.py in the reference's environment on the same checkpoint."""
    tmp = ckpt / "bench"
    tmp.mkdir(exist_ok=True)
    (tmp / "dims.json").write_text(json.dumps(FULL_DIMS))
    (tmp / "texts.json").write_text(json.dumps(TEXTS, ensure_ascii=False))
    cmd = [python, str(ROOT / "benchmarks/reference/chattts_reference.py"), "--checkpoint", str(ckpt),
           "--dims", str(tmp / "dims.json"), "--spk-stat", spk_stat_string(FULL_DIMS["gpt"]["hidden_size"]),
           "--texts", str(tmp / "texts.json"), "--batches", ",".join(map(str, batches)), "--tokens", str(tokens),
           "--threads", str(threads), "--e2e-tokens", str(e2e_tokens), "--serving-tokens", str(serving_tokens)]
    run = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"reference run failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "fast_tts_chattts_full")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--tokens", type=int, default=96, help="frames per timed decode run")
    ap.add_argument("--e2e-tokens", type=int, default=470, help="frames of the end-to-end utterance (~10 s)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-reference", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    ckpt = ensure_checkpoint(args.checkpoint)
    start = time.perf_counter()
    models = load_chattts(ckpt)
    print(f"torch {torch.__version__}, {args.threads} thread(s), load {time.perf_counter() - start:.1f} s", flush=True)
    mine = ours(models, batches, args.tokens, args.e2e_tokens)
    ref = None
    python = os.environ.get("FAST_TTS_REFERENCE_PYTHON", "/work/refenv/bin/python")
    if not args.no_reference and Path(python).is_file():
        ref = reference(python, ckpt, batches, args.tokens, args.e2e_tokens, args.threads)
    print(f"\n{'metric':28} {'ours':>10} {'reference':>10} {'ref/ours':>9}")
    rows = [(f"batch {b} ms/step", f"batch{b}", "ms_per_step") for b in batches]
    rows += [(f"batch {b} frames/s", f"batch{b}", "frames_per_s") for b in batches]
    rows += [(f"batch {b} cpu ms/step/thread", f"batch{b}", "cpu_ms_per_step_per_thread") for b in batches]
    rows += [("e2e wall s (10 s audio)", "e2e", "wall_s"), ("e2e real-time factor", "e2e", "rtf"),
             ("e2e of which Decoder+Vocos s", "e2e", "decode_s")]
    for label, group, key in rows:
        a = mine[group][key]
        b = ref[group].get(key) if ref else None
        ratio = f"{b / a:9.2f}" if b else f"{'-':>9}"
        print(f"{label:28} {a:10.2f} {(f'{b:10.2f}' if b else f'{chr(45):>10}')} {ratio}")
    print(json.dumps({"ours": mine, "reference": ref}))


if __name__ == "__main__":
    main()
