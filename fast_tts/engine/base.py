"""AsyncEngine: the request lifecycle and the one streaming path shared by every model family.

The base owns everything around synthesis: validation and typed parameters, segmenting, a bounded number of
concurrent requests, worker threads so the event loop never waits on compute, LM generations started ahead of the
segments that need them, joining (one `fast_tts.audio.Crossfader`), int16 conversion, end-of-segment progress,
cancellation, persistent speakers and shutdown. A family supplies its synthesis of one segment, synchronous on a
worker, and little else:

  _builtin_voices() / _builtin_voice(name)     the voices the model ships with
  _synthesize(job) -> Iterator[float32 chunks]  one segment's audio (`SegmentJob`: segment, voice, params, tokens)
  _prepare(text, voice, params, ctx)           optional: text -> segment texts, or Segments with family data
                                               (default: normalize + split)
  _lm_call(segment, voice, params, ctx)        optional: the LM generation a segment needs (started ahead for it)
  _make_speaker / _speaker_voice / _clone_voice optional: custom and cloned voices (stored by SpeakerStore;
                                             PresetSpeakerEngine makes them presets over a built-in voice)
  _close()                                     optional, async: release the model (and its LM backends) after the
                                               workers stopped

and class attributes: `family`, `sample_rate`, `default_voice`, `params_type` (a SpeechParams dataclass), `can_clone`,
`join` (a `fast_tts.audio.JoinRule`: how segments join and become int16), `lm_ahead` and `waits_on_lm`. Each family
engine spells out its public methods' parameters (help() and IDEs show them) and calls `_speak`, `_speak_stream`,
`_clone` or `_clone_stream` with them. A new family is one engine module plus one line in fast_tts/engine/auto.py.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import enum
import os
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np

from fast_tts.audio import JoinRule
from fast_tts.engine.lm import LMCall, RequestContext, TokenFeed
from fast_tts.engine.params import SpeechParams, resolve
from fast_tts.engine.workers import WorkerPool
from fast_tts.errors import EngineClosedError, InvalidInputError, UnknownVoiceError, UnsupportedOperationError
from fast_tts.speakers import SpeakerStore, validate_name

ProgressFn = Callable[[int, int], None]
D = TypeVar("D")


@dataclass(frozen=True)
class Voice(Generic[D]):
    """A resolved voice: its name, the family's data for it (a model key, a speaker embedding, an aligned reference
    prompt...) and parameter presets."""

    name: str
    data: D
    presets: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Segment:
    """One piece of a request's text, as the family's `_prepare` made it; `index` of `count` (the pipeline numbers
    them). A `_prepare` that needs more than the text returns Segments with its `data` riding along."""

    text: str
    index: int = 0
    count: int = 1
    data: Any = None


@dataclass(frozen=True)
class SegmentJob:
    """Everything a family's `_synthesize` gets for one segment."""

    segment: Segment
    voice: Voice[Any]
    params: SpeechParams
    streamed: bool  # a caller waits on the first chunk (a family may trade exactness for latency there)
    tokens: TokenFeed | None  # the segment's LM generation, when `_lm_call` asked for one
    context: RequestContext


@dataclass(frozen=True)
class _Piece:
    """What the pipeline hands to the request's consumer: int16 audio and segment progress."""

    audio: np.ndarray
    done: int
    total: int


