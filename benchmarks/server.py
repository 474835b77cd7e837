"""HTTP benchmark of `fast-tts serve` with the bundled voice: time to first audio and real-time factor vs concurrency.

Starts the server as a subprocess on loopback, then for each concurrency c runs `--requests-per-worker` requests per
worker through POST /v1/audio/speech, streaming (chunked body) and non-streaming (`"stream": false`, one file).
Time to first audio = request sent -> first body byte received. RTF = request wall time / seconds of audio returned.

    python benchmarks/server.py                 # c = 1,4,8,16, mp3
    python benchmarks/server.py --concurrency 1 8 --format pcm --json results.json
    python benchmarks/server.py --ray           # one process vs Ray Serve with 1 and 2 replicas, c = 1,8,32

--ray runs every setup on this machine's cores: with one machine it measures what Serve's proxy and routing cost,
not scaling. It also kills a replica (Ray's API) and times Serve's replacement: until Serve reports the new replica
running, and until it answers a request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from fast_tts.audio import read_audio
from fast_tts.server.launch import ServerProcess

TEXTS = [
    "The weather today is mild, with a light breeze from the west. Later in the evening, clouds roll in.",
    "Please remember to bring your notebook to the meeting. We will review last week's results together.",
    "A small boat drifted slowly across the lake. On the shore, two children were building a sand castle.",
    "Our train leaves the station at half past nine. If we hurry, we can still buy coffee before it goes.",
]


@dataclass
class Sample:
    ttfa_s: float
    wall_s: float
    audio_s: float


def _audio_seconds(body: bytes, fmt: str, sample_rate: int) -> float:
    if fmt == "pcm":
        return len(body) / 2 / sample_rate
    audio, sr = read_audio(body)
    return len(audio) / sr


async def _one(http: httpx.AsyncClient, url: str, text: str, fmt: str, stream: bool) -> Sample:
    payload = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": fmt, "stream": stream}
    started = time.perf_counter()
    first = None
    body = bytearray()
    async with http.stream("POST", f"{url}/v1/audio/speech", json=payload) as response:
        response.raise_for_status()
        sample_rate = int(response.headers.get("x-sample-rate", "22050"))
        async for piece in response.aiter_raw():
            if first is None and piece:
                first = time.perf_counter() - started
            body += piece
    wall = time.perf_counter() - started
    return Sample(first if first is not None else wall, wall, _audio_seconds(bytes(body), fmt, sample_rate))


async def _run_level(url: str, concurrency: int, per_worker: int, fmt: str, stream: bool) -> tuple[list[Sample], float]:
    limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency + 2)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        samples: list[Sample] = []

        async def worker(w: int) -> None:
            for i in range(per_worker):
                try:
                    samples.append(await _one(http, url, TEXTS[(w + i) % len(TEXTS)], fmt, stream))
                except httpx.HTTPError as exc:  # counted, not fatal: a cut stream or a refusal is a result too
                    print(f"request failed: {exc.__class__.__name__}: {exc}", file=sys.stderr, flush=True)

        started = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        return samples, time.perf_counter() - started


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _level_row(setup: str, concurrency: int, samples: list[Sample], wall: float) -> dict:
    ttfa = [s.ttfa_s for s in samples]
    return {
        "setup": setup, "concurrency": concurrency, "n": len(samples),  # n: requests that completed
        "ttfa_p50_ms": 1000 * statistics.median(ttfa), "ttfa_p95_ms": 1000 * _pct(ttfa, 0.95),
        "requests_per_s": len(samples) / wall, "audio_s_per_s": sum(s.audio_s for s in samples) / wall,
    }


def _replacement_times(server: ServerProcess) -> dict:
    """Kill one replica of a `--ray` server through Ray's API; seconds until Serve runs a new one, and until the
    new one answers."""
    import re

    from fast_tts.server.ray_proxy import prepare_ray_environment

    address = re.search(r"Ray at (\S+) \(", server.log()).group(1)
    prepare_ray_environment(address)
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # a local instance started by fast-tts uses Ray's token auth
    import ray
    from ray import serve

    ray.init(address=address, log_to_driver=False)
    prefix = "SERVE_REPLICA::fast-tts#FastTTS#"

    def replicas() -> set[str]:
        return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)}

    def running() -> int:
        return serve.status().applications["fast-tts"].deployments["FastTTS"].replica_states.get("RUNNING", 0)

    try:
        before = replicas()
        victim = sorted(before)[0]
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        killed = time.perf_counter()
        while not (len(replicas() - before) == 1 and running() == len(before)):
            time.sleep(0.05)
        running_s = time.perf_counter() - killed
        new = (replicas() - before).pop().rsplit("#", 1)[1]
        while True:
            answer = httpx.post(f"{server.url}/api/speak", json={"text": "Hi.", "stream": False}, timeout=60)
            if answer.headers.get("x-fast-tts-replica") == new:
                break
        return {"replica_running_s": running_s, "new_replica_answered_s": time.perf_counter() - killed}
    finally:
        ray.shutdown()


def ray_main(args: argparse.Namespace) -> int:
    """One process vs Ray Serve with 1 and 2 replicas: first audio and requests/s per concurrency; replacement."""
    levels = args.concurrency if args.concurrency != [1, 4, 8, 16] else [1, 8, 32]
    common = ["--max-concurrency", str(max(levels)), "--max-queue", "256"]
    setups = [("one process", []), ("Ray Serve, 1 replica", ["--ray", "--replicas", "1"]),
              ("Ray Serve, 2 replicas", ["--ray", "--replicas", "2"])]
    rows, replacement = [], {}
    print(f"format={args.format}, streamed, {args.requests_per_worker} requests per worker, texts of ~100 characters")
    print("same machine for every setup: the Ray rows show Serve's overhead, not scaling\n")
    print("| setup | c | n | first audio p50 | first audio p95 | requests/s | audio s per wall s |")
    print("|---|---|---|---|---|---|---|")
    for setup, flags in setups:
        server = ServerProcess([*common, *flags, *args.server_arg], timeout_s=300, stop_timeout_s=90)
        try:
            asyncio.run(_run_level(server.url, 2, 2, args.format, True))  # warm-up
            for concurrency in levels:
                samples, wall = asyncio.run(
                    _run_level(server.url, concurrency, args.requests_per_worker, args.format, True))
                row = _level_row(setup, concurrency, samples, wall)
                rows.append(row)
                print(f"| {setup} | {concurrency} | {row['n']} | {row['ttfa_p50_ms']:.0f} ms | "
                      f"{row['ttfa_p95_ms']:.0f} ms | {row['requests_per_s']:.2f} | {row['audio_s_per_s']:.1f} |",
                      flush=True)
            if flags[-1:] == ["2"]:
                replacement = _replacement_times(server)
                print(f"\nkilled one of 2 replicas: Serve ran a new one after {replacement['replica_running_s']:.1f} s;"
                      f" it answered after {replacement['new_replica_answered_s']:.1f} s", flush=True)
        finally:
            server.stop()
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"levels": rows, "replacement": replacement}, handle, indent=2)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--requests-per-worker", type=int, default=3)
    parser.add_argument("--format", default="mp3", choices=["mp3", "wav", "pcm", "opus", "aac", "flac"])
    parser.add_argument("--url", help="benchmark a running server instead of starting one")
    parser.add_argument("--server-arg", action="append", default=[], help="extra flag for the started server")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--ray", action="store_true",
                        help="compare one process with Ray Serve (1 and 2 replicas) and time a replica's replacement")
    args = parser.parse_args()
    if args.ray:
        return ray_main(args)

    server = None
    if args.url:
        url = args.url.rstrip("/")
    else:
        server = ServerProcess(["--max-concurrency", str(max(args.concurrency)), "--max-queue", "256",
                                *args.server_arg])
        url = server.url
    rows = []
    try:
        asyncio.run(_run_level(url, 2, 1, args.format, True))  # warm-up: load, first-call costs
        print(f"format={args.format}, {args.requests_per_worker} requests per worker, texts of ~100 characters\n")
        print("| c | mode | n | first audio p50 | first audio p95 | RTF p50 | RTF p95 | audio s per wall s |")
        print("|---|---|---|---|---|---|---|---|")
        for concurrency in args.concurrency:
            for stream in (True, False):
                samples, wall = asyncio.run(_run_level(url, concurrency, args.requests_per_worker, args.format, stream))
                ttfa = [s.ttfa_s for s in samples]
                rtf = [s.wall_s / s.audio_s for s in samples if s.audio_s > 0]
                row = {
                    "concurrency": concurrency, "mode": "stream" if stream else "whole", "n": len(samples),
                    "ttfa_p50_ms": 1000 * statistics.median(ttfa), "ttfa_p95_ms": 1000 * _pct(ttfa, 0.95),
                    "rtf_p50": statistics.median(rtf), "rtf_p95": _pct(rtf, 0.95),
                    "throughput": sum(s.audio_s for s in samples) / wall,
                }
                rows.append(row)
                print(f"| {concurrency} | {row['mode']} | {row['n']} | {row['ttfa_p50_ms']:.0f} ms | "
                      f"{row['ttfa_p95_ms']:.0f} ms | {row['rtf_p50']:.3f} | {row['rtf_p95']:.3f} | "
                      f"{row['throughput']:.1f} |", flush=True)
    finally:
        if server is not None:
            server.stop()
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
