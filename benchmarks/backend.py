"""Torch backend decode speed on a ChatTTS-shaped random GPT, against the memory-bandwidth floor and a baseline.

The model: 20 Llama layers, hidden 768, 12 heads, intermediate 3072, with 4 codebook embeddings and 4 heads of 626
(random weights, std 0.02). For each thread count and batch size it measures, interleaved so that all see the same
machine load:
- ours: decode ms/step through the backend (asyncio submit/stream, continuous batching, ChatTTS sampling settings),
  fp32 and bf16 weights;
- baseline (when `transformers` is importable): the reference's GPT core, a transformers `LlamaModel` with
  `DynamicCache` fed embeddings step by step, the same weights, heads and top-p/top-k + multinomial sampling, fp32;
- the floor: weight bytes read per step / single-core read bandwidth measured here with a large tensor sum.
Each figure is the best of `--repeats` runs (median step time within a run), because the build machine is shared.
Wall time and process CPU time are both printed; with 1 thread, CPU time approximates a quiet machine.

    python benchmarks/backend.py                        # ours only if transformers is missing
    /path/to/venv-with-transformers/bin/python benchmarks/backend.py --profile
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from fast_tts.backends.torch_backend import TorchBackend
from fast_tts.models.transformer import DecoderConfig, Transformer
from fast_tts.sampling import SamplingParams

REFERENCE_MS = {1: 48.0, 4: 70.0}  # reference ChatTTS on this CPU, fp32, 1 thread, quiet (issue 4 / notes §4)
CONFIG = DecoderConfig(hidden_size=768, intermediate_size=3072, num_layers=20, num_heads=12, num_kv_heads=12)
CODEBOOKS, VOCAB = 4, 626
PARAMS = {"temperature": 0.3, "top_k": 20, "top_p": 0.7, "min_tokens_to_keep": 3}  # ChatTTS code defaults


class ChatTTSShapedLM(nn.Module):
    """Random weights in ChatTTS GPT shapes: summed codebook embeddings in, one head per codebook out."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.transformer = Transformer(CONFIG)
        for p in self.transformer.parameters():
            if p.dim() > 1:
                nn.init.normal_(p, std=0.02)
        self.num_codebooks = CODEBOOKS
        self.emb = nn.ModuleList(nn.Embedding(VOCAB, CONFIG.hidden_size) for _ in range(CODEBOOKS))
        self.heads = nn.Linear(CONFIG.hidden_size, CODEBOOKS * VOCAB, bias=False)  # the 4 heads as one matmul

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.stack([e(tokens[..., i]) for i, e in enumerate(self.emb)], -1).sum(-1)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.heads(hidden).view(-1, CODEBOOKS, VOCAB).float()


