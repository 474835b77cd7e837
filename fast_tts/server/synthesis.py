"""Run one synthesis for an HTTP request: take a slot, call the engine, encode, and free everything on any exit.

Streaming: the first chunk is awaited before the response starts, so engine errors (unknown voice, bad parameter)
still become a proper 4xx; after that the body streams. When the client goes away, Starlette cancels the body
iterator; `_ManagedStream` then closes the engine iterator (which cancels the generation) and releases the slot.
Before the response starts, disconnects are watched explicitly (`_race_disconnect`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
import soxr
from fastapi import Request, Response
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from fast_tts.audio import MEDIA_TYPES, StreamEncoder, encode, resample
from fast_tts.errors import FastTTSError
from fast_tts.server.problems import ApiError, from_engine_error
from fast_tts.server.state import ServerState

log = logging.getLogger("fast_tts.server")

_CHEAP_FORMATS = ("wav", "pcm")  # encoded inline; the others go to a thread so the event loop stays free


class ClientGone(ApiError):
    """The client disconnected before the response started (nginx's 499; nobody reads it)."""

    def __init__(self) -> None:
        super().__init__(499, "client closed request", None, "client_closed")


async def _until_disconnect(request: Request) -> None:
    """Return when the client disconnects (the request body has already been read by then)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _race_disconnect(
    state: ServerState, request: Request, awaitable: Awaitable[Any], on_orphan: Callable[[Any], None] | None = None
) -> Any:
    """Await `awaitable` unless the client leaves first; then cancel it and raise ClientGone."""
    task = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(_until_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(BaseException):
        result = await task
        if on_orphan is not None:  # it finished just as we gave up: undo what it took
            on_orphan(result)
    state.metrics.cancelled.inc()
    raise ClientGone()


async def _aclose(iterator: Any) -> None:
    """Close an async iterator if it can be closed; errors while closing are logged, never raised."""
    close = getattr(iterator, "aclose", None)
    if close is None:
        return
    try:
        await close()
    except Exception:
        log.exception("error while closing an audio iterator")


async def _encode_chunk(encoder: Any, fmt: str, chunk: np.ndarray) -> bytes:
    """Feed one chunk to the stream encoder, off the event loop for the costly codecs."""
    if fmt in _CHEAP_FORMATS:
        return encoder.write(chunk)
    return await asyncio.to_thread(encoder.write, chunk)


def _sse(event: dict[str, Any]) -> bytes:
    """One server-sent event as OpenAI sends them for speech (data-only lines)."""
    return f"data: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


def _delta(data: bytes) -> bytes:
    """A speech.audio.delta event carrying encoded audio bytes."""
    return _sse({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})


class _ManagedStream(StreamingResponse):
    """A StreamingResponse whose cleanup runs on every exit: done, client gone, error, or never started."""

    def __init__(self, content: AsyncIterator[bytes], cleanup: Callable[[], Awaitable[None]], **kw: Any) -> None:
        super().__init__(content, **kw)
        self._cleanup = cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._cleanup()


def _audio_headers(sample_rate: int) -> dict[str, str]:
    """Headers of every audio answer: the rate (pcm has no header of its own) and no buffering by proxies."""
    return {"X-Sample-Rate": str(sample_rate), "Cache-Control": "no-store", "X-Accel-Buffering": "no"}


async def stream_audio(
    state: ServerState,
    request: Request,
    open_stream: Callable[[], AsyncIterator[np.ndarray]],
    fmt: str,
    route: str,
    sse: bool = False,
    text_chars: int = 0,
    out_rate: int | None = None,
) -> Response:
    """Answer with audio streamed as the engine produces it (raw bytes of one file, or OpenAI SSE events).

    `out_rate` resamples on the way (OpenAI's pcm is 24 kHz whatever the model makes), keeping state across chunks.
    """
    started = time.perf_counter()
    sample_rate = int(state.engine.sample_rate)
    rate = out_rate or sample_rate
    slot = await _race_disconnect(state, request, state.gate.acquire(), on_orphan=lambda s: s.release())
    iterator: Any = None
    try:
        iterator = open_stream()
        first = await _race_disconnect(state, request, anext(iterator, None))
    except BaseException as exc:
        slot.release()
        if iterator is not None:
            await _aclose(iterator)
        if isinstance(exc, FastTTSError):
            raise from_engine_error(exc) from exc
        raise
    first_at = time.perf_counter()
    state.metrics.ttfa.labels(route, "true").observe(first_at - started)
    lead_s = state.config.stream_lead_s
    finished = False

    async def body() -> AsyncIterator[bytes]:
        nonlocal finished
        encoder = StreamEncoder(fmt, rate)
        resampler = soxr.ResampleStream(sample_rate, rate, 1, dtype="int16") if rate != sample_rate else None
        samples = 0
        chunk = first
        try:
            while chunk is not None:
                samples += int(chunk.shape[0])
                if resampler is not None:
                    chunk = resampler.resample_chunk(chunk)
                # the first chunk can be seconds long: encode and send its first quarter second on its own, so the
                # costly codecs (mp3, opus) put audio on the wire after ~5 ms of encoding instead of ~60
                pieces = (chunk[: rate // 4], chunk[rate // 4:]) if samples == len(first) else (chunk,)
                for piece in pieces:
                    data = await _encode_chunk(encoder, fmt, piece)
                    if data:
                        yield _delta(data) if sse else data
                if lead_s > 0:  # pacing: no more than lead_s of audio ahead of real time, so the CPU goes elsewhere
                    ahead = samples / sample_rate - (time.perf_counter() - first_at)
                    if ahead > lead_s:
                        await asyncio.sleep(ahead - lead_s)
                chunk = await anext(iterator, None)
            if resampler is not None:
                data = await _encode_chunk(encoder, fmt, resampler.resample_chunk(np.zeros(0, np.int16), last=True))
                if data:
                    yield _delta(data) if sse else data
            tail = await _encode_chunk_close(encoder, fmt)
            if tail:
                yield _delta(tail) if sse else tail
            if sse:
                usage = {"input_tokens": text_chars, "output_tokens": 0, "total_tokens": text_chars}
                yield _sse({"type": "speech.audio.done", "usage": usage})
            finished = True
            _observe_rtf(state, route, "true", started, samples, sample_rate)
        except FastTTSError as exc:  # headers are gone already: end the stream, say why in SSE
            log.warning("stream ended early: %s", exc)
            if sse:
                yield _sse({"type": "error", "error": {"message": str(exc), "type": "invalid_request_error"}})

    stream = body()

    async def cleanup() -> None:
        try:  # close the engine stream first, so the next admitted request finds the engine's slot free
            await _aclose(stream)
            await _aclose(iterator)
        finally:
            slot.release()
            if not finished:
                state.metrics.cancelled.inc()

    media_type = "text/event-stream" if sse else MEDIA_TYPES[fmt]
    return _ManagedStream(stream, cleanup, media_type=media_type, headers=_audio_headers(rate))


async def _encode_chunk_close(encoder: Any, fmt: str) -> bytes:
    """Flush the stream encoder."""
    if fmt in _CHEAP_FORMATS:
        return encoder.close()
    return await asyncio.to_thread(encoder.close)


def _observe_rtf(state: ServerState, route: str, stream: str, started: float, samples: int, sr: int) -> None:
    """Record the audio made and the real-time factor of one finished request."""
    seconds = samples / sr if sr else 0.0
    state.metrics.audio_seconds.inc(seconds)
    if seconds > 0:
        state.metrics.rtf.labels(route, stream).observe((time.perf_counter() - started) / seconds)


async def whole_audio(
    state: ServerState,
    request: Request,
    synthesize: Callable[[], Awaitable[np.ndarray]],
    fmt: str,
    route: str,
    out_rate: int | None = None,
) -> Response:
    """Answer with one complete file (Content-Length set); the generation is cancelled if the client leaves."""
    started = time.perf_counter()
    sample_rate = int(state.engine.sample_rate)
    rate = out_rate or sample_rate
    slot = await _race_disconnect(state, request, state.gate.acquire(), on_orphan=lambda s: s.release())
    try:
        audio = await _race_disconnect(state, request, synthesize())
        data = await asyncio.to_thread(_encode_whole, audio, sample_rate, rate, fmt)
    except FastTTSError as exc:
        raise from_engine_error(exc) from exc
    finally:
        slot.release()
    state.metrics.ttfa.labels(route, "false").observe(time.perf_counter() - started)
    _observe_rtf(state, route, "false", started, int(np.asarray(audio).shape[0]), sample_rate)
    return Response(data, media_type=MEDIA_TYPES[fmt], headers=_audio_headers(rate))


def _encode_whole(audio: np.ndarray, sample_rate: int, rate: int, fmt: str) -> bytes:
    """Resample if asked, then encode one file."""
    if rate != sample_rate:
        audio = resample(audio, sample_rate, rate)
    return encode(audio, rate, fmt)
