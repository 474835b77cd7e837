"""The engine contract: explicit public signatures (reference 004's for MegaTTS3), typed parameters, and the LM
bridge between a family's worker code and the asynchronous backends."""

from __future__ import annotations

import asyncio
import inspect
import threading

import pytest

from fast_tts.backends.base import FINISH_CANCELLED, FINISH_LENGTH, GenerationStream, StepOutput
from fast_tts.engine.lm import LMCall, RequestCancelled, RequestContext
from fast_tts.engine.params import SpeechParams, given, resolve
from fast_tts.errors import InvalidInputError

REFERENCE_004 = {  # speak_async's parameters and defaults in reference 004 (clone_voice_async: "the rest as speak")
    "pitch": "moderate", "speed": "moderate", "temperature": 0.9, "top_k": 50, "top_p": 0.95,
    "repetition_penalty": 1.0, "max_tokens": 4096, "length_threshold": 50, "window_size": 50, "time_step": 32,
    "p_w": 1.6, "t_w": 2.5,
}


def _defaults(fn) -> dict:
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


def test_megatts3_methods_show_reference_004() -> None:
    from fast_tts.engine.megatts3 import AsyncMega3Engine

    for method in (AsyncMega3Engine.speak_async, AsyncMega3Engine.speak_stream_async):
        defaults = _defaults(method)
        assert defaults["name"] == "female"
        assert {k: defaults[k] for k in REFERENCE_004} == REFERENCE_004
    for method in (AsyncMega3Engine.clone_voice_async, AsyncMega3Engine.clone_voice_stream_async):
        params = inspect.signature(method).parameters
        assert list(params)[1:4] == ["text", "reference_audio", "reference_text"]
        assert {k: _defaults(method)[k] for k in REFERENCE_004} == REFERENCE_004
    assert "temperature" in (AsyncMega3Engine.speak_async.__doc__ or "")


def test_every_engine_spells_out_its_parameters() -> None:
    import dataclasses

    from fast_tts.engine.chattts import AsyncChatTTSEngine, ChatTTSParams
    from fast_tts.engine.megatts3 import AsyncMega3Engine, Mega3Params
    from fast_tts.engine.piper import AsyncPiperEngine

    for engine, kind, methods in (
        (AsyncPiperEngine, SpeechParams, ("speak_async", "speak_stream_async")),
        (AsyncChatTTSEngine, ChatTTSParams,
         ("speak_async", "speak_stream_async", "clone_voice_async", "clone_voice_stream_async")),
        (AsyncMega3Engine, Mega3Params,
         ("speak_async", "speak_stream_async", "clone_voice_async", "clone_voice_stream_async")),
    ):
        for name in methods:
            shown = set(inspect.signature(getattr(engine, name)).parameters)
            missing = {f.name for f in dataclasses.fields(kind)} - shown
            assert not missing, f"{engine.__name__}.{name} hides {missing}"


def test_parameters_resolve_defaults_presets_and_values_and_name_bad_fields() -> None:
    params = resolve(SpeechParams, {"speed": 1.25}, {"seed": 4}, "test")
    assert (params.speed, params.seed, params.normalize) == (1.25, 4, True)
    assert resolve(SpeechParams, {"speed": 1.25}, {"speed": 0.5}, "test").speed == 0.5
    with pytest.raises(InvalidInputError) as err:
        resolve(SpeechParams, {}, {"volume": 3}, "test")
    assert err.value.field == "volume" and "unknown parameter" in str(err.value)
    with pytest.raises(InvalidInputError) as err:
        resolve(SpeechParams, {}, {"speed": 9}, "test")
    assert err.value.field == "speed"

    def method(self, text, name=None, *, speed=None, seed=None, progress=None, **unknown):
        return given(locals())

    assert method(None, "hi", speed=2.0, pace=1) == {"speed": 2.0, "pace": 1}


def test_engine_defaults_fill_what_a_request_left_open() -> None:
    from fast_tts.engine.chattts import ChatTTSParams

    open_ = SpeechParams().completed(50, 40, False)
    assert (open_.length_threshold, open_.window_size, open_.deterministic) == (50, 40, False)
    assert SpeechParams(length_threshold=9).completed(50, 40, False).length_threshold == 9
    assert SpeechParams().completed(50, 40, True).deterministic is True  # the engine's default
    assert SpeechParams(seed=3).completed(50, 40, False).deterministic is True  # a seed implies it
    assert SpeechParams(seed=3, deterministic=False).completed(50, 40, True).deterministic is False  # asked for
    assert ChatTTSParams().completed(50, 40, True).seed == 0  # ChatTTS: deterministic without a seed samples seed 0
    assert ChatTTSParams(seed=7).completed(50, 40, False).seed == 7
    assert ChatTTSParams().completed(50, 40, False).seed is None


class _Backend:
    """A backend whose generations emit `steps` records (stopping after `stop_after`), or wait for cancellation."""

    def __init__(self, steps: int, block: bool = False) -> None:
        self.steps, self.block = steps, block
        self.cancelled = 0

    def submit(self, prompt, sampling) -> GenerationStream:
        if prompt == "bad":
            raise InvalidInputError("bad prompt", field="prompt")
        stream = GenerationStream(0, 1, lambda s: self._cancel(s))
        stream.deliver([StepOutput(i) for i in range(self.steps)], finish=None if self.block else FINISH_LENGTH)
        return stream

    def _cancel(self, stream: GenerationStream) -> None:
        self.cancelled += 1
        stream.deliver([], finish=FINISH_CANCELLED)


async def test_a_feed_brings_a_generation_to_a_worker_thread() -> None:
    ctx = RequestContext(asyncio.get_running_loop())
    feed = ctx.generate(LMCall(_Backend(5), "prompt", None))
    steps = await asyncio.to_thread(list, feed)
    assert [s.token_ids for s in steps] == [0, 1, 2, 3, 4] and feed.finish_reason == FINISH_LENGTH
    bad = ctx.generate(LMCall(_Backend(5), "bad", None))
    with pytest.raises(InvalidInputError):
        await asyncio.to_thread(list, bad)
    await ctx.close()


async def test_closing_the_request_cancels_its_generations_and_wakes_waiting_workers() -> None:
    backend = _Backend(2, block=True)
    ctx = RequestContext(asyncio.get_running_loop())
    feed = ctx.generate(LMCall(backend, "prompt", None))
    got: list = []
    errors: list = []

    def worker() -> None:
        try:
            for step in feed:
                got.append(step)
        except RequestCancelled as exc:
            errors.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    while len(got) < 2:
        await asyncio.sleep(0.01)
    await ctx.close()
    await asyncio.to_thread(thread.join, 10)
    assert not thread.is_alive() and errors and backend.cancelled == 1
    late = ctx.generate(LMCall(backend, "prompt", None))  # after the close nothing starts
    with pytest.raises(RequestCancelled):
        await asyncio.to_thread(list, late)


async def test_stop_ends_generations_early_with_what_was_made() -> None:
    backend = _Backend(3, block=True)
    ctx = RequestContext(asyncio.get_running_loop())
    feed = ctx.generate(LMCall(backend, "prompt", None))
    await asyncio.sleep(0.05)
    await ctx.stop()
    steps = await asyncio.to_thread(list, feed)
    assert len(steps) == 3 and feed.finish_reason == FINISH_CANCELLED
    await ctx.close()
