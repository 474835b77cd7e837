"""ChatTTS under load at full size (random weights): AsyncChatTTSEngine vs the reference `Chat.infer`.

Measures, in one run on the same checkpoint:
- 8 requests arriving staggered (every --stagger s) through AsyncChatTTSEngine: aggregate code frames/s
  (generation + decode), against the reference generating and decoding the same 8 texts as one `infer` list;
  the same 8 arriving together too (the staggered figure is bounded by the last arrival: 7 * stagger s + its own
  generation);
- time to first audio chunk of a stream at c=1 and c=8 (reference: c=1, `infer(stream=True)`);
- peak RSS, and RSS across 100 sequential short requests (growth = leak).
The random weights never emit EOS, so every request generates exactly --tokens frames on both sides.

    python benchmarks/chattts_serving.py                  # needs /work/refenv for the reference columns
    python benchmarks/chattts_serving.py --no-reference
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

from chattts import TEXTS, ensure_checkpoint, reference

from fast_tts.engine.chattts import AsyncChatTTSEngine


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def staggered(engine: AsyncChatTTSEngine, tokens: int, stagger: float) -> dict:
    params = {"max_tokens": tokens, "min_tokens": tokens, "seed": 1, "normalize": False}
    firsts: list[float] = []

    async def one(i: int) -> float:
        await asyncio.sleep(i * stagger)
        start = time.perf_counter()
        first = None
        async for chunk in engine.speak_stream_async(TEXTS[i % len(TEXTS)], **params):
            if first is None and chunk.size:
                first = time.perf_counter() - start
        firsts.append(first or float("nan"))
        return time.perf_counter()

    start = time.perf_counter()
    ends = await asyncio.gather(*(one(i) for i in range(8)))
    wall = max(ends) - start
    return {"wall_s": wall, "frames_per_s": 8 * tokens / wall, "ttfa_p50_s": statistics.median(firsts),
            "ttfa_max_s": max(firsts)}


async def first_chunk(engine: AsyncChatTTSEngine, tokens: int) -> float:
    start = time.perf_counter()
    stream = engine.speak_stream_async(TEXTS[0], max_tokens=tokens, min_tokens=tokens, seed=2, normalize=False)
    async for chunk in stream:
        if chunk.size:
            elapsed = time.perf_counter() - start
            await stream.aclose()
            return elapsed
    return float("nan")


async def sequential_rss(engine: AsyncChatTTSEngine, count: int) -> list[float]:
    marks = []
    for i in range(count):
        await engine.speak_async(TEXTS[i % len(TEXTS)], max_tokens=24, min_tokens=24, seed=i, normalize=False)
        if i % 10 == 9:
            marks.append(rss_mb())
    return marks


async def ours(ckpt: Path, tokens: int, stagger: float, sequential: int, dtype: str) -> dict:
    engine = AsyncChatTTSEngine(ckpt, dtype=dtype, max_batch=8, max_concurrency=8)
    try:
        await engine.speak_async(TEXTS[0], max_tokens=8, min_tokens=8, seed=0)  # warm-up
        out = {"c1_first_chunk_s": await first_chunk(engine, tokens)}
        out["staggered"] = await staggered(engine, tokens, stagger)
        out["together"] = await staggered(engine, tokens, 0.0)
        out["rss_marks_mb"] = await sequential_rss(engine, sequential)
    finally:
        await engine.shutdown()
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "fast_tts_chattts_full")
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--stagger", type=float, default=0.25)
    ap.add_argument("--sequential", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--no-reference", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = ensure_checkpoint(args.checkpoint)
    ref = None
    python = os.environ.get("FAST_TTS_REFERENCE_PYTHON", "/work/refenv/bin/python")
    if not args.no_reference and Path(python).is_file():
        full = reference(python, ckpt, [1], 16, 24, args.threads, serving_tokens=args.tokens)
        ref = full.get("serving")
    elif not args.no_reference:
        print(f"reference environment not found at {python}: printing ours only (no reference figures)")
    res = asyncio.run(ours(ckpt, args.tokens, args.stagger, args.sequential, args.dtype))
    st = res["staggered"]
    print(f"\nChatTTS serving, full-size random weights, {args.tokens} frames/request, {args.threads} threads, "
          f"{args.dtype}, load average {os.getloadavg()[0]:.1f}")
    print(f"{'metric':44s} {'reference':>12s} {'ours':>12s} {'ratio':>8s}")
    rows = [
        ("8 requests: aggregate frames/s (gen+decode)", ref and ref["list_frames_per_s"], st["frames_per_s"], True),
        ("  same 8 arriving together: frames/s", ref and ref["list_frames_per_s"], res["together"]["frames_per_s"],
         True),
        ("time to first audio, c=1 (s)", ref and ref["stream_first_chunk_s"], res["c1_first_chunk_s"], False),
        ("time to first audio, c=8 staggered p50 (s)", None, st["ttfa_p50_s"], False),
        ("time to first audio, c=8 staggered max (s)", None, st["ttfa_max_s"], False),
    ]
    for name, r, o, higher_better in rows:
        ratio = "" if not r else f"{(o / r if higher_better else r / o):7.2f}x"
        print(f"{name:44s} {(f'{r:12.3f}' if r else '           -')} {o:12.3f} {ratio:>8s}")
    marks = res["rss_marks_mb"]
    print(f"peak RSS {res['peak_rss_mb']:.0f} MB; RSS every 10 of {args.sequential} sequential requests (MB): "
          + " ".join(f"{m:.0f}" for m in marks))
    if len(marks) >= 2:
        print(f"RSS growth from request 10 to {args.sequential}: {marks[-1] - marks[0]:+.1f} MB")


if __name__ == "__main__":
    main()
