"""AsyncEngine: the request lifecycle shared by every model family.

A family implements a few blocking hooks (which voices exist, how text becomes segments, how one segment becomes
audio chunks); the base class owns everything around them: validation, normalization and splitting, a bounded number
of concurrent requests, a worker thread pool so the event loop never waits on compute, streaming with a one-chunk
look-ahead, crossfade joins, cancellation at chunk boundaries, persistent speakers and shutdown.

A new family subclasses AsyncEngine, sets `family`, `sample_rate`, `default_voice` (and `can_clone`, `crossfade_s`,
`family_params` when needed), loads its model in `__init__` before calling `super().__init__(**kw)`, and implements:
  _builtin_voices() / _builtin_voice(name)     the voices the model ships with
  _synthesize(segment, voice, params)          blocking generator of float32 chunks for one segment
  _prepare(...)                                optional: the default normalizes and splits with fast_tts.text
  _make_speaker / _speaker_voice               optional: custom speakers (stored by SpeakerStore)
  _clone_voice(reference_audio, reference_text) optional: one-off voices for clone_voice_async
  _check_params(params) / _close()             optional: family parameter checks, releasing the model
Then add one line to ENGINES in fast_tts/engine/auto.py.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fast_tts.errors import (
    EngineClosedError,
    InvalidInputError,
    UnknownVoiceError,
    UnsupportedOperationError,
)
from fast_tts.speakers import SpeakerStore, validate_name

ProgressFn = Callable[[int, int], None]

# Request parameters every family accepts, with their defaults (None: the engine's own default).
BASE_PARAMS: dict[str, Any] = {
    "speed": 1.0,
    "seed": None,
    "deterministic": None,
    "length_threshold": None,
    "window_size": None,
    "normalize": True,
}


@dataclass
class Voice:
    """A resolved voice: its name, family-specific data (model key, speaker embedding...) and parameter presets."""

    name: str
    data: Any = None
    defaults: dict[str, Any] = field(default_factory=dict)


class _WorkerPool:
    """Worker threads that take the most urgent job first (lowest priority value, then first come).

    The engine gives a request's step the number of chunks that request has already produced as its priority, so
    a newly admitted request's first chunk overtakes the look-ahead steps of requests that are already playing.
    """

    def __init__(self, workers: int, name: str) -> None:
        self._jobs: queue.PriorityQueue[tuple[float, int, Any]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(workers)]
        self._start = threading.Lock()
        self._started = False

    def submit(self, priority: float, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Queue `fn(*args)` (threads start on first use); RuntimeError once the pool is shut down."""
        with self._start:
            if self._closed:
                raise RuntimeError("worker pool is shut down")
            if not self._started:
                self._started = True
                for thread in self._threads:
                    thread.start()
            future: Future[Any] = Future()
            self._jobs.put((priority, next(self._order), (future, fn, args)))  # under the lock: before any stop mark
        return future

    def _work(self) -> None:
        while True:
            _, _, job = self._jobs.get()
            if job is None:
                return
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while queued: skip it
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - delivered to the request; the worker lives on
                future.set_exception(exc)

    def shutdown(self) -> None:
        """Run what is queued, then stop the threads."""
        with self._start:
            self._closed = True
            started = self._threads if self._started else []
            for _ in started:
                self._jobs.put((float("inf"), next(self._order), None))
        for thread in started:
            thread.join()


