"""ChatTTS as stages over LM backends: code generation and refinement on backends (prompts from
`fast_tts.models.chattts.prompt`), batched decoding.

Shared by `AsyncChatTTSEngine` and the `Chat` facade, so both batch across requests: code generation and refinement
run on two backends over the same decoder weights (each with a KV cache of its own), and decodes from concurrent
requests are batched within a short window by one decode worker. `stream_audio` turns a generation's steps into audio
chunks (the windowed decode of `fast_tts.engine.streaming`); it is the one ChatTTS streaming path, run on a worker
thread by the engine and by `Chat`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np
import torch

from fast_tts.backends import create_backend
from fast_tts.backends.base import GenerationStream, StepOutput
from fast_tts.devices import bf16_fast, resolve_dtype
from fast_tts.engine.batcher import DecodeBatcher
from fast_tts.engine.lm import LMCall, RequestContext
from fast_tts.engine.streaming import StreamPlan, stream_windows
from fast_tts.errors import InvalidInputError
from fast_tts.kernels.linear import prepack_linears
from fast_tts.models.chattts.decode import HOP, decode_rows, wav_length
from fast_tts.models.chattts.loader import ChatTTSModels
from fast_tts.models.chattts.prompt import CodeRequest, code_prompt, refine_prompt
from fast_tts.models.chattts.speaker import encode_prompt
from fast_tts.sampling import SamplingParams

SAMPLE_RATE = 24000
FRAME_SAMPLES = 2 * HOP  # audio per generated code frame


class ChatTTSRuntime:
    """Loaded ChatTTS modules behind a code backend, a refine backend and a decode batcher.

    `backend` names the LM backend of both (`fast_tts.backends.BACKENDS`); `backend_options` go to it as well.
    """

    def __init__(
        self,
        models: ChatTTSModels,
        backend: str = "torch",
        dtype: str | torch.dtype = "float32",
        device: str | torch.device = "cpu",
        max_batch: int = 8,
        max_seq: int = 2048 + 512,
        refine_batch: int = 4,
        refine_max_seq: int = 1024,
        decode_batch: int = 8,
        decode_wait_s: float = 0.01,
        compile: bool = False,
        stream_plan: StreamPlan = StreamPlan(),
        backend_options: dict[str, Any] | None = None,
    ) -> None:
        self.models = models
        self.stream_plan = stream_plan
        self.eos_code = models.config.embed.num_audio_tokens - 1
        self.hidden_size = models.config.gpt.hidden_size
        options: dict[str, Any] = {"dtype": dtype, "device": device, "compile": compile, **(backend_options or {})}
        self.code_gen = create_backend(backend, models.code_lm, max_batch=max_batch, max_seq=max_seq, **options)
        self.text_gen = create_backend(backend, models.text_lm, max_batch=refine_batch, max_seq=refine_max_seq,
                                       **options)
        # bf16 generation decodes in bf16 too where the CPU has bf16 kernels (1.7x faster, about 36 dB SNR against
        # float32 decoding); float32 keeps the reference's numbers
        self.decode_bf16 = (resolve_dtype(dtype, device) == torch.bfloat16 and torch.device(device).type == "cpu"
                            and bf16_fast(device))
        if not self.decode_bf16 and torch.device(device).type == "cpu":  # float32 decoding: oneDNN's packed product
            for module in (models.decoder, models.vocos, models.dvae.decoder):
                prepack_linears(module)
        self.decoder = DecodeBatcher(self._decode_batch, max_batch=decode_batch, wait_s=decode_wait_s, name="chattts")
        self._contexts: set[RequestContext] = set()
        self._streams: set[GenerationStream] = set()

    # ----- prompts ---------------------------------------------------------------------------------------------

    def code_call(self, req: CodeRequest) -> LMCall:
        """The code generation of one utterance."""
        return LMCall(self.code_gen, code_prompt(self.models, req), req.sampling)

    def refine_call(self, text: str, sampling: SamplingParams, prompt: str = "") -> LMCall:
        """The refinement of one text (prompt token ids (L, 1) on the refine backend)."""
        return LMCall(self.text_gen, refine_prompt(self.models, text, prompt), sampling)

    def refined_text(self, steps: Iterable[StepOutput]) -> str:
        """The text of a refinement's tokens, keeping ids below `[break_0]` as the reference does."""
        limit = self.models.tokenizer.break_0_id
        return self.models.tokenizer.decode([int(s.token_ids[0]) for s in steps if int(s.token_ids[0]) < limit])

    # ----- decoding --------------------------------------------------------------------------------------------

    def _decode_batch(self, use_decoder: bool, rows: Sequence[torch.Tensor]) -> list[np.ndarray]:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.decode_bf16):
            wavs = decode_rows(self.models, list(rows), use_decoder)
        return [w.float().numpy() for w in wavs]

    def decode_future(self, frames: torch.Tensor, use_decoder: bool) -> Future[np.ndarray]:
        """The float32 wav of one row of frames (hiddens (T, H) with the Decoder, codes (T, 4) with the DVAE), batched
        with the decodes of other requests."""
        if frames.shape[0] == 0:
            done: Future[np.ndarray] = Future()
            done.set_result(np.zeros(0, dtype=np.float32))
            return done
        return self.decoder.submit(bool(use_decoder), frames)

    def decode(self, frames: torch.Tensor, use_decoder: bool) -> np.ndarray:
        """`decode_future`, waited for (blocking: call from a worker thread)."""
        return self.decode_future(frames, use_decoder).result()

    def stream_audio(self, steps: Iterable[StepOutput], use_decoder: bool = True) -> Iterator[np.ndarray]:
        """float32 audio chunks of one utterance as its steps arrive (blocking): windowed decode, seamless joins."""
        frames = ((step.hidden if use_decoder else step.token_ids)[None] for step in steps)
        yield from stream_windows(frames, lambda window: self.decode(window, use_decoder), FRAME_SAMPLES, wav_length,
                                  SAMPLE_RATE, self.stream_plan)

    # ----- the Chat facade's async calls (on its event loop; blocking parts on threads) --------------------------

    def generate_codes(self, reqs: Sequence[CodeRequest]) -> list[GenerationStream]:
        """Start generating code frames for utterances (call from the event loop); `stop_all` reaches them. Every
        prompt is built before the first is submitted, so that the backend admits them together (one prefill, rows
        in step) instead of starting the first alone while the others' prompts are built."""
        prompts = [code_prompt(self.models, req) for req in reqs]
        streams = [self.code_gen.submit(prompt, req.sampling) for prompt, req in zip(prompts, reqs)]
        for stream in streams:
            self._streams.add(stream)
            asyncio.ensure_future(stream.wait_finished()).add_done_callback(
                lambda _f, stream=stream: self._streams.discard(stream))
        return streams

    async def synthesize(self, req: CodeRequest, use_decoder: bool = True) -> tuple[np.ndarray, torch.Tensor]:
        """Generate and decode one utterance; returns (wav, code ids (T, 4))."""
        [stream] = self.generate_codes([req])
        try:
            result = await stream.collect()
        finally:
            await stream.cancel()
        frames = result.hiddens if use_decoder else result.token_ids
        if frames is None:
            frames = torch.zeros(0, self.hidden_size)
        return await asyncio.wrap_future(self.decode_future(frames, use_decoder)), result.token_ids

    @contextlib.asynccontextmanager
    async def _context(self) -> AsyncIterator[RequestContext]:
        """A request context that `stop_all` reaches; closed (its generations cancelled) on exit."""
        ctx = RequestContext(asyncio.get_running_loop())
        self._contexts.add(ctx)
        try:
            yield ctx
        finally:
            self._contexts.discard(ctx)
            await ctx.close()

    async def stop_all(self) -> None:
        """End every running generation of the async calls early: they return what was made so far, as after the
        reference's interrupt."""
        await asyncio.gather(*(s.cancel() for s in list(self._streams)), *(c.stop() for c in list(self._contexts)))

    async def refine(self, texts: Sequence[str], sampling: SamplingParams | Sequence[SamplingParams],
                     prompt: str = "") -> list[str]:
        """Refined texts (all batched); `sampling` is one SamplingParams for every text or one per text."""
        per_text = [sampling] * len(texts) if isinstance(sampling, SamplingParams) else list(sampling)
        if len(per_text) != len(texts):
            raise InvalidInputError(f"{len(per_text)} sampling params for {len(texts)} texts", field="sampling")
        async with self._context() as ctx:
            feeds = [ctx.generate(self.refine_call(t, s, prompt)) for t, s in zip(texts, per_text)]
            return list(await asyncio.gather(*(asyncio.to_thread(self.refined_text, feed) for feed in feeds)))

    async def stream(self, req: CodeRequest, use_decoder: bool = True) -> AsyncIterator[np.ndarray]:
        """`stream_audio` of one utterance, driven from the event loop (its blocking steps run on a thread)."""
        async with self._context() as ctx:
            chunks = self.stream_audio(ctx.generate(self.code_call(req)), use_decoder)
            try:
                while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
                    yield chunk
            finally:
                await ctx.close()  # first: a step waiting on the generation wakes up
                await asyncio.to_thread(chunks.close)

    # ----- speakers --------------------------------------------------------------------------------------------

    def audio_prompt(self, wav: np.ndarray | torch.Tensor) -> str:
        """Audio-prompt string (DVAE codes) of a 1-D 24 kHz wav (blocking)."""
        return encode_prompt(self.models.dvae.sample_audio(wav))

    async def shutdown(self) -> None:
        """Stop the backends and the decode worker."""
        await self.code_gen.shutdown()
        await self.text_gen.shutdown()
        await asyncio.get_running_loop().run_in_executor(None, self.decoder.close)
