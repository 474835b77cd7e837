"""Bundled Piper voice through AsyncPiperEngine: time to first chunk and real-time factor at 1 and 4 concurrent
requests.

Usage: python benchmarks/piper.py [--runs 3] [--concurrency 1 4] [--max-concurrency 2]
Each request streams a ~20 s paragraph. Per setting, the medians over the runs are printed:
  ttfc     time from submitting a request to its first audio chunk (mean over the requests of a run)
  rtf      request wall time / seconds of audio it produced (mean over requests; < 1 is faster than real time)
  x_rt     all audio produced / wall time of the run (aggregate throughput, in multiples of real time)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

# This file is named like the `piper` package: take its own folder off the path, put the repository root on it.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from fast_tts.engine.piper import AsyncPiperEngine

PARAGRAPH = (
    "The harbor was quiet in the early morning, and the fishing boats rocked gently against the pier. "
    "A few gulls circled overhead, calling to each other as the sun rose over the water. "
    "Down by the market, the first merchants were setting up their stalls and arranging baskets of fruit. "
    "An old man sat on a bench with a newspaper, watching the town slowly wake up around him. "
    "By nine o'clock the streets were full of people, and the smell of fresh bread drifted from every corner."
)


async def one_request(engine: AsyncPiperEngine) -> tuple[float, float, float]:
    """Stream the paragraph; return (time to first chunk, wall time, audio seconds)."""
    start = time.perf_counter()
    first = None
    samples = 0
    async for chunk in engine.speak_stream_async(PARAGRAPH):
        if first is None:
            first = time.perf_counter() - start
        samples += len(chunk)
    return first or 0.0, time.perf_counter() - start, samples / engine.sample_rate


async def run(engine: AsyncPiperEngine, concurrency: int) -> dict[str, float]:
    """One run of `concurrency` simultaneous requests."""
    start = time.perf_counter()
    results = await asyncio.gather(*(one_request(engine) for _ in range(concurrency)))
    wall = time.perf_counter() - start
    return {
        "ttfc": statistics.mean(r[0] for r in results),
        "rtf": statistics.mean(r[1] / r[2] for r in results),
        "x_rt": sum(r[2] for r in results) / wall,
        "audio_s": statistics.mean(r[2] for r in results),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--max-concurrency", type=int, default=4, help="engine slots (requests admitted at once)")
    parser.add_argument("--workers", type=int, default=None, help="worker threads (default: min(slots, cores))")
    args = parser.parse_args()

    load_start = time.perf_counter()
    engine = AsyncPiperEngine(max_concurrency=args.max_concurrency, workers=args.workers)
    load = time.perf_counter() - load_start
    await engine.speak_async("Warm up the text normalizer and the voice.")
    print(f"voice load {load:.2f} s; engine slots {args.max_concurrency}, workers {engine.workers}; "
          f"median of {args.runs} runs")
    print(f"{'concurrency':>11} {'audio s':>8} {'ttfc s':>8} {'rtf':>7} {'x real-time':>12}")
    runner = engine._runner(engine._names[engine.default_voice][0])
    direct = []
    for _ in range(args.runs):  # the bare runner, no engine: what the engine's overhead is measured against
        start = time.perf_counter()
        samples = sum(len(a) for a in runner.speak(PARAGRAPH))
        direct.append((time.perf_counter() - start) / (samples / runner.sample_rate))
    direct_s = statistics.median(direct)
    print(f"{'runner only':>11} {'':>8} {'':>8} {direct_s:>7.3f} {1 / direct_s:>12.1f}")
    for concurrency in args.concurrency:
        runs = [await run(engine, concurrency) for _ in range(args.runs)]
        med = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        print(f"{concurrency:>11} {med['audio_s']:>8.1f} {med['ttfc']:>8.3f} {med['rtf']:>7.3f} {med['x_rt']:>12.1f}")
    await engine.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
