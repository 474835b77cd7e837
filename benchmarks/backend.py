"""Torch backend decode speed on a ChatTTS-shaped random GPT, against the memory-bandwidth floor.

The model: 20 Llama layers, hidden 768, 12 heads, intermediate 3072, with 4 codebook embeddings and 4 heads of 626
(random weights, std 0.02). For each dtype and thread count it prints the decode time per step at batch 1 and 8 through
the backend (asyncio submit/stream, continuous batching), the bare model step (no scheduler), and the floor:
weight bytes read per step / single-core read bandwidth measured here with a large tensor sum.

    python benchmarks/backend.py                  # fp32 and bf16, 1 and 2 threads
    python benchmarks/backend.py --profile        # also a torch.profiler table of one bf16 batch-1 step loop
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from fast_tts.backends.torch_backend import TorchBackend  # noqa: E402
from fast_tts.models.transformer import DecoderConfig, Transformer  # noqa: E402
from fast_tts.sampling import SamplingParams  # noqa: E402

REFERENCE_MS = {1: 48.0, 4: 70.0}  # reference ChatTTS on this CPU, 1 thread (issue 4 / notes §4)
CONFIG = DecoderConfig(hidden_size=768, intermediate_size=3072, num_layers=20, num_heads=12, num_kv_heads=12)
CODEBOOKS, VOCAB, PROMPT = 4, 626, 27


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
    """Read bandwidth (GB/s) of a sum over a tensor far larger than the caches: (by wall time, by CPU time), best of
    `repeats`. On a shared machine the CPU-time figure is what one core reads while it runs."""
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


async def backend_ms_per_step(backend: TorchBackend, batch: int, steps: int, prompt: int) -> tuple[float, float]:
    """Median (wall, process CPU) ms between consecutive steps of a batch of `batch` requests, after warm-up."""
    params = SamplingParams(temperature=0.3, top_k=20, top_p=0.7, min_tokens_to_keep=3, repetition_penalty=1.05,
                            repetition_window=16, max_new_tokens=steps)
    streams = [backend.submit(torch.randint(0, VOCAB, (prompt, CODEBOOKS)), params) for _ in range(batch)]
    stamps = []
    async for _ in streams[0]:
        stamps.append((time.perf_counter(), time.process_time()))
    for s in streams[1:]:
        await s.collect()
    wall = [b[0] - a[0] for a, b in zip(stamps[8:], stamps[9:])]
    cpu = (stamps[-1][1] - stamps[8][1]) / (len(stamps) - 9)
    return statistics.median(wall) * 1e3, cpu * 1e3


def model_ms_per_step(lm: ChatTTSShapedLM, dtype: torch.dtype, batch: int, steps: int, prompt: int = PROMPT) -> float:
    """Bare decode step (embed, decoder over the cache, heads), no sampling or scheduling."""
    model = lm.transformer
    tokens = torch.randint(0, VOCAB, (batch, 1, CODEBOOKS))
    times = []
    with torch.no_grad():
        for i in range(steps):
            pos = torch.full((batch, 1), prompt + i)
            t0 = time.perf_counter()
            h = model(lm.embed(tokens).to(dtype), pos, rows=slice(0, batch), kv_len=prompt + i + 1)
            lm.logits(h[:, 0].float())
            times.append(time.perf_counter() - t0)
    return statistics.median(times[4:]) * 1e3


async def staggered_frames_per_s(backend: TorchBackend, n: int, gap_s: float, tokens: int) -> float:
    """Aggregate frames/s of `n` requests arriving `gap_s` apart."""
    params = SamplingParams(temperature=0.3, top_k=20, top_p=0.7, min_tokens_to_keep=3, max_new_tokens=tokens)
    t0 = time.perf_counter()
    tasks = []
    for i in range(n):
        tasks.append(asyncio.ensure_future(backend.submit(torch.randint(0, VOCAB, (PROMPT, CODEBOOKS)), params).collect()))
        await asyncio.sleep(gap_s)
    results = await asyncio.gather(*tasks)
    return sum(r.token_ids.shape[0] for r in results) / (time.perf_counter() - t0)


def profile_steps(lm: ChatTTSShapedLM, dtype: torch.dtype, batch: int) -> None:
    """Print the ops that dominate a few bare decode steps."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model_ms_per_step(lm, dtype, batch, 12)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--prompt", type=int, default=PROMPT, help="prompt positions before decoding (context length)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--no-pack", action="store_true", help="keep nn.Linear (no oneDNN weight prepacking)")
    args = ap.parse_args()

    print(f"prompt {args.prompt} positions, {args.steps} decode steps; torch {torch.__version__}, cpu capability {torch.backends.cpu.get_cpu_capability()}, "
          f"bf16 kernels {torch.ops.mkldnn._is_mkldnn_bf16_supported()}, load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")
    print(HEADER)
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        bw_wall, bw_cpu = read_bandwidth_gbs()
        for dtype_name in args.dtypes:
            lm = ChatTTSShapedLM()
            nbytes = weight_bytes(lm, getattr(torch, dtype_name))
            backend = TorchBackend(lm, max_batch=8, max_seq=args.prompt + args.steps + 8, dtype=dtype_name,
                                   pack_weights=not args.no_pack)
            floors = (nbytes / bw_wall / 1e6, nbytes / bw_cpu / 1e6)
            for batch in args.batches:
                wall, cpu = await backend_ms_per_step(backend, batch, args.steps, args.prompt)
                bare = model_ms_per_step(lm, backend.dtype, batch, 16, args.prompt)
                rows.append((threads, dtype_name, batch, wall, cpu if threads == 1 else None, bare, floors))
                print(_row(rows[-1]), flush=True)
            agg = await staggered_frames_per_s(backend, 8, 0.1, args.steps)
            print(f"  {threads} thread(s) {dtype_name}: 8 requests arriving 0.1 s apart, {args.steps} frames each: "
                  f"{agg:.1f} frames/s aggregate (wall)", flush=True)
            if args.profile and dtype_name == args.dtypes[-1] and threads == args.threads[0]:
                profile_steps(lm, backend.dtype, 1)
            await backend.shutdown()
        print(f"  read bandwidth, {threads} thread(s): {bw_wall:.1f} GB/s by wall time, {bw_cpu:.1f} GB/s by CPU time")
    print(f"\nsummary (load average now {os.getloadavg()[0]:.1f}); reference ChatTTS, fp32, 1 thread, quiet machine: "
          f"{REFERENCE_MS[1]:.0f} ms/step at batch 1, {REFERENCE_MS[4]:.0f} ms/step at batch 4")
    print(HEADER)
    for r in rows:
        print(_row(r))


HEADER = ("threads dtype     batch  wall ms/step  frames/s  cpu ms/step  bare-model ms  floor ms (wall|cpu bw)"
          "  step/floor  vs reference")


def _row(r: tuple) -> str:
    threads, dtype, batch, wall, cpu, bare, (floor_wall, floor_cpu) = r
    ref = REFERENCE_MS.get(batch)
    step = cpu if cpu is not None else wall  # CPU time stands for a quiet machine where it is measurable
    ratio = step / (floor_cpu if cpu is not None else floor_wall)
    vs = f"{ref / step:.2f}x ({'cpu' if cpu is not None else 'wall'})" if ref else "-"
    cpu_s = f"{cpu:11.1f}" if cpu is not None else f"{'-':>11}"
    return (f"{threads:>7} {dtype:<9} {batch:>5} {wall:13.1f} {batch * 1000 / wall:9.1f} {cpu_s} {bare:14.1f}"
            f" {floor_wall:10.1f} | {floor_cpu:5.1f} {ratio:11.2f}  {vs}")


if __name__ == "__main__":
    asyncio.run(main())
