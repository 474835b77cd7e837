"""The vLLM side of tests/test_backend_vllm.py: runs in the vLLM side environment (.ci/setup/30-vllm.sh) with the
checkout on PYTHONPATH, holds one `VLLMBackend` at a time, and answers JSON commands, one per line on stdin, with one
JSON line each on the original stdout (vLLM's own output goes to stderr). It reports what the real engine did;
the assertions stay in the test module.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import traceback
from typing import Any

import torch

from fast_tts.backends import GenerationStream, create_backend
from fast_tts.backends.vllm_backend import VLLMBackend, _Request
from fast_tts.models.megatts3.g2p import G2P
from fast_tts.sampling import SamplingParams


class Side:
    def __init__(self) -> None:
        self.backend: VLLMBackend | None = None

    async def op_start(self, folder: str, **options: Any) -> dict:
        await self.op_stop()
        adapter = G2P.from_folder(folder)
        self.backend = await asyncio.to_thread(create_backend, "vllm", adapter, **options)
        return {"vocab_size": self.backend.vocab_size}

    async def op_stop(self) -> dict:
        if self.backend is not None:
            await self.backend.shutdown()
            self.backend = None
        return {}

    async def op_construct(self, folder: str, **options: Any) -> dict:
        """Build a backend that is expected to fail; report the error."""
        try:
            backend = await asyncio.to_thread(create_backend, "vllm", G2P.from_folder(folder), **options)
        except Exception as exc:  # reported to the test
            return {"error": type(exc).__name__, "message": str(exc)}
        await backend.shutdown()
        return {"error": None}

    async def op_restarts(self) -> dict:
        return {"restarts": self.backend.restarts}

    async def op_construct_chattts(self, root: str) -> dict:
        """Build a vLLM backend over ChatTTS's code LM, which it must refuse; report the error."""
        from fast_tts.models.chattts.loader import load_chattts

        try:
            create_backend("vllm", load_chattts(root, device="cpu").code_lm)
        except Exception as exc:  # reported to the test
            return {"error": type(exc).__name__, "message": str(exc)}
        return {"error": None}

    async def op_submit_error(self, prompt: list[list[int]], params: dict) -> dict:
        try:
            self.backend.submit(torch.tensor(prompt), SamplingParams(**params))
        except Exception as exc:  # reported to the test
            return {"error": type(exc).__name__, "message": str(exc), "field": getattr(exc, "field", None)}
        return {"error": None}

    async def op_run(self, requests: list[dict], bad_prompts: list[list[int]] = ()) -> dict:
        """Run requests at once: {prompt, params, cancel_after}; `bad_prompts` go straight to the engine, past the
        backend's checks, to see one failing request next to the others."""
        b = self.backend
        streams = [b.submit(torch.tensor(r["prompt"])[:, None], SamplingParams(**r["params"])) for r in requests]
        bad = []
        for ids in bad_prompts:  # what `submit` does, without its checks
            number = next(b._ids)
            req = _Request(None, f"bad-{number}", {"prompt_token_ids": ids},
                           b._sampling(SamplingParams(temperature=0, max_new_tokens=8), len(ids)), frozenset())
            req.stream = GenerationStream(number, 1, lambda _s, req=req: b._loop.call_soon_threadsafe(b._abort, req))
            b._live[req.request_id] = req
            b._loop.call_soon_threadsafe(b._begin, req)
            bad.append(req.stream)

        async def read(stream, cancel_after):
            ids = []
            try:
                async for step in stream:
                    ids.append(int(step.token_ids[0]))
                    if cancel_after is not None and len(ids) >= cancel_after:
                        await stream.cancel()
                        break
            except Exception as exc:  # reported to the test
                return {"ids": ids, "finish": None, "error": f"{type(exc).__name__}: {exc}"}
            return {"ids": ids, "finish": stream.finish_reason, "error": None}

        gaps = [0.0]

        async def tick():  # how long this event loop ever waits to run a task while the engine works
            loop = asyncio.get_running_loop()
            while True:
                before = loop.time()
                await asyncio.sleep(0.01)
                gaps[0] = max(gaps[0], loop.time() - before - 0.01)

        ticker = asyncio.ensure_future(tick())
        results = await asyncio.gather(*(read(s, r.get("cancel_after")) for s, r in zip(streams, requests)),
                                       *(read(s, None) for s in bad))
        ticker.cancel()
        await asyncio.sleep(0.2)
        engine_unfinished = await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(_unfinished(b), b._loop))
        return {"results": results, "stats": b.stats(), "engine_unfinished": engine_unfinished,
                "max_loop_gap": gaps[0]}

    async def op_megatts3(self, root: str, text: str, params: dict) -> dict:
        from fast_tts.engine.megatts3 import AsyncMega3Engine

        await self.op_stop()
        engine = AsyncMega3Engine(root, backend="vllm", torch_dtype="float32", max_concurrency=1)
        try:
            wav, npy = params.pop("reference")
            audio = await engine.clone_voice_async(text, (base64.b64decode(wav), npy), **params)
        finally:
            await engine.shutdown()
        return {"audio": base64.b64encode(audio.tobytes()).decode(), "dtype": str(audio.dtype)}


async def _unfinished(backend: VLLMBackend) -> int:
    return backend.engine.get_num_unfinished_requests()


async def main() -> None:
    reply = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # vLLM and everything else print to stderr from here on
    side = Side()
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        cmd = json.loads(line)
        try:
            out = {"ok": True, **await getattr(side, "op_" + cmd.pop("op"))(**cmd)}
        except Exception:  # reported to the test
            out = {"ok": False, "traceback": traceback.format_exc()}
        reply.write(json.dumps(out) + "\n")
        reply.flush()
    await side.op_stop()


if __name__ == "__main__":
    asyncio.run(main())
