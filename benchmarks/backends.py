"""MegaTTS3's G2P at full size (Qwen2.5-0.5B shape, random weights) on every LM backend that runs here, against the
reference's way of running it (transformers `generate`) measured in the same run.

Each row of `ROWS` runs in a fresh process with its engine's python: this one for torch, the side environments that
`.ci/setup/*.sh` build for the others (`$FAST_TTS_CI_ENVS/<env>`, see tests/engine_envs.py); a row whose environment
is missing is listed as skipped. A row measures, after one short warm-up request:
- batch 1: one prompt, 120 greedy tokens, wall time from submit to the last token;
- 8 at once: 8 different prompts of 120 greedy tokens submitted together, wall time until all are done;
- greedy agreement: how many of the 120 batch-1 tokens equal the float32 torch backend's before the first difference;
- forced agreement: at every FORCED_STRIDE-th of those positions, the backend's greedy token after the float32 torch
  backend's own tokens up to there (one prompt each), equal to float32's next token or not. Free-running agreement
  ends at the first near-tie; this counts how often each precision picks the same token from the same history.
The reference row is Hugging Face transformers' `generate` (float32, greedy, KV cache), which is how the MegaTTS3
reference runs its G2P; it needs an environment with transformers (the ChatTTS reference's, when built), else the
figure measured for the notes (14.8 s for 120 tokens) is printed instead, marked as such.
Random weights: normal with std `--std` (0.05 keeps the greedy ids diverse at this size), embeddings tied as in
Qwen2.5-0.5B, vocabulary 152469 (the G2P's); the model folder and its GGUF files are cached under `--workdir`.

    flock /work/bench.lock python benchmarks/backends.py
    python benchmarks/backends.py --rows "torch bf16" "llama.cpp q8_0" --no-reference
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

TOKENS, CONCURRENT = 120, 8
FORCED_STRIDE = 4  # forced agreement probes positions 0, 4, 8, ... of the float32 row's tokens
REFERENCE_NOTE_S = 14.8  # ../shared/notes/megatts3-reference.md: G2P, real size, 120 tokens, HF generate, this CPU
SHAPE = {"hidden": 896, "intermediate": 4864, "layers": 24, "heads": 14, "kv_heads": 2, "vocab": 152469}
TEXTS = ["hello world, this is a test", "the quick brown fox jumps", "fast text to speech on a cpu",
         "one two three four five six", "a sentence with some words", "another prompt for the g2p",
         "speech synthesis with diffusion", "the eighth and last prompt"]


@dataclass(frozen=True)
class Row:
    """One measured configuration: a backend with its options, run with the python of side environment `env`."""

    name: str
    backend: str
    env: str | None = None  # None: this python
    options: dict = field(default_factory=dict)


# A new backend is one line here (the vllm row: Row("vLLM float32", "vllm", "vllm", {...})).
ROWS = [
    Row("torch float32", "torch", None, {"dtype": "float32"}),
    Row("torch bf16", "torch", None, {"dtype": "bfloat16"}),
    Row("torch int8", "torch", None, {"dtype": "bfloat16", "quantize": "int8"}),  # needs AMX-INT8
    Row("torch int4", "torch", None, {"dtype": "bfloat16", "quantize": "int4"}),  # needs AVX-512 VNNI
    Row("llama.cpp f16", "llama-cpp", "llama-cpp", {"gguf_type": "f16"}),
    Row("llama.cpp q8_0", "llama-cpp", "llama-cpp", {"gguf_type": "q8_0"}),
    Row("llama.cpp q4_0", "llama-cpp", "llama-cpp", {"gguf_type": "q4_0"}),
    Row("mlx-lm float32", "mlx-lm", "mlx-lm", {"dtype": "float32"}),
    Row("mlx-lm bf16", "mlx-lm", "mlx-lm", {"dtype": "bfloat16"}),
    Row("mlx-lm 8-bit", "mlx-lm", "mlx-lm", {"quantize_bits": 8}),
]
BASELINE = "torch float32"  # greedy agreement is counted against this row
REFERENCE_ENV = "chattts-ref"  # an environment with transformers (the ChatTTS reference's, .ci/setup)


def model_folder(workdir: Path, std: float) -> Path:
    """The full-size random G2P folder (written once per std)."""
    from random_qwen2 import write_random_qwen2

    folder = workdir / f"g2p-full-std{std}"
    if not (folder / "model.safetensors").is_file():
        s = SHAPE
        write_random_qwen2(folder, hidden=s["hidden"], intermediate=s["intermediate"], layers=s["layers"],
                           heads=s["heads"], kv_heads=s["kv_heads"], vocab=s["vocab"], std=std, tie=True)
    return folder


def prompts(folder: Path) -> list[list[int]]:
    """The G2P prompts of TEXTS ('<BOT>' + text + '<BOS>' + sil), from the folder's tokenizer."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    start = tok.token_to_id("<Reserved_TTS_0>")
    return [tok.encode("<BOT>" + t + "<BOS>").ids + [start + 145] for t in TEXTS]


