"""MegaTTS3's G2P at full size on the vLLM backend, beside the torch backend, measured in one run.

The model: a random Qwen2 of the Qwen2.5-0.5B shape (24 layers, hidden 896, 14 heads of 64, 2 KV heads, vocabulary
151936, tied head; tests/random_qwen2.py), written once to a cache folder. For each dtype (float32, bfloat16) and each
backend it measures, end to end through the Generator protocol (asyncio submit, ids streamed back):
- batch 1: one G2P prompt, 120 new tokens, greedy;
- batch 8: eight prompts at once, 120 new tokens each;
and the greedy agreement of each run with the torch backend in float32 (tokens until the first difference, per prompt).
The reference figure (the upstream G2P, HF generate, 120 tokens) is 14.8 s on this machine kind
(shared/notes/megatts3-reference.md). vLLM's start-up is reported apart from the generation figures.

Runs in the vLLM side environment with the checkout on PYTHONPATH (vLLM is not in the main venv); `vllm_rows()` is
what benchmarks/backends.py can call in such a process:

    flock /work/bench.lock env PYTHONPATH=. ~/.cache/fast-tts/ci-envs/vllm/bin/python benchmarks/backends_vllm.py
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from random_qwen2 import FULL, write_random_qwen2

from fast_tts.backends import create_backend
from fast_tts.models.megatts3.g2p import G2P
from fast_tts.sampling import SamplingParams

REFERENCE_S = 14.8  # upstream G2P, 120 tokens, HF generate (shared/notes/megatts3-reference.md)
TEXTS = ["hello world, this is a test", "the quick brown fox jumps", "fast text to speech on a small cpu",
         "numbers one two three four", "punctuation, too! and more", "a seventh prompt for the batch",
         "and the eighth one here", "zero-shot voice cloning"]
CACHE = Path(os.environ.get("FAST_TTS_BENCH_CACHE", Path.home() / ".cache" / "fast-tts" / "bench"))


def full_size_g2p(std: float) -> Path:
    """The random full-size G2P folder (written on first use)."""
    folder = CACHE / f"qwen2.5-0.5b-shape-std{std}"
    if not (folder / "model.safetensors").is_file():
        write_random_qwen2(folder, **FULL, std=std, tie=True)
    return folder


async def run(backend, prompts: list[list[int]], tokens: int) -> tuple[float, list[list[int]]]:
    """Seconds until every prompt has `tokens` greedy tokens, and the ids."""
    params = SamplingParams(temperature=0.0, max_new_tokens=tokens)
    start = time.perf_counter()
    streams = [backend.submit(torch.tensor(p)[:, None], params) for p in prompts]
    results = await asyncio.gather(*(s.collect() for s in streams))
    return time.perf_counter() - start, [r.token_ids[:, 0].tolist() for r in results]


def agreement(ids: list[list[int]], want: list[list[int]]) -> str:
    """Tokens until the first difference, per prompt (min/total)."""
    same = []
    for a, b in zip(ids, want):
        n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        same.append(n)
    return f"{min(same)}/{len(want[0])}" + ("" if min(same) == len(want[0]) else f" (mean {sum(same) / len(same):.0f})")


async def measure(name: str, folder: Path, dtype: str, prompts: list[list[int]], tokens: int,
                  want: dict[int, list[list[int]]] | None) -> dict:
    t0 = time.perf_counter()
    backend = await asyncio.to_thread(create_backend, name, G2P.from_folder(folder), max_batch=8, max_seq=512,
                                      dtype=dtype)
    startup = time.perf_counter() - t0
    try:
        await run(backend, prompts[:1], 8)  # warm-up
        t1, ids1 = await run(backend, prompts[:1], tokens)
        t8, ids8 = await run(backend, prompts, tokens)
    finally:
        await backend.shutdown()
    row = {"backend": name, "dtype": dtype, "startup_s": startup, "b1_s": t1, "b1_tok_s": tokens / t1,
           "b8_s": t8, "b8_tok_s": 8 * tokens / t8, "ids": {1: ids1, 8: ids8},
           "distinct": len(set(ids8[0]))}
    if want is not None:
        row["agree_b1"] = agreement(ids1, want[1])
        row["agree_b8"] = agreement(ids8, want[8])
    return row


async def vllm_rows(tokens: int = 120, std: float = 0.02, dtypes: tuple[str, ...] = ("float32", "bfloat16"),
                    torch_rows: bool = True) -> list[dict]:
    """Rows for vLLM (and the torch backend beside it) on the full-size random G2P."""
    folder = full_size_g2p(std)
    g2p = G2P.from_folder(folder)
    prompts = [g2p.prompt_ids(t) for t in TEXTS]
    del g2p
    reference = await measure("torch", folder, "float32", prompts, tokens, None)
    want = reference["ids"]
    reference.update(agree_b1=agreement(want[1], want[1]), agree_b8=agreement(want[8], want[8]))
    rows = [reference] if torch_rows else []
    for dtype in dtypes:
        if torch_rows and dtype != "float32":
            rows.append(await measure("torch", folder, dtype, prompts, tokens, want))
        rows.append(await measure("vllm", folder, dtype, prompts, tokens, want))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=120)
    parser.add_argument("--std", type=float, default=0.02)
    args = parser.parse_args()
    rows = asyncio.run(vllm_rows(args.tokens, args.std))
    print(f"\nG2P, Qwen2.5-0.5B shape (random, std {args.std}), {args.tokens} new tokens, greedy; "
          f"load {os.getloadavg()[0]:.1f}; reference (upstream HF generate, batch 1): {REFERENCE_S} s")
    print(f"{'backend':8} {'dtype':9} {'start s':>8} {'b1 s':>7} {'b1 tok/s':>9} {'vs ref':>7} {'b8 s':>7} "
          f"{'b8 tok/s':>9} {'distinct':>8}  greedy agreement vs torch fp32 (b1; b8)")
    for r in rows:
        print(f"{r['backend']:8} {r['dtype']:9} {r['startup_s']:8.1f} {r['b1_s']:7.2f} {r['b1_tok_s']:9.1f} "
              f"{REFERENCE_S / r['b1_s']:6.1f}x {r['b8_s']:7.2f} {r['b8_tok_s']:9.1f} {r['distinct']:8d}  "
              f"{r['agree_b1']}; {r['agree_b8']}")


if __name__ == "__main__":
    main()
