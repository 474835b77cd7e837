"""What every external-engine backend must do, as checks shared by tests/test_backend_llama_cpp.py and
tests/test_backend_mlx_lm.py, plus the way those modules run inside their engine's side environment.

An engine's test module holds real tests only where the engine imports; elsewhere it holds one test that runs the
module again with the side environment's python (`.ci/setup/*.sh` builds it; the checkout on PYTHONPATH) and fails
unless every test there passed: locally a missing environment skips, under CI=true it fails (tests/engine_envs.py).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from fast_tts.backends import create_backend
from fast_tts.sampling import SamplingParams

REPO = Path(__file__).resolve().parents[1]
GREEDY_TOKENS = 64


def run_module_in_env(env: str, module_file: str, timeout: int = 1500) -> None:
    """Run a test module with side environment `env`'s python; assert that all its tests ran and passed."""
    from engine_envs import require_env

    python = require_env(env)
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    cmd = [str(python), "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", module_file]
    done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": pythonpath}, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    report = (done.stdout + done.stderr)[-20000:]
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0, report
    assert " passed" in summary and "skipped" not in summary and "failed" not in summary, report
    sys.stdout.write(summary + "\n")


def prompts(adapter, n: int) -> list[torch.Tensor]:
    """n different G2P prompts (ids (T, 1))."""
    texts = ["hello world", "the quick brown fox", "fast text to speech", "a b c d e f g", "numbers 1 2 3",
             "punctuation, too!", "seventh prompt here", "and the eighth one"]
    return [torch.tensor(adapter.prompt_ids(texts[i % len(texts)] + " " * (i // len(texts))))[:, None]
            for i in range(n)]


async def torch_greedy(folder: Path, n_prompts: int = 3, tokens: int = GREEDY_TOKENS) -> list[list[int]]:
    """Greedy ids of the torch backend (float32) for the first `n_prompts` prompts."""
    from fast_tts.models.megatts3.g2p import G2P

    adapter = G2P.from_folder(folder)
    backend = create_backend("torch", adapter, max_batch=4, max_seq=512, dtype="float32")
    try:
        streams = [backend.submit(p, SamplingParams(temperature=0.0, max_new_tokens=tokens))
                   for p in prompts(adapter, n_prompts)]
        return [r.token_ids[:, 0].tolist() for r in await asyncio.gather(*(s.collect() for s in streams))]
    finally:
        await backend.shutdown()


def logit_gap(adapter, prompt: torch.Tensor, generated: list[int], a: int, b: int) -> float:
    """|logit(a) - logit(b)| of the float32 torch model after `prompt` + `generated` (teacher forced)."""
    ids = prompt[:, 0].tolist() + generated
    with torch.no_grad():
        hidden = adapter.transformer(adapter.embed(torch.tensor([ids])[..., None]), torch.arange(len(ids))[None])
        logits = adapter.logits(hidden[:, -1])[0, 0]
    return abs(float(logits[a] - logits[b]))


async def check_greedy_matches_torch(backend, adapter, reference: list[list[int]], tie: float,
                                     lengths: list[int] | None = None) -> None:
    """Greedy ids equal the torch backend's, and are diverse (no collapse onto a few ids).

    `lengths`: tokens asked of each prompt (default: all of its reference), so that requests end at other times.

    The engines compute in other precisions (f16 weights, other summation orders), so where torch's own top two
    logits are closer than `tie` the other engine may legitimately pick the other one: a prompt may part from
    torch's ids only at such a near-tie, and at least two prompts must agree for 48 tokens or more.
    """
    ps = prompts(adapter, len(reference))
    lengths = lengths or [len(ref) for ref in reference]
    streams = [backend.submit(p, SamplingParams(temperature=0.0, max_new_tokens=n)) for p, n in zip(ps, lengths)]
    got = [r.token_ids[:, 0].tolist() for r in await asyncio.gather(*(s.collect() for s in streams))]
    agreed = []
    for p, n, ours, ref in zip(ps, lengths, got, reference):
        assert len(set(ref)) >= len(ref) // 2, "the reference collapsed onto few ids: the check would be weak"
        assert len(ours) == n
        ref = ref[:n]
        first = next((i for i, (a, b) in enumerate(zip(ours, ref)) if a != b), len(ref))
        agreed.append(first)
        if first < len(ref):
            gap = logit_gap(adapter, p, ref[:first], ours[first], ref[first])
            assert gap < tie, f"greedy ids part from torch's at step {first} where torch's logits differ by {gap}"
    assert sum(n >= 48 for n in agreed) >= 2, agreed


async def check_seeded_sampling(backend, adapter) -> None:
    """A seed repeats its tokens, alone or among other requests; another seed gives other tokens."""
    p = prompts(adapter, 2)
    params = SamplingParams(temperature=0.9, top_k=50, top_p=0.95, repetition_penalty=1.1, seed=11,
                            max_new_tokens=32)
    alone = (await backend.submit(p[0], params).collect()).token_ids
    crowd = [backend.submit(p[1], SamplingParams(temperature=1.2, seed=i, max_new_tokens=20 + i)) for i in range(3)]
    again = backend.submit(p[0], params)
    other = backend.submit(p[0], SamplingParams(temperature=0.9, top_k=50, top_p=0.95, repetition_penalty=1.1,
                                                seed=12, max_new_tokens=32))
    results = await asyncio.gather(again.collect(), other.collect(), *(s.collect() for s in crowd))
    assert torch.equal(results[0].token_ids, alone)
    assert not torch.equal(results[1].token_ids, alone)
    assert len(set(alone[:, 0].tolist())) > 8  # it really sampled


async def check_concurrent(backend, adapter, n: int = 8) -> None:
    """n requests at once, with their own lengths and settings, all finish with their lengths."""
    lengths = [10 + 5 * i for i in range(n)]
    streams = [backend.submit(p, SamplingParams(temperature=0.7 if i % 2 else 0.0, seed=i, max_new_tokens=m))
               for i, (p, m) in enumerate(zip(prompts(adapter, n), lengths))]
    results = await asyncio.wait_for(asyncio.gather(*(s.collect() for s in streams)), 300)
    assert [r.token_ids.shape[0] for r in results] == lengths
    assert all(r.finish_reason == "length" for r in results)
    assert backend.stats()["active"] == 0


async def check_cancel_frees(make_backend, adapter) -> None:
    """With one slot, cancelling the running request lets the queued one run; a waiting one cancels at once."""
    backend = make_backend(max_batch=1, max_seq=512)
    p = prompts(adapter, 2)
    first = backend.submit(p[0], SamplingParams(temperature=0.0, max_new_tokens=400))
    await first.__anext__()
    second = backend.submit(p[1], SamplingParams(temperature=0.0, max_new_tokens=5))
    third = backend.submit(p[1], SamplingParams(temperature=0.0, max_new_tokens=5))
    await asyncio.sleep(0.05)
    assert backend.stats()["queue_depth"] == 2 and backend.stats()["active"] == 1
    await third.cancel()
    assert third.finish_reason == "cancelled"
    await first.cancel()
    assert first.finish_reason == "cancelled"
    result = await asyncio.wait_for(second.collect(), 60)
    assert result.token_ids.shape == (5, 1)
    assert 1 + len([s async for s in first]) < 400
    assert backend.stats() == {"active": 0, "queue_depth": 0, "capacity": 1}


async def check_limits_and_stops(backend, adapter, reference: list[int]) -> None:
    """max_new_tokens, the max_seq cap, stop ids (cut before the stop, not returned) and min_new_tokens."""
    p = prompts(adapter, 1)[0]
    k, stop = next((k, t) for k, t in enumerate(reference) if k > 2 and t not in reference[:k])
    cut = await backend.submit(p, SamplingParams(temperature=0.0, max_new_tokens=40, stop_token_ids=[stop])).collect()
    assert cut.finish_reason == "stop" and cut.token_ids[:, 0].tolist() == reference[:k]
    longer = await backend.submit(p, SamplingParams(temperature=0.0, max_new_tokens=k + 3, stop_token_ids=[stop],
                                                    min_new_tokens=k + 2)).collect()
    assert longer.token_ids.shape[0] >= k + 2 and stop not in longer.token_ids[: k + 2, 0].tolist()
    empty = await backend.submit(p, SamplingParams(max_new_tokens=0)).collect()
    assert empty.token_ids.shape == (0, 1) and empty.finish_reason == "length"
    room = backend.max_seq - p.shape[0]
    capped = await backend.submit(p, SamplingParams(temperature=0.0, max_new_tokens=backend.max_seq)).collect()
    assert capped.token_ids.shape[0] == room and capped.finish_reason == "length"


async def loop_lags(make_streams, seconds: float = 1.0) -> list[float]:
    """How late each 5 ms sleep of the event loop woke (one entry per tick) while rounds of `make_streams()` were
    collected, until the engine had worked for `seconds`: a backend that finishes a round within a few ticks is
    still watched long enough to tell whether its compute holds the loop."""
    lags: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        gathered = asyncio.gather(*(s.collect() for s in make_streams()))
        while not gathered.done():
            t0 = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append(time.perf_counter() - t0 - 0.005)
        await gathered
    return lags


def megatts3_reference(folder: Path) -> tuple[bytes, str]:
    """A fixed reference for cloning: 1.2 s of a noisy 220 Hz tone as WAV bytes, and a random latent .npy path."""
    import io

    import numpy as np
    import soundfile as sf

    sr = 24000
    t = np.arange(int(1.2 * sr)) / sr
    wav = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * np.random.default_rng(0).standard_normal(t.size)
    buf = io.BytesIO()
    sf.write(buf, wav.astype(np.float32), sr, format="WAV", subtype="PCM_16")
    latent = folder / "ref.npy"
    np.save(latent, np.random.default_rng(1).standard_normal((1, 50, 32)).astype(np.float32))
    return buf.getvalue(), str(latent)


async def check_event_loop_free(backend, adapter) -> None:
    """The event loop keeps ticking while the engine works (compute runs on the worker thread)."""
    lags = await loop_lags(lambda: [backend.submit(p, SamplingParams(temperature=0.0, max_new_tokens=60))
                                    for p in prompts(adapter, 4)])
    assert len(lags) > 20, len(lags)
    assert max(lags) < 0.5, max(lags)  # generous: the machine is shared; a blocked loop would stall for seconds


async def check_megatts3_same_audio(backend: str, root: Path, tmp_path: Path, **backend_options) -> None:
    """The MegaTTS3 engine gives the same audio with `backend` as with torch, its G2P decoding greedily."""
    import numpy as np

    from fast_tts.engine.megatts3 import AsyncMega3Engine

    reference = megatts3_reference(tmp_path)
    params = {"time_step": 1, "dur_alpha": 0.1, "seed": 7, "temperature": 0.0}
    text = "Hello there. A second sentence follows."
    audio = {}
    for name, options in (("torch", {}), (backend, backend_options)):
        engine = AsyncMega3Engine(root, backend=name, backend_options=options or None, max_concurrency=2)
        try:
            audio[name] = await engine.clone_voice_async(text, reference, **params)
        finally:
            await engine.shutdown()
    assert audio["torch"].size > 0
    assert np.array_equal(audio[backend], audio["torch"])