class Outcome(enum.Enum):
    """How a request ended (counted for stats and metrics)."""

    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class AsyncEngine(ABC):
    """Async text-to-speech engine; subclasses implement the `_hook` methods for one model family."""

    family: ClassVar[str] = "base"
    can_clone: ClassVar[bool] = False
    sample_rate: int = 24000
    default_voice: str = ""
    params_type: ClassVar[type[SpeechParams]] = SpeechParams
    join: ClassVar[JoinRule] = JoinRule()  # segments joined as they are, int16 by rounding
    lm_ahead: int = 0  # segments after the current one whose LM generations run ahead of it
    waits_on_lm: ClassVar[bool] = False  # segments wait on LM generations: a worker per request, not per core

    def __init__(self, *, max_concurrency: int = 4, workers: int | None = None, max_text_chars: int = 20_000,
                 length_threshold: int = 50, window_size: int = 50, deterministic: bool = False,
                 speakers_dir: str | Path | None = None) -> None:
        if max_concurrency < 1:
            raise InvalidInputError("max_concurrency must be at least 1", field="max_concurrency")
        self.capacity = max_concurrency
        self.max_text_chars = max_text_chars
        self.length_threshold = length_threshold
        self.window_size = window_size
        self.deterministic = deterministic
        # Requests admitted (slots) and compute threads (workers) are separate: admitted requests interleave their
        # chunk steps on the workers, so each one's first chunk comes early even when slots outnumber cores. A
        # family whose segments wait on an LM generation gets a worker per request, so a waiting one never holds
        # up another's ready audio.
        cores = min(max_concurrency, os.cpu_count() or 1)
        self.workers = workers or (max_concurrency if self.waits_on_lm else cores)
        self._pool = WorkerPool(self.workers, f"tts-{self.family}")
        self._slots: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None
        self._waiting = 0
        self._active = 0
        self._counts: collections.Counter[Outcome] = collections.Counter()
        self._contexts: set[RequestContext] = set()
        self._closed = False
        self._speakers: dict[str, Voice[Any]] = {}
        self._speaker_stamps: dict[str, Any] = {}  # store stamp of each cached speaker when it was loaded or saved
        self._speaker_edits: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self.store = SpeakerStore(speakers_dir) if speakers_dir is not None else None

    # ----- family hooks -------------------------------------------------------------------------------------------

    @abstractmethod
    def _builtin_voices(self) -> list[str]:
        """Names of the voices that ship with the loaded model."""

    @abstractmethod
    def _builtin_voice(self, name: str) -> Voice[Any]:
        """Resolve a built-in voice name; raise UnknownVoiceError if there is none."""

    @abstractmethod
    def _synthesize(self, job: SegmentJob) -> Iterator[np.ndarray]:
        """float32 audio chunks at `sample_rate` for one segment (blocking; runs on a worker thread)."""

    def _prepare(self, text: str, voice: Voice[Any], params: SpeechParams,
                 ctx: RequestContext) -> list[str] | list[Segment]:
        """Validated text -> segment texts (blocking, on a worker): normalize (wetext) and split (reference-004
        threshold and window)."""
        from fast_tts.text import normalize, split_text

        if params.normalize:
            text = normalize(text)
        return split_text(text, length_threshold=params.length_threshold, window_size=params.window_size)

    def _lm_call(self, segment: Segment, voice: Voice[Any], params: SpeechParams,
                 ctx: RequestContext) -> LMCall | None:
        """The LM generation `segment` needs (its `SegmentJob.tokens`), or None; started `lm_ahead` segments early."""
        return None

    def _make_speaker(self, name: str, audio: Any, reference_text: str | None,
                      options: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Build the arrays and meta that define a new speaker (blocking); families that cannot clone say so."""
        raise UnsupportedOperationError(f"the {self.family} engine cannot create speakers")

    def _speaker_voice(self, name: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Voice[Any]:
        """Turn a stored speaker back into a Voice (blocking, on a worker)."""
        raise UnsupportedOperationError(f"the {self.family} engine has no custom speakers")

    def _clone_voice(self, reference_audio: Any, reference_text: str | None) -> Voice[Any]:
        """Build a one-off Voice from reference audio (blocking); only families with `can_clone`."""
        raise self._cannot_clone()

    async def _close(self) -> None:
        """Release model resources (and backends) after the workers have stopped."""

    # ----- validation and voices ----------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosedError(f"the {self.family} engine has been shut down")

    def _check_text(self, text: Any) -> str:
        if not isinstance(text, str) or not text.strip():
            raise InvalidInputError("input text is empty", field="input")
        if len(text) > self.max_text_chars:
            raise InvalidInputError(f"input text has {len(text)} characters; the limit is {self.max_text_chars}",
                                    field="input")
        return text

    def _params(self, voice: Voice[Any], values: Mapping[str, Any]) -> SpeechParams:
        """Family defaults < voice presets < request values, validated; engine defaults fill what is left open."""
        params = resolve(self.params_type, voice.presets, values, self.family)
        return params.completed(self.length_threshold, self.window_size, self.deterministic)

    async def _voice(self, name: str | None) -> Voice[Any]:
        """Resolve `name` (default voice when None) among built-in voices and stored speakers."""
        if name is None or name == "":
            name = self.default_voice
        if not isinstance(name, str):
            raise InvalidInputError("voice name must be a string", field="voice")
        if (cached := self._cached_speaker(name)) is not None:
            return cached
        if name in self._builtin_voices():
            return self._builtin_voice(name)
        if self.store is not None:
            async with self._speaker_lock():  # not interleaved with an add or delete of the same speaker
                if (cached := self._cached_speaker(name)) is not None:
                    return cached
                try:
                    validate_name(name)
                    stamp = self.store.stamp(name)  # taken before the load: a change during it reloads on next use
                    arrays, meta = await self._run(self.store.load, name)
                except (KeyError, InvalidInputError):
                    pass
                else:
                    voice = await self._run(self._speaker_voice, name, arrays, meta)
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

    def _submit(self, fn: Callable[..., Any], *args: Any, priority: float = 0) -> Future[Any]:
        """Queue blocking `fn` on the engine's worker pool (lower `priority` runs first)."""
        self._check_open()
        try:
            return self._pool.submit(priority, fn, *args)
        except RuntimeError as exc:  # pool already shut down
            raise EngineClosedError(f"the {self.family} engine has been shut down") from exc

    async def _run(self, fn: Callable[..., Any], *args: Any, priority: float = 0) -> Any:
        """Run blocking `fn` on the engine's worker pool and wait for it."""
        return await asyncio.wrap_future(self._submit(fn, *args, priority=priority))

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots[0] is not loop:
            self._slots = (loop, asyncio.Semaphore(self.capacity))
        return self._slots[1]

    def _pipeline(self, text: str, voice: Voice[Any], params: SpeechParams, ctx: RequestContext,
                  streamed: bool) -> Iterator[_Piece]:
        """The one streaming path (blocking generator, stepped on the workers one piece at a time): segments from
        `_prepare` (inside the first step, so a new request's first piece is one job), each segment's LM generation
        started `lm_ahead` segments early, its chunks joined at the seams, int16 out, progress."""
        prepared = [p if isinstance(p, Segment) else Segment(p) for p in self._prepare(text, voice, params, ctx)]
        prepared = [p for p in prepared if p.text.strip()]  # nothing left: "nothing that can be spoken" below
        segments = [dataclasses.replace(p, index=i, count=len(prepared)) for i, p in enumerate(prepared)]
        joiner = self.join.joiner(self.sample_rate)
        feeds: dict[int, TokenFeed | None] = {}
        produced = 0
        for segment in segments:
            for ahead in segments[segment.index : segment.index + self.lm_ahead + 1]:
                if ahead.index not in feeds:
                    call = self._lm_call(ahead, voice, params, ctx)
                    feeds[ahead.index] = ctx.generate(call) if call is not None else None
            job = SegmentJob(segment, voice, params, streamed, feeds.pop(segment.index), ctx)
            for chunk in self._synthesize(job):
                out = joiner.push(np.asarray(chunk).reshape(-1))
                if out.size:
                    produced += out.size
                    yield _Piece(self.join.int16(out), segment.index, segment.count)
            out = joiner.end_segment()
            produced += out.size
            yield _Piece(self.join.int16(out), segment.index + 1, segment.count)
        tail = joiner.flush()
        if tail.size:
            produced += tail.size
            yield _Piece(self.join.int16(tail), len(segments), len(segments))
        if produced == 0:
            raise InvalidInputError("input text has nothing that can be spoken", field="input")

    async def _stream(self, text: Any, name: str | None, values: Mapping[str, Any], progress: ProgressFn | None,
                      streamed: bool, reference: tuple[Any, str | None] | None = None) -> AsyncIterator[np.ndarray]:
        """Validate, resolve the voice (`name`, or with `reference` (audio, transcript) a clone of that recording),
        wait for a slot, then stream the pipeline's audio; always frees the slot and cancels the request's LM
        generations on exit."""
        self._check_open()
        if reference is not None and not self.can_clone:
            raise self._cannot_clone()
        text = self._check_text(text)
        if reference is None:
            voice = await self._voice(name)
        else:
            voice = await self._run(self._clone_voice, *reference)
            self._check_open()
        params = self._params(voice, values)
        slots = self._semaphore()
        self._waiting += 1
        try:
            await slots.acquire()
        finally:
            self._waiting -= 1
        self._active += 1
        ctx = RequestContext(asyncio.get_running_loop())
        self._contexts.add(ctx)
        outcome = Outcome.CANCELLED
        steps = self._pipeline(text, voice, params, ctx, streamed)  # a generator: nothing runs until stepped
        step: Future[Any] | None = None
        try:
            made = 0
            step = self._submit(next, steps, None, priority=made)
            while (piece := await asyncio.wrap_future(step)) is not None:
                made += 1
                step = self._submit(next, steps, None, priority=made)  # look ahead one piece
                if progress is not None:
                    progress(piece.done, piece.total)
                if piece.audio.size:
                    yield piece.audio
            outcome = Outcome.COMPLETED
        except (Exception, asyncio.CancelledError) as exc:
            outcome = Outcome.CANCELLED if isinstance(exc, asyncio.CancelledError) else Outcome.FAILED
            raise
        finally:
            self._contexts.discard(ctx)
            await ctx.close()  # a worker waiting on an LM feed wakes up and stops
            if step is not None:  # else the pipeline never started
                self._close_steps(steps, step)
            self._active -= 1
            self._counts[outcome] += 1
            slots.release()

    def _close_steps(self, steps: Iterator[_Piece], step: Future[Any]) -> None:
        """Close the pipeline generator on a worker once its last step is over, so the family's clean-up code runs
        there and never while a step is half-way."""
        def close(done: Future[Any]) -> None:
            if not done.cancelled():
                done.exception()  # a look-ahead step that failed after the consumer left: seen, not raised
            with contextlib.suppress(RuntimeError):  # shut down: the generator goes with the engine
                self._pool.submit(-1, steps.close)  # type: ignore[attr-defined]

        step.cancel()  # a step still queued never runs
        step.add_done_callback(close)

    async def _speak(self, text: str, name: str | None, values: Mapping[str, Any],
                     progress: ProgressFn | None) -> np.ndarray:
        """The whole audio of a request (int16 at `sample_rate`)."""
        return np.concatenate([c async for c in self._stream(text, name, values, progress, streamed=False)])

    def _speak_stream(self, text: str, name: str | None, values: Mapping[str, Any],
                      progress: ProgressFn | None) -> AsyncIterator[np.ndarray]:
        """int16 chunks as they are made; closing the iterator cancels the request."""
        return self._stream(text, name, values, progress, streamed=True)

    def _cannot_clone(self) -> UnsupportedOperationError:
        return UnsupportedOperationError(
            f"the {self.family} engine cannot clone voices from reference audio; "
            f"use one of its voices ({', '.join(self._builtin_voices()[:8])}) or a cloning model (MegaTTS3, ChatTTS)"
        )

    async def _clone(self, text: str, reference_audio: Any, reference_text: str | None,
                     values: Mapping[str, Any]) -> np.ndarray:
        """Speak `text` in the voice of `reference_audio`."""
        stream = self._stream(text, None, values, None, False, (reference_audio, reference_text))
        return np.concatenate([chunk async for chunk in stream])

    def _clone_stream(self, text: str, reference_audio: Any, reference_text: str | None,
                      values: Mapping[str, Any]) -> AsyncIterator[np.ndarray]:
        """Streaming form of `_clone`."""
        return self._stream(text, None, values, None, True, (reference_audio, reference_text))

    # ----- public API shared by every family ---------------------------------------------------------------------

    async def clone_voice_async(self, text: str, reference_audio: Any, reference_text: str | None = None,
                                **params: Any) -> np.ndarray:
        """Speak `text` in the voice of `reference_audio` (families with `can_clone` spell out their parameters)."""
        return await self._clone(text, reference_audio, reference_text, params)

    def clone_voice_stream_async(self, text: str, reference_audio: Any, reference_text: str | None = None,
                                 **params: Any) -> AsyncIterator[np.ndarray]:
        """Streaming form of clone_voice_async."""
        return self._clone_stream(text, reference_audio, reference_text, params)

    async def add_speaker(self, name: str, audio: Any = None, reference_text: str | None = None,
                          **options: Any) -> None:
        """Create (or replace) custom speaker `name`; persisted in the speaker store when the engine has one."""
        self._check_open()
        validate_name(name)
        if name in self._builtin_voices():
            raise InvalidInputError(f"{name!r} is a built-in voice; choose another name", field="name")
        arrays, meta = await self._run(self._make_speaker, name, audio, reference_text, options)
        voice = await self._run(self._speaker_voice, name, arrays, meta)
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
            **{outcome.value: self._counts[outcome] for outcome in Outcome},
            "closed": self._closed,
        }

    async def shutdown(self) -> None:
        """Refuse new requests, end the running ones' LM generations, stop the workers and release the model."""
        if self._closed:
            return
        self._closed = True
        for ctx in list(self._contexts):
            await ctx.close()
        await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown)
        await self._close()

    async def __aenter__(self) -> AsyncEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()