class AsyncEngine(ABC):
    """Async text-to-speech engine; subclasses implement the `_hook` methods for one model family."""

    family: str = "base"
    can_clone: bool = False
    sample_rate: int = 24000
    default_voice: str = ""
    crossfade_s: float = 0.0  # overlap between consecutive chunks; 0 joins them as they are
    speed_range: tuple[float, float] = (0.25, 4.0)
    family_params: dict[str, Any] = {}  # extra request parameters of the family, with defaults

    def __init__(
        self,
        *,
        max_concurrency: int = 4,
        workers: int | None = None,
        max_text_chars: int = 20_000,
        length_threshold: int = 50,
        window_size: int = 50,
        deterministic: bool = False,
        speakers_dir: str | Path | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise InvalidInputError("max_concurrency must be at least 1", field="max_concurrency")
        self.capacity = max_concurrency
        self.max_text_chars = max_text_chars
        self.length_threshold = length_threshold
        self.window_size = window_size
        self.deterministic = deterministic
        # Requests admitted (slots) and compute threads (workers) are separate: admitted requests interleave their
        # chunk steps on the workers, so each one's first chunk comes early even when slots outnumber cores.
        self.workers = workers or min(max_concurrency, os.cpu_count() or 1)
        self._pool = _WorkerPool(self.workers, f"tts-{self.family}")
        self._slots: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None
        self._waiting = 0
        self._active = 0
        self._completed = 0
        self._failed = 0
        self._cancelled = 0
        self._closed = False
        self._speakers: dict[str, Voice] = {}
        self._speaker_stamps: dict[str, Any] = {}  # store stamp of each cached speaker when it was loaded or saved
        self._speaker_edits: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self.store = SpeakerStore(speakers_dir) if speakers_dir is not None else None

    # ----- family hooks -------------------------------------------------------------------------------------------

    @abstractmethod
    def _builtin_voices(self) -> list[str]:
        """Names of the voices that ship with the loaded model."""

    @abstractmethod
    def _builtin_voice(self, name: str) -> Voice:
        """Resolve a built-in voice name; raise UnknownVoiceError if there is none."""

    def _synthesize(self, segment: Any, voice: Voice, params: dict[str, Any]) -> Iterator[np.ndarray]:
        """Yield float32 audio chunks at `sample_rate` for one segment (blocking; runs on a worker thread).

        Every family implements either this (the default `_produce` drives it on worker threads) or `_produce`.
        """
        raise NotImplementedError(f"the {self.family} engine implements neither _synthesize nor _produce")

    def _prepare(self, text: str, voice: Voice, params: dict[str, Any]) -> list[Any]:
        """Turn validated text into segments: normalize (wetext) and split (reference-004 threshold/window)."""
        from fast_tts.text import normalize, split_text

        if params["normalize"]:
            text = normalize(text)
        return split_text(text, length_threshold=params["length_threshold"], window_size=params["window_size"])

    def _check_params(self, params: dict[str, Any]) -> None:
        """Validate family parameters (raise InvalidInputError naming the field)."""

    def _make_speaker(
        self, name: str, audio: Any, reference_text: str | None, options: dict[str, Any]
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Build the arrays and meta that define a new speaker (blocking); families that cannot clone say so."""
        raise UnsupportedOperationError(f"the {self.family} engine cannot create speakers")

    def _speaker_voice(self, name: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Voice:
        """Turn a stored speaker back into a Voice."""
        raise UnsupportedOperationError(f"the {self.family} engine has no custom speakers")

    def _clone_voice(self, reference_audio: Any, reference_text: str | None) -> Voice:
        """Build a one-off Voice from reference audio (blocking); only families with `can_clone`."""
        raise UnsupportedOperationError(f"the {self.family} engine cannot clone voices")

    def _close(self) -> None:
        """Release model resources after the workers have stopped."""

    # ----- validation and voices ----------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosedError(f"the {self.family} engine has been shut down")

    def _check_text(self, text: Any) -> str:
        if not isinstance(text, str) or not text.strip():
            raise InvalidInputError("input text is empty", field="input")
        if len(text) > self.max_text_chars:
            raise InvalidInputError(
                f"input text has {len(text)} characters; the limit is {self.max_text_chars}", field="input"
            )
        return text

    def _params(self, voice: Voice, given: dict[str, Any]) -> dict[str, Any]:
        """Merge defaults < voice presets < request values and validate them."""
        allowed = {**BASE_PARAMS, **self.family_params}
        for key in given:
            if key not in allowed:
                raise InvalidInputError(f"unknown parameter {key!r} for the {self.family} engine", field=key)
        params = {**allowed, **voice.defaults, **{k: v for k, v in given.items() if v is not None}}
        low, high = self.speed_range
        speed = params["speed"]
        if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not low <= speed <= high:
            raise InvalidInputError(f"speed must be a number from {low} to {high}", field="speed")
        if params["seed"] is not None and (isinstance(params["seed"], bool) or not isinstance(params["seed"], int)):
            raise InvalidInputError("seed must be an integer", field="seed")
        if params["deterministic"] is None:
            params["deterministic"] = self.deterministic or params["seed"] is not None
        for key, default in (("length_threshold", self.length_threshold), ("window_size", self.window_size)):
            value = params[key] if params[key] is not None else default
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{key} must be a positive integer", field=key)
            params[key] = value
        self._check_params(params)
        return params

    async def _voice(self, name: str | None) -> Voice:
        """Resolve `name` (default voice when None) among built-in voices and stored speakers."""
        if name is None or name == "":
            name = self.default_voice
        if not isinstance(name, str):
            raise InvalidInputError("voice name must be a string", field="voice")
        cached = self._cached_speaker(name)
        if cached is not None:
            return cached
        if name in self._builtin_voices():
            return self._builtin_voice(name)
        if self.store is not None:
            async with self._speaker_lock():  # not interleaved with an add or delete of the same speaker
                cached = self._cached_speaker(name)
                if cached is not None:
                    return cached
                try:
                    validate_name(name)
                    stamp = self.store.stamp(name)  # taken before the load: a change during it reloads on next use
                    arrays, meta = await self._run(self.store.load, name)
                except (KeyError, InvalidInputError):
                    pass
                else:
                    voice = self._speaker_voice(name, arrays, meta)
                    self._speakers[name] = voice
                    self._speaker_stamps[name] = stamp
                    return voice
        raise UnknownVoiceError(name, self.list_speakers())

    def _cached_speaker(self, name: str) -> Voice | None:
        """The in-memory speaker `name`, unless the store changed it since (other processes, such as the other
        replicas of a server, may share the store): a stale entry is dropped, so the caller loads the store's."""
        voice = self._speakers.get(name)
        if voice is None or self.store is None:
            return voice
        if self.store.stamp(name) == self._speaker_stamps.get(name):
            return voice
        self._speakers.pop(name, None)
        self._speaker_stamps.pop(name, None)
        return None

    def _speaker_lock(self) -> asyncio.Lock:
        """The lock that orders speaker adds, deletes and store loads (one per event loop, like the slots)."""
        loop = asyncio.get_running_loop()
        if self._speaker_edits is None or self._speaker_edits[0] is not loop:
            self._speaker_edits = (loop, asyncio.Lock())
        return self._speaker_edits[1]

    def list_speakers(self) -> list[str]:
        """Built-in voices first, then custom speakers (the store's when the engine has one, else those added here)."""
        self._check_open()
        custom = set(self.store.names()) if self.store is not None else set(self._speakers)  # the store is the truth
        builtin = self._builtin_voices()
        return builtin + sorted(custom - set(builtin))

    # ----- request lifecycle --------------------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., Any], *args: Any, priority: float = 0) -> Any:
        """Run blocking `fn` on the engine's worker pool (lower `priority` runs first)."""
        self._check_open()
        try:
            future = self._pool.submit(priority, fn, *args)
        except RuntimeError as exc:  # pool already shut down
            raise EngineClosedError(f"the {self.family} engine has been shut down") from exc
        return await asyncio.wrap_future(future)

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots[0] is not loop:
            self._slots = (loop, asyncio.Semaphore(self.capacity))
        return self._slots[1]

    def _pipeline(self, text: str, voice: Voice, params: dict[str, Any]) -> Iterator[tuple[np.ndarray, int, int]]:
        """Blocking generator of (int16 chunk, segments done, segment count); runs one step per worker call."""
        from fast_tts.audio import StreamCrossfader, to_int16

        segments = self._prepare(text, voice, params)
        joiner = StreamCrossfader(self.sample_rate, self.crossfade_s) if self.crossfade_s > 0 else None
        produced = 0
        for index, segment in enumerate(segments):
            for chunk in self._synthesize(segment, voice, params):
                out = np.asarray(chunk, dtype=np.float32).reshape(-1)
                out = joiner.push(out) if joiner is not None else out
                if out.size:
                    produced += out.size
                    yield to_int16(out), index, len(segments)
            yield np.zeros(0, dtype=np.int16), index + 1, len(segments)
        tail = joiner.flush() if joiner is not None else np.zeros(0, dtype=np.float32)
        if tail.size:
            produced += tail.size
            yield to_int16(tail), len(segments), len(segments)
        if produced == 0:
            raise InvalidInputError("input text has nothing that can be spoken", field="input")

    async def _stream(
        self,
        text: Any,
        voice: Voice | str | None,
        params: dict[str, Any],
        progress: ProgressFn | None,
        streamed: bool = True,
    ) -> AsyncIterator[np.ndarray]:
        """Validate, wait for a slot, then stream the pipeline's chunks; always frees the slot on exit.

        `streamed` tells the family whether a caller is waiting on the first chunk (families may trade exactness
        for latency there, e.g. MegaTTS3 sets a segment's level from its first second); it is `params["_streamed"]`.
        """
        self._check_open()
        text = self._check_text(text)
        if not isinstance(voice, Voice):
            voice = await self._voice(voice)
        params = {**self._params(voice, params), "_streamed": streamed}
        slots = self._semaphore()
        self._waiting += 1
        try:
            await slots.acquire()
        finally:
            self._waiting -= 1
        self._active += 1
        outcome = "_cancelled"
        produced = self._produce(text, voice, params)
        try:
            self._check_open()
            async for chunk, done, total in produced:
                if progress is not None:
                    progress(done, total)
                if chunk.size:
                    yield chunk
            outcome = "_completed"
        except (Exception, asyncio.CancelledError) as exc:
            outcome = "_cancelled" if isinstance(exc, asyncio.CancelledError) else "_failed"
            raise
        finally:
            try:
                await produced.aclose()  # stops the family's work for this request
            finally:
                self._active -= 1
                setattr(self, outcome, getattr(self, outcome) + 1)
                slots.release()

    async def _produce(
        self, text: str, voice: Voice, params: dict[str, Any]
    ) -> AsyncIterator[tuple[np.ndarray, int, int]]:
        """(int16 chunk, segments done, segment count) as made: the blocking pipeline, one step per worker call.

        Families whose compute is already asynchronous (an LM backend with continuous batching) override this.
        """
        pending: asyncio.Future[Any] | None = None
        try:
            steps = self._pipeline(text, voice, params)
            made = 0
            pending = asyncio.ensure_future(self._run(next, steps, None, priority=made))
            while True:
                item = await pending
                if item is None:
                    break
                made += 1
                pending = asyncio.ensure_future(self._run(next, steps, None, priority=made))  # look ahead one chunk
                yield item
        finally:
            if pending is not None and not pending.done():
                pending.cancel()  # the worker finishes at most one chunk more, then drops it
            elif pending is not None and not pending.cancelled():
                pending.exception()  # a look-ahead step that failed after the consumer left: mark it seen

    # ----- public API ---------------------------------------------------------------------------------------------

    async def speak_async(
        self, text: str, name: str | None = None, *, progress: ProgressFn | None = None, **params: Any
    ) -> np.ndarray:
        """Synthesize `text` with voice `name`; returns mono int16 audio at `sample_rate`."""
        chunks = [chunk async for chunk in self._stream(text, name, params, progress, streamed=False)]
        return np.concatenate(chunks)

    def speak_stream_async(
        self, text: str, name: str | None = None, *, progress: ProgressFn | None = None, **params: Any
    ) -> AsyncIterator[np.ndarray]:
        """Async iterator of int16 chunks as they are made (the first after the first sentence); aclose() cancels."""
        return self._stream(text, name, params, progress)

    def _cannot_clone(self) -> UnsupportedOperationError:
        return UnsupportedOperationError(
            f"the {self.family} engine cannot clone voices from reference audio; "
            f"use one of its voices ({', '.join(self._builtin_voices()[:8])}) or a cloning model (MegaTTS3, ChatTTS)"
        )

    async def clone_voice_async(
        self, text: str, reference_audio: Any, reference_text: str | None = None, **params: Any
    ) -> np.ndarray:
        """Speak `text` in the voice of `reference_audio` (families with `can_clone`)."""
        stream = self._clone_stream(text, reference_audio, reference_text, params, streamed=False)
        return np.concatenate([chunk async for chunk in stream])

    def clone_voice_stream_async(
        self, text: str, reference_audio: Any, reference_text: str | None = None, **params: Any
    ) -> AsyncIterator[np.ndarray]:
        """Streaming form of clone_voice_async."""
        return self._clone_stream(text, reference_audio, reference_text, params, streamed=True)

    async def _clone_stream(
        self, text: str, reference_audio: Any, reference_text: str | None, params: dict[str, Any], streamed: bool
    ) -> AsyncIterator[np.ndarray]:
        self._check_open()
        if not self.can_clone:
            raise self._cannot_clone()
        self._check_text(text)
        voice = await self._run(self._clone_voice, reference_audio, reference_text)
        stream = self._stream(text, voice, params, None, streamed)
        try:
            async for chunk in stream:
                yield chunk
        finally:
            await stream.aclose()

    async def add_speaker(
        self, name: str, audio: Any = None, reference_text: str | None = None, **options: Any
    ) -> None:
        """Create (or replace) custom speaker `name`; persisted in the speaker store when the engine has one."""
        self._check_open()
        validate_name(name)
        if name in self._builtin_voices():
            raise InvalidInputError(f"{name!r} is a built-in voice; choose another name", field="name")
        arrays, meta = await self._run(self._make_speaker, name, audio, reference_text, options)
        voice = self._speaker_voice(name, arrays, meta)
        async with self._speaker_lock():  # memory and store change together: the last add or delete wins in both
            if self.store is not None:
                await self._run(self.store.save, name, arrays, {**meta, "family": self.family})
                self._speaker_stamps[name] = self.store.stamp(name)
            self._speakers[name] = voice

    async def delete_speaker(self, name: str) -> None:
        """Remove custom speaker `name` (built-in voices cannot be deleted)."""
        self._check_open()
        validate_name(name)
        if name in self._builtin_voices():
            raise InvalidInputError(f"{name!r} is a built-in voice and cannot be deleted", field="name")
        async with self._speaker_lock():
            existed = self._speakers.pop(name, None) is not None
            self._speaker_stamps.pop(name, None)
            if self.store is not None:
                existed = await self._run(self.store.delete, name) or existed
        if not existed:
            raise UnknownVoiceError(name, field="name")

    def write_audio(self, audio: np.ndarray, path: str | Path, fmt: str | None = None) -> None:
        """Write audio made by this engine to `path` (format from `fmt` or the file suffix)."""
        from fast_tts.audio import write_audio

        write_audio(audio, path, self.sample_rate, fmt)

    def stats(self) -> dict[str, Any]:
        """Load counters for health checks and metrics."""
        return {
            "family": self.family,
            "queue_depth": self._waiting,
            "active": self._active,
            "capacity": self.capacity,
            "workers": self.workers,
            "completed": self._completed,
            "failed": self._failed,
            "cancelled": self._cancelled,
            "closed": self._closed,
        }

    async def shutdown(self) -> None:
        """Refuse new requests, let running chunks finish, stop the workers and release the model."""
        if self._closed:
            return
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown)
        self._close()

    async def __aenter__(self) -> AsyncEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()
