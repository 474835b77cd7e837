"""ChatTTS as stages over LM backends: prompts, code generation and refinement on backends, batched decoding.

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
from dataclasses import dataclass
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
from fast_tts.models.chattts.decode import HOP, decode_rows, wav_length
from fast_tts.models.chattts.gpt import inject_speaker
from fast_tts.models.chattts.loader import ChatTTSModels
from fast_tts.models.chattts.speaker import decode_prompt, decode_speaker, encode_prompt, normalize_speaker
from fast_tts.models.chattts.tokenizer import decorate_code_prompts, decorate_text_prompts
from fast_tts.sampling import SamplingParams

SAMPLE_RATE = 24000
FRAME_SAMPLES = 2 * HOP  # audio per generated code frame


@dataclass(frozen=True)
class CodeRequest:
    """One utterance for code generation: text (normalized), speaker conditioning and sampling."""

    text: str
    sampling: SamplingParams
    spk_emb: str | None = None  # speaker string (timbre vector)
    spk_smp: str | None = None  # audio-prompt string (codes of a reference recording)
    txt_smp: str | None = None  # transcript of the audio prompt
    prompt: str = "[speed_5]"


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
        self.num_vq = models.config.embed.num_vq
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
        self.decoder = DecodeBatcher(self._decode_batch, max_batch=decode_batch, wait_s=decode_wait_s, name="chattts")
        self._contexts: set[RequestContext] = set()
        self._streams: set[GenerationStream] = set()

    # ----- prompts ---------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def code_prompt(self, req: CodeRequest) -> torch.Tensor:
        """Prompt embeddings (L, H) of one utterance, with the speaker vector injected at `[spk_emb]`."""
        if not req.text.strip():
            raise InvalidInputError("text is empty after normalization", field="input")
        tok = self.models.tokenizer
        codes = decode_prompt(req.spk_smp) if req.spk_smp is not None else None
        if codes is not None and codes.shape[0] != self.num_vq:
            raise InvalidInputError(f"audio prompt has {codes.shape[0]} codebooks, expected {self.num_vq}", "spk_smp")
        decorated = decorate_code_prompts([req.text], req.prompt, req.txt_smp, req.spk_emb)
        ids, _mask, text_mask = tok.encode(decorated, self.num_vq, codes)
        emb = self.models.gpt.embed.prompt_embedding(ids, text_mask)
        if req.spk_emb is not None:
            vector = normalize_speaker(decode_speaker(req.spk_emb, self.hidden_size))
            emb = inject_speaker(emb, ids[..., 0], vector, tok.spk_emb_id)
        return emb[0].float()

    def code_call(self, req: CodeRequest) -> LMCall:
        """The code generation of one utterance."""
        return LMCall(self.code_gen, self.code_prompt(req), req.sampling)

    @torch.inference_mode()
    def refine_call(self, text: str, sampling: SamplingParams, prompt: str = "") -> LMCall:
        """The refinement of one text (prompt token ids (L, 1) on the refine backend)."""
        ids = self.models.tokenizer.ids(decorate_text_prompts([text], prompt)[0])
        return LMCall(self.text_gen, torch.tensor(ids, dtype=torch.long)[:, None], sampling)

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

    def generate_codes(self, req: CodeRequest) -> GenerationStream:
        """Start generating code frames for one utterance (call from the event loop); `stop_all` reaches it."""
        stream = self.code_gen.submit(self.code_prompt(req), req.sampling)
        self._streams.add(stream)
        asyncio.ensure_future(stream.wait_finished()).add_done_callback(lambda _f: self._streams.discard(stream))
        return stream

    async def synthesize(self, req: CodeRequest, use_decoder: bool = True) -> tuple[np.ndarray, torch.Tensor]:
        """Generate and decode one utterance; returns (wav, code ids (T, 4))."""
        stream = self.generate_codes(req)
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

    @torch.inference_mode()
    def audio_prompt(self, wav: np.ndarray | torch.Tensor) -> str:
        """Audio-prompt string (DVAE codes) of a 1-D 24 kHz wav (blocking)."""
        tensor = torch.as_tensor(np.asarray(wav, dtype=np.float32) if not isinstance(wav, torch.Tensor) else wav)
        if tensor.dim() != 1:
            raise InvalidInputError(f"wav must be 1-D (samples), got shape {tuple(tensor.shape)}", field="wav")
        codes = self.models.dvae.encode(tensor.float())
        return encode_prompt(codes[0])

    async def shutdown(self) -> None:
        """Stop the backends and the decode worker."""
        await self.code_gen.shutdown()
        await self.text_gen.shutdown()
        await asyncio.get_running_loop().run_in_executor(None, self.decoder.close)


def code_sampling(
    temperature: float | Sequence[float],
    top_p: float | None,
    top_k: int | None,
    repetition_penalty: float,
    min_new_tokens: int,
    max_new_tokens: int,
    eos: int,
    seed: int | None,
    ensure_non_empty: bool,
    return_hidden: bool,
) -> SamplingParams:
    """SamplingParams with ChatTTS's processing (keep >= 3 tokens, penalty over the last 16 frames, stop on eos).

    `ensure_non_empty` forbids eos at the first step (the reference restarts the generation instead, and crashes
    when a seed is set).
    """
    floor = 1 if ensure_non_empty and max_new_tokens > 0 else 0
    return SamplingParams(
        temperature=list(temperature) if isinstance(temperature, (list, tuple)) else float(temperature),
        top_p=top_p,
        top_k=top_k,
        min_tokens_to_keep=3,
        repetition_penalty=repetition_penalty,
        repetition_window=16,
        min_new_tokens=min(max(min_new_tokens, floor), max_new_tokens),
        max_new_tokens=max_new_tokens,
        stop_token_ids=[eos],
        seed=seed,
        return_hidden=return_hidden,
    )
