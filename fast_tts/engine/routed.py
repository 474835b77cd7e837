"""Language routing: voices of single-language engines under one engine, and voice sets that read mixed text.

The models stay language-blind; this layer is the language-aware part. Text is cut into runs of one writing
(fast_tts.text.runs: a number goes with the word after it), each run is a segment for the voice of the set whose
language reads that writing, that voice's own engine normalises, splits and speaks it (so numbers in a Chinese run
are read in Chinese, and a run sounds as that engine alone makes it), and the chunks come back resampled to one
rate, as made; the engine base joins the runs with a short crossfade.

A voice set (such as the default "auto": Chinese to zf_xiaobei, English to joe) reads every language it has a voice
for. A single voice chosen by name is respected: it is never swapped for another, so text in a writing it cannot
read is an InvalidInputError (field "input") that names the voices, or the extra, that can read it.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fast_tts.audio import JoinRule, resample
from fast_tts.engine.base import AsyncEngine, PresetSpeakerEngine, ProgressFn, Segment, SegmentJob, Voice
from fast_tts.engine.lm import RequestContext
from fast_tts.engine.params import SpeechParams, given
from fast_tts.errors import InvalidInputError, UnknownVoiceError
from fast_tts.text.runs import LANGUAGE_NAMES, ScriptRun, script_name, scripts_of_language, split_scripts

_EXCERPT = 24  # characters of the offending text quoted in an error


@dataclass(frozen=True)
class LanguageVoices:
    """One language of a routed engine: the family that speaks it, its voice names, and how to build its engine.

    `voices` must be known without building the engine (so listing voices loads no model); the first is the
    voice a voice set uses for this language.
    """

    language: str
    family: str
    voices: tuple[str, ...]
    build: Callable[[], AsyncEngine]


@dataclass(frozen=True)
class VoiceSet:
    """Which voice reads which language, in order of preference (the first also reads letterless text)."""

    routes: tuple[tuple[str, str], ...]  # (language, voice name)

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(language for language, _ in self.routes)

    def route(self, script: str | None) -> tuple[str, str] | None:
        """(language, voice) of the first route whose language reads `script`; letterless text takes the first."""
        if script is None:
            return self.routes[0]
        return next(((lang, v) for lang, v in self.routes if script in scripts_of_language(lang)), None)


@dataclass(frozen=True)
class Route:
    """A run of text and the voice of a set that reads it (language and voice None: no voice of the set can)."""

    language: str | None
    voice: str | None
    script: str | None
    text: str


def route_text(text: str, voices: VoiceSet) -> list[Route]:
    """Cut `text` into runs of one writing and give each the voice of `voices` that reads it; consecutive runs for
    one voice are joined, so a Chinese sentence with a number and a full stop stays one route. Pure: no model."""
    routes: list[Route] = []
    for run in split_scripts(text):
        language, voice = voices.route(run.script) or (None, None)
        last = routes[-1] if routes else None
        if last is not None and last.language is not None and (last.language, last.voice) == (language, voice):
            routes[-1] = Route(language, voice, last.script or run.script, last.text + run.text)
        else:
            routes.append(Route(language, voice, run.script, run.text))
    return routes


@dataclass(frozen=True)
class RoutedRun:
    """A run of one writing for one member voice: the language (its engine) and the voice's name there."""

    language: str
    voice: str


def language_label(languages: Sequence[str]) -> str:
    """ "English", "Chinese and English": how messages name what a voice speaks."""
    names = [LANGUAGE_NAMES.get(lang, lang) for lang in languages]
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def excerpt(text: str) -> str:
    """The start of `text`, quoted, for error messages."""
    text = " ".join(text.split())
    return repr(text if len(text) <= _EXCERPT else text[:_EXCERPT] + "…")


def unreadable_error(voice: str, languages: Sequence[str], run: ScriptRun, remedy: str) -> InvalidInputError:
    """The error for text in a writing that voice `voice` (speaking `languages`) cannot read."""
    return InvalidInputError(
        f"voice {voice!r} speaks {language_label(languages)} and cannot read the {script_name(run.script)} text "
        f"{excerpt(run.text)}; {remedy}",
        field="input",
    )


def bundled_remedy(script: str | None) -> str:
    """What reads `script` among the voices fast-tts can install (used by single-language engines)."""
    if script == "han":
        from fast_tts.models.kokoro.files import ZH_EXTRA, missing_modules

        if missing_modules():
            return f"a Mandarin voice comes with {ZH_EXTRA}"
        return "the default voices read it (no model path; voice 'auto')"
    if script == "latin":
        return "the default voices read it (no model path)"
    return f"no bundled voice reads {script_name(script)} text; give a model of that language (--model)"


def check_readable(text: str, voice: str, languages: Sequence[str]) -> None:
    """Raise the InvalidInputError above when `text` has a run no language in `languages` reads."""
    readable = set().union(*(scripts_of_language(lang) for lang in languages))
    for run in split_scripts(text):
        if run.script is not None and run.script not in readable:
            raise unreadable_error(voice, languages, run, bundled_remedy(run.script))