def read_bandwidth_gbs(size_mb: int = 1024, repeats: int = 5) -> tuple[float, float]:
    """Read bandwidth (GB/s) of a sum over a tensor far larger than the caches: (by wall time, by CPU time)."""
    x = torch.ones(size_mb * 2**20 // 4)
    x.sum()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        x.sum()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return x.numel() * 4 / min(wall) / 1e9, x.numel() * 4 / min(cpu) / 1e9


def weight_bytes(lm: ChatTTSShapedLM, dtype: torch.dtype) -> int:
    """Bytes read per decode step: decoder weights in `dtype`, heads in float32 (embedding reads are a few rows)."""
    decoder = sum(p.numel() for p in lm.transformer.parameters()) * torch.finfo(dtype).bits // 8
    return decoder + sum(p.numel() * p.element_size() for p in lm.heads.parameters())


async def ours_ms_per_step(backend: TorchBackend, batch: int, steps: int, prompt: int) -> tuple[float, float]:
    """(wall, process CPU) ms per decode step of `batch` concurrent requests, after 8 warm-up steps."""
    params = SamplingParams(**PARAMS, repetition_penalty=1.05, repetition_window=16, max_new_tokens=steps)
    streams = [backend.submit(torch.randint(0, VOCAB, (prompt, CODEBOOKS)), params) for _ in range(batch)]
    stamps = []
    async for _ in streams[0]:
        stamps.append((time.perf_counter(), time.process_time()))
    for s in streams[1:]:
        await s.collect()
    wall = [b[0] - a[0] for a, b in itertools.pairwise(stamps[8:])]
    cpu = (stamps[-1][1] - stamps[8][1]) / (len(stamps) - 9)
    return statistics.median(wall) * 1e3, cpu * 1e3


class HFBaseline:
    """The reference's GPT core: transformers LlamaModel + DynamicCache, fed one embedding per step (fp32)."""

    def __init__(self, lm: ChatTTSShapedLM) -> None:
        from transformers import LlamaConfig, LlamaModel
        from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

        cfg = LlamaConfig(
            hidden_size=CONFIG.hidden_size,
            intermediate_size=CONFIG.intermediate_size,
            num_hidden_layers=CONFIG.num_layers,
            num_attention_heads=CONFIG.num_heads,
            num_key_value_heads=CONFIG.num_kv_heads,
            vocab_size=8,
            rms_norm_eps=CONFIG.rms_norm_eps,
            rope_theta=CONFIG.rope_theta,
            attn_implementation="sdpa",
        )
        self.model = LlamaModel(cfg).eval()
        self.model.load_state_dict(_to_hf_names(lm.transformer.state_dict()), strict=False)
        self.lm = lm
        self.warpers = [
            TopPLogitsWarper(PARAMS["top_p"], min_tokens_to_keep=3),
            TopKLogitsWarper(PARAMS["top_k"], min_tokens_to_keep=3),
        ]

    def max_diff_vs(self, ours: Transformer, prompt: int) -> float:
        """Largest hidden-state difference from our decoder on one prompt (checks the weight copy and our math)."""
        x = self.lm.embed(torch.randint(0, VOCAB, (1, prompt, CODEBOOKS)))
        with torch.no_grad():
            ref = self.model(inputs_embeds=x).last_hidden_state
            got = ours(x, torch.arange(prompt)[None])
        return (ref - got).abs().max().item()

    def ms_per_step(self, batch: int, steps: int, prompt: int) -> tuple[float, float]:
        from transformers import DynamicCache

        cache = DynamicCache()
        mask = torch.ones(batch, prompt, dtype=torch.long)
        x = self.lm.embed(torch.randint(0, VOCAB, (batch, prompt, CODEBOOKS)))
        walls, cpus = [], []
        with torch.no_grad():
            out = self.model(inputs_embeds=x, attention_mask=mask, past_key_values=cache, use_cache=True)
            for i in range(steps):
                t0, c0 = time.perf_counter(), time.process_time()
                scores = self.lm.logits(out.last_hidden_state[:, -1]).reshape(batch * CODEBOOKS, VOCAB)
                scores = scores / PARAMS["temperature"]
                for warp in self.warpers:
                    scores = warp(None, scores)
                tokens = torch.multinomial(scores.softmax(-1), 1).view(batch, 1, CODEBOOKS)
                mask = torch.cat([mask, mask.new_ones(batch, 1)], 1)
                pos = torch.full((batch, 1), prompt + i)
                out = self.model(
                    inputs_embeds=self.lm.embed(tokens),
                    attention_mask=mask,
                    position_ids=pos,
                    past_key_values=cache,
                    use_cache=True,
                )
                walls.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - c0)
        return statistics.median(walls[8:]) * 1e3, sum(cpus[8:]) / len(cpus[8:]) * 1e3