class PresetSpeakerEngine(AsyncEngine):
    """An engine that cannot clone from audio: its custom speaker is a preset, a built-in voice (`voice`, default
    the engine's default voice) plus request parameters such as `speed`, validated when it is made."""

    def _make_speaker(self, name: str, audio: Any, reference_text: str | None,
                      options: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        if audio is not None:
            raise UnsupportedOperationError(
                f"the {self.family} voices cannot be cloned from audio; a speaker here is a preset, "
                f"e.g. add_speaker('calm', voice={self.default_voice!r}, speed=0.9)"
            )
        options = dict(options)
        base = options.pop("voice", None) or self.default_voice
        preset = {k: v for k, v in options.items() if v is not None}
        self._params(self._builtin_voice(base), preset)  # an unknown voice or bad value fails now, not at first use
        return {}, {"voice": base, "params": preset}

    def _speaker_voice(self, name: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Voice[Any]:
        base = meta.get("voice")
        try:
            voice = self._builtin_voice(base)
        except UnknownVoiceError:
            raise InvalidInputError(f"speaker {name!r} needs voice {base!r}, which this model lacks",
                                    field="voice") from None
        fields = {f.name for f in dataclasses.fields(SpeechParams)}
        preset = {k: v for k, v in dict(meta.get("params") or {}).items() if k in fields}
        return Voice(name, voice.data, preset)