class AsyncRoutedEngine(PresetSpeakerEngine):
    """Single-language engines behind one voice namespace, plus the voice set `auto` that routes by language.

    Voices: `auto` (default: each language to its first voice), then every member voice by its own name. Member
    engines are built at construction (`preload=True`) or when a request first needs them (`preload=False`: a
    command line speaking English never loads the Chinese model). Custom speakers are presets, as for Piper.
    """

    can_clone = False
    join = JoinRule(0.02)  # joins runs of different voices (and rates) without a click; they meet on silence

    def __init__(self, members: Sequence[LanguageVoices], *, preload: bool = True, **kw: Any) -> None:
        if not members:
            raise InvalidInputError("a routed engine needs at least one language", field="members")
        self._members = {m.language: m for m in members}
        self.family = "+".join(dict.fromkeys(m.family for m in members))
        self.default_voice = "auto"
        self._sets: dict[str, VoiceSet] = {"auto": VoiceSet(tuple((m.language, m.voices[0]) for m in members))}
        for member in members:
            for name in member.voices:
                self._sets.setdefault(name, VoiceSet(((member.language, name),)))
        self._engines: dict[str, AsyncEngine] = {}
        self._build_lock = threading.Lock()
        first = self._engine(members[0].language)  # the default language's engine: errors surface now
        self.sample_rate = first.sample_rate
        if preload:
            for member in members[1:]:
                self._engine(member.language)
        super().__init__(**kw)

    def _engine(self, language: str) -> AsyncEngine:
        """The member engine of `language`, built on first use."""
        with self._build_lock:
            engine = self._engines.get(language)
            if engine is None:
                engine = self._engines[language] = self._members[language].build()
            return engine

    # ----- voices -------------------------------------------------------------------------------------------------

    def _builtin_voices(self) -> list[str]:
        return list(self._sets)

    def _builtin_voice(self, name: str) -> Voice[VoiceSet]:
        if name not in self._sets:
            raise UnknownVoiceError(name, self.list_speakers())
        return Voice(name, self._sets[name])

    def voice_languages(self, name: str) -> tuple[str, ...]:
        """Languages built-in voice or voice set `name` speaks, in routing order."""
        return self._builtin_voice(name).data.languages

    def voice_routes(self, name: str) -> tuple[tuple[str, str], ...]:
        """(language, voice) pairs that built-in voice or voice set `name` routes to."""
        return self._builtin_voice(name).data.routes

    # ----- routing ------------------------------------------------------------------------------------------------

    def _remedy(self, script: str | None) -> str:
        """Which of this engine's voices read `script`, or what to install."""
        readers = [name for name, voices in self._sets.items() if script is not None and voices.route(script)]
        if readers:
            return f"voices that read it: {', '.join(readers[:4])}" + (", ..." if len(readers) > 4 else "")
        return bundled_remedy(script)

    def _prepare(self, text: str, voice: Voice[VoiceSet], params: SpeechParams,
                 ctx: RequestContext) -> list[Segment]:
        """Route (all runs first: an unreadable one fails the request before any audio); each run is a segment."""
        routes = route_text(text, voice.data)
        for route in routes:
            if route.language is None:
                run = ScriptRun(route.script, route.text)
                raise unreadable_error(voice.name, voice.data.languages, run, self._remedy(route.script))
        return [Segment(r.text, data=RoutedRun(r.language, r.voice)) for r in routes if r.language and r.voice]

    def _synthesize(self, job: SegmentJob) -> Iterator[np.ndarray]:
        """The run as its voice's engine speaks it (normalised and split there), at this engine's rate."""
        run: RoutedRun = job.segment.data
        engine = self._engine(run.language)
        voice = engine._builtin_voice(run.voice)
        texts = [t for t in engine._prepare(job.segment.text, voice, job.params, job.context) if t.strip()]
        for i, text in enumerate(texts):
            part = dataclasses.replace(job, segment=Segment(text, i, len(texts)), voice=voice,
                                       streamed=job.streamed and job.segment.index == 0)  # first run: caller waits
            for chunk in engine._synthesize(part):
                if engine.sample_rate != self.sample_rate:
                    chunk = resample(np.asarray(chunk, dtype=np.float32), engine.sample_rate, self.sample_rate)
                yield chunk

    # ----- public API ---------------------------------------------------------------------------------------------

    async def speak_async(self, text: str, name: str | None = None, *, speed: float | None = None,
                          seed: int | None = None, deterministic: bool | None = None,
                          length_threshold: int | None = None, window_size: int | None = None,
                          normalize: bool | None = None, progress: ProgressFn | None = None,
                          **unknown: Any) -> np.ndarray:
        """Speak `text` with voice or voice set `name` (default `auto`: each language to its voice); mono int16.

        speed: 0.25 to 4 (default 1.0, or the speaker's preset). seed / deterministic: reproducible output.
        length_threshold / window_size: text splitting inside each run (default 50 / 50). normalize: numbers, dates
        and money read in the run's language (default True). progress(done, total) counts runs.
        """
        return await self._speak(text, name, given(locals()), progress)

    def speak_stream_async(self, text: str, name: str | None = None, *, speed: float | None = None,
                           seed: int | None = None, deterministic: bool | None = None,
                           length_threshold: int | None = None, window_size: int | None = None,
                           normalize: bool | None = None, progress: ProgressFn | None = None,
                           **unknown: Any) -> AsyncIterator[np.ndarray]:
        """speak_async's audio as int16 chunks, as each voice makes them (per sentence or clause)."""
        return self._speak_stream(text, name, given(locals()), progress)

    async def _close(self) -> None:
        """Release every member engine that was built (after this engine's workers stopped)."""
        for engine in list(self._engines.values()):
            await engine.shutdown()