def _to_hf_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our fused names (wqkv, w13) back to Hugging Face Llama names."""
    out = {}
    for key, value in state.items():
        if key.endswith("self_attn.wqkv.weight"):
            base = key[: -len("wqkv.weight")]
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3)):
                out[f"{base}{name}.weight"] = part
        elif key.endswith("mlp.w13.weight"):
            base = key[: -len("w13.weight")]
            out[f"{base}gate_proj.weight"], out[f"{base}up_proj.weight"] = value.chunk(2)
        else:
            out[key] = value
    return out


async def staggered_frames_per_s(backend: TorchBackend, n: int, gap_s: float, tokens: int, prompt: int) -> float:
    """Aggregate frames/s of `n` requests arriving `gap_s` apart."""
    params = SamplingParams(**PARAMS, max_new_tokens=tokens)
    t0 = time.perf_counter()
    tasks = []
    for _ in range(n):
        tasks.append(
            asyncio.ensure_future(backend.submit(torch.randint(0, VOCAB, (prompt, CODEBOOKS)), params).collect())
        )
        await asyncio.sleep(gap_s)
    results = await asyncio.gather(*tasks)
    return sum(r.token_ids.shape[0] for r in results) / (time.perf_counter() - t0)


def profile_bare_steps(backend: TorchBackend, batch: int, prompt: int) -> None:
    """torch.profiler table of a few bare decode steps (embed, decoder over the cache, heads)."""
    from torch.profiler import ProfilerActivity, profile

    lm, model, cache = backend.adapter, backend.runner.model, backend.runner.cache
    tokens = torch.randint(0, VOCAB, (batch, 1, CODEBOOKS))
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(10):
            pos = torch.full((batch, 1), prompt + i)
            h = model(lm.embed(tokens).to(backend.dtype), pos, cache, rows=slice(0, batch), kv_len=prompt + i + 1)
            lm.logits(h[:, 0].float())
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))


async def best_of(repeats: int, fn: Callable) -> tuple[float, float]:
    runs = [await fn() for _ in range(repeats)]
    return min(r[0] for r in runs), min(r[1] for r in runs)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--prompt", type=int, default=27, help="prompt positions before decoding (context length)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--profile", action="store_true", help="print a profile of bf16 batch-1 steps")
    ap.add_argument("--no-pack", action="store_true", help="keep nn.Linear (no oneDNN weight prepacking)")
    args = ap.parse_args()
    print(
        f"prompt {args.prompt} positions, {args.steps} decode steps, best of {args.repeats}; "
        f"torch {torch.__version__}, "
        f"cpu {torch.backends.cpu.get_cpu_capability()}, bf16 kernels {torch.ops.mkldnn._is_mkldnn_bf16_supported()}, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )

    max_seq = args.prompt + args.steps + 8
    baseline = None
    try:
        baseline = HFBaseline(ChatTTSShapedLM())
        print(
            f"baseline: transformers LlamaModel, same weights (max |hidden diff| vs ours "
            f"{baseline.max_diff_vs(ChatTTSShapedLM().transformer, args.prompt):.2e})"
        )
    except ImportError:
        print("baseline: transformers is not installed here, so only our figures and the floor are printed")
    lms = {d: ChatTTSShapedLM() for d in ("float32", "bfloat16")}
    nbytes = {d: weight_bytes(lm, getattr(torch, d)) for d, lm in lms.items()}
    backends = {
        d: TorchBackend(lm, max_batch=8, max_seq=max_seq, dtype=d, pack_weights=not args.no_pack)
        for d, lm in lms.items()
    }
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for backend in backends.values():
            backend.set_num_threads(threads)
        bw = read_bandwidth_gbs()
        print(f"\n{threads} thread(s): read bandwidth {bw[0]:.1f} GB/s by wall time, {bw[1]:.1f} GB/s by CPU time")
        print(HEADER)
        for batch in args.batches:
            for d, backend in backends.items():
                wall, cpu = await best_of(
                    args.repeats, lambda b=backend, n=batch: ours_ms_per_step(b, n, args.steps, args.prompt)
                )
                rows.append((threads, f"ours {d}", batch, wall, cpu, nbytes[d], bw))
                print(_row(rows[-1]), flush=True)
            if baseline is not None:
                wall, cpu = await best_of(args.repeats, _wrap(baseline.ms_per_step, batch, args.steps, args.prompt))
                rows.append((threads, "baseline float32", batch, wall, cpu, nbytes["float32"], bw))
                print(_row(rows[-1]), flush=True)
        for d, backend in backends.items():
            agg = await staggered_frames_per_s(backend, 8, 0.1, args.steps, args.prompt)
            print(
                f"  ours {d}: 8 requests arriving 0.1 s apart, {args.steps} frames each: {agg:.1f} frames/s aggregate"
            )
    if args.profile:
        torch.set_num_threads(args.threads[0])
        profile_bare_steps(backends["bfloat16"], 1, args.prompt)
    for backend in backends.values():
        await backend.shutdown()
    print(
        f"\nsummary (load average now {os.getloadavg()[0]:.1f}); published reference ChatTTS, fp32, 1 thread, quiet "
        f"machine: {REFERENCE_MS[1]:.0f} ms/step at batch 1, {REFERENCE_MS[4]:.0f} ms/step at batch 4"
    )
    print(HEADER)
    for r in rows:
        print(_row(r))
    if baseline is not None:
        print("\nours vs baseline, same threads and batch (wall | cpu):")
        base = {(r[0], r[2]): r for r in rows if r[1].startswith("baseline")}
        for r in rows:
            b = base.get((r[0], r[2]))
            if b is not None and r[1].startswith("ours"):
                print(f"  {r[0]} thread(s) batch {r[2]} {r[1]:<14} {b[3] / r[3]:.2f}x | {b[4] / r[4]:.2f}x faster")


def _wrap(fn: Callable, *a: int) -> Callable:
    async def run() -> tuple[float, float]:
        return fn(*a)

    return run


HEADER = "threads  model              batch  wall ms/step  frames/s  cpu ms/step  floor ms  cpu/floor"


def _row(r: tuple) -> str:
    threads, name, batch, wall, cpu, nbytes, (_, bw_cpu) = r
    floor = nbytes / bw_cpu / 1e6  # what one core reads while it runs; wall bandwidth is shared with other jobs
    return (
        f"{threads:>7}  {name:<17} {batch:>5} {wall:13.1f} {batch * 1000 / wall:9.1f} {cpu:12.1f}"
        f" {floor:9.1f} {cpu / floor:10.2f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