# ---- one row, in its own process ------------------------------------------------------------------------------
async def measure_backend(row: Row, folder: Path, base: list[int] | None) -> dict:
    """Load, warm up, then batch 1 and CONCURRENT at once, all greedy; then the forced agreement (one request at a
    time) with the float32 row's tokens `base` (None: this is that row, and its own batch-1 tokens are used)."""
    import torch

    from fast_tts.backends import create_backend
    from fast_tts.models.megatts3.g2p import G2P
    from fast_tts.sampling import SamplingParams

    ids = [torch.tensor(p)[:, None] for p in prompts(folder)]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=TOKENS)
    t0 = time.perf_counter()
    backend = create_backend(row.backend, G2P.from_folder(folder), max_batch=CONCURRENT, max_seq=512, **row.options)
    load_s = time.perf_counter() - t0
    try:
        await backend.submit(ids[0], SamplingParams(temperature=0.0, max_new_tokens=8)).collect()
        t0 = time.perf_counter()
        one = await backend.submit(ids[0], greedy).collect()
        batch1_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        many = await asyncio.gather(*(backend.submit(p, greedy).collect() for p in ids[:CONCURRENT]))
        batch8_s = time.perf_counter() - t0
        base = base if base is not None else one.token_ids[:, 0].tolist()  # the baseline row: against itself
        forced = []
        for j in range(0, len(base), FORCED_STRIDE):
            prompt = torch.cat([ids[0], torch.tensor(base[:j], dtype=ids[0].dtype)[:, None]])
            got = await backend.submit(prompt, SamplingParams(temperature=0.0, max_new_tokens=1)).collect()
            forced.append(int(got.token_ids[0, 0]) == base[j])
    finally:
        await backend.shutdown()
    return {"load_s": load_s, "batch1_s": batch1_s, "batch8_s": batch8_s, "ids": one.token_ids[:, 0].tolist(),
            "tokens8": sum(r.token_ids.shape[0] for r in many), "forced": forced}


def measure_reference(folder: Path) -> dict:
    """transformers' generate, float32, greedy, batch 1 (the reference's G2P call)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(folder), torch_dtype=torch.float32).eval()
    load_s = time.perf_counter() - t0
    x = torch.tensor([prompts(folder)[0]])
    with torch.inference_mode():
        model.generate(x, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        t0 = time.perf_counter()
        out = model.generate(x, max_new_tokens=TOKENS, min_new_tokens=TOKENS, do_sample=False)
        batch1_s = time.perf_counter() - t0
    return {"load_s": load_s, "batch1_s": batch1_s, "ids": out[0, x.shape[1]:].tolist()}


# ---- the driver ------------------------------------------------------------------------------------------------
def env_python(env: str | None) -> Path | None:
    if env is None:
        return Path(sys.executable)
    from engine_envs import env_python as side_python

    return side_python(env)


def run_row(name: str, python: Path, folder: Path, base_file: Path | None = None) -> dict:
    cmd = [str(python), __file__, "--worker", name, "--folder", str(folder)]
    cmd += ["--base-ids", str(base_file)] if base_file is not None else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1])


def agreement(ids: list[int], base: list[int] | None) -> str:
    if base is None:
        return "-"
    same = next((i for i, (a, b) in enumerate(zip(ids, base)) if a != b), min(len(ids), len(base)))
    return f"{same}/{len(base)}"


def forced(hits: list[bool] | None) -> str:
    return f"{sum(hits)}/{len(hits)}" if hits else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="*", help="row names (default: all)")
    parser.add_argument("--workdir", default=os.path.join(os.path.expanduser("~"), ".cache", "fast-tts", "bench"))
    parser.add_argument("--std", type=float, default=0.05)
    parser.add_argument("--no-reference", dest="reference", action="store_false",
                        help="print the notes' reference figure instead of measuring transformers' generate")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--base-ids", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        folder = Path(args.folder)
        if args.worker == "reference":
            result = measure_reference(folder)
        else:
            row = next(r for r in ROWS if r.name == args.worker)
            base = json.loads(Path(args.base_ids).read_text()) if args.base_ids else None
            result = asyncio.run(measure_backend(row, folder, base))
        print(json.dumps(result), flush=True)
        return

    folder = model_folder(Path(args.workdir), args.std)
    rows = [r for r in ROWS if not args.rows or r.name in args.rows]
    rows = [next(r for r in ROWS if r.name == BASELINE)] + [r for r in rows if r.name != BASELINE]
    ref_python = env_python(REFERENCE_ENV) if args.reference else None
    ref = run_row("reference", ref_python, folder) if ref_python is not None else {}
    ref_s = ref.get("batch1_s", REFERENCE_NOTE_S)
    base, base_file = None, folder / "float32-ids.json"
    base_file.unlink(missing_ok=True)
    for i, row in enumerate(rows):  # the baseline first: agreement is counted against it
        python = env_python(row.env)
        given = base_file if base_file.is_file() else None
        r = run_row(row.name, python, folder, given) if python else {"error": f"no {row.env} env"}
        if row.name == BASELINE and "ids" in r:
            base = r["ids"]
            base_file.write_text(json.dumps(base))
        if i == 0:
            ref_label = "measured now" if "batch1_s" in ref else "from the notes"
            print(f"G2P, Qwen2.5-0.5B shape (random weights, std {args.std}), {TOKENS} greedy tokens; "
                  f"{os.cpu_count()} CPUs; load {os.getloadavg()[0]:.1f}")
            print(f"reference (transformers generate, float32, batch 1): {ref_s:.2f} s ({ref_label}); "
                  f"greedy agreement with torch float32 {agreement(ref['ids'], base) if 'ids' in ref else '-'}")
            print(f"{'backend':<18}{'load s':>8}{'batch 1 s':>11}{'tok/s':>8}{'vs ref':>8}"
                  f"{f'{CONCURRENT} at once s':>15}{'tok/s':>8}{'agreement':>11}{'forced':>8}")
        if "error" in r:
            print(f"{row.name:<18}  skipped: {r['error']}", flush=True)
            continue
        print(f"{row.name:<18}{r['load_s']:>8.1f}{r['batch1_s']:>11.2f}{TOKENS / r['batch1_s']:>8.1f}"
              f"{ref_s / r['batch1_s']:>7.1f}x{r['batch8_s']:>15.2f}{r['tokens8'] / r['batch8_s']:>8.1f}"
              f"{agreement(r['ids'], base):>11}{forced(r.get('forced')):>8}", flush=True)
    print(f"load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
