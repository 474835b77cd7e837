"""What the routes share: the engine, the settings, the gate and the metrics, plus name resolution (aliases)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from fast_tts.errors import UnknownVoiceError
from fast_tts.server.config import OPENAI_MODELS, OPENAI_VOICES, ServerConfig
from fast_tts.server.limits import AdmissionGate
from fast_tts.server.metrics import ServerMetrics
from fast_tts.server.problems import ApiError


@dataclass
class ServerState:
    """One per app; stored on app.state.tts."""

    engine: Any
    config: ServerConfig
    metrics: ServerMetrics
    gate: AdmissionGate
    # Serialises speaker create/delete: check-then-act over HTTP stays atomic, and a delete cannot land between an
    # add's file write and its in-memory registration inside the engine.
    speaker_writes: asyncio.Lock = field(default_factory=asyncio.Lock)
    # What GET /metrics answers; a replica of a scaled-out server replaces it with the view over all replicas.
    render_metrics: Callable[[], Awaitable[bytes]] | None = None

    async def metrics_text(self) -> bytes:
        """The Prometheus text /metrics answers with."""
        if self.render_metrics is not None:
            return await self.render_metrics()
        return self.metrics.render()

    @property
    def model_id(self) -> str:
        """The id /v1/models reports for the served engine."""
        return self.config.model_name or f"fast-tts-{self.engine.family}"

    def model_ids(self) -> list[str]:
        """The served id first, then the accepted aliases."""
        ids = [self.model_id, str(self.engine.family), *OPENAI_MODELS]
        return list(dict.fromkeys(ids))

    def check_model(self, model: str) -> None:
        """404 in OpenAI's shape unless `model` names the served engine or an alias of it."""
        if model not in self.model_ids():
            raise ApiError(
                404, f"model {model!r} is not served here; use one of: {', '.join(self.model_ids())}",
                "model", "model_not_found",
            )

    def voices(self) -> list[str]:
        """Names a request may use: the engine's speakers (default first), then the aliases."""
        names = [self.engine.default_voice, *self.engine.list_speakers()]
        names += list(self.config.voice_aliases) + list(OPENAI_VOICES)
        return [n for n in dict.fromkeys(names) if n]

    def resolve_voice(self, voice: str | None, field: str = "voice") -> str | None:
        """Map a requested voice to an engine speaker name (None = the engine's default voice); 404 if unknown."""
        if voice is None or voice == "":
            return None
        if voice in self.config.voice_aliases:
            return self.config.voice_aliases[voice]
        speakers = self.engine.list_speakers()
        if voice == self.engine.default_voice or voice in speakers:
            return voice
        if voice in OPENAI_VOICES:
            return None
        raise UnknownVoiceError(voice, list(dict.fromkeys(speakers)), field=field)

    def check_text(self, text: str, field: str) -> str:
        """400 naming `field` when the text is blank or over the operator's character cap."""
        if not text or not text.strip():
            raise ApiError(400, f"{field} must not be empty", field, "empty_input")
        if len(text) > self.config.max_text_chars:
            raise ApiError(
                400, f"{field} has {len(text)} characters; the limit is {self.config.max_text_chars}",
                field, "input_too_long",
            )
        return text


def get_state(request: Request) -> ServerState:
    """FastAPI dependency: the app's ServerState."""
    return request.app.state.tts
