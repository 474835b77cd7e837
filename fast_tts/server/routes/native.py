"""Native routes: speak with every engine parameter, clone from an upload, health and metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import ConfigDict, Field

from fast_tts.errors import FastTTSError
from fast_tts.server.metrics import PROMETHEUS_TEXT
from fast_tts.server.problems import ApiError, from_engine_error
from fast_tts.server.routes.common import require_json
from fast_tts.server.schemas import (
    AudioFormat,
    EngineParams,
    Health,
    SpeakRequest,
    audio_response,
    error_responses,
    multipart_body,
)
from fast_tts.server.state import ServerState, get_state
from fast_tts.server.synthesis import stream_audio, whole_audio
from fast_tts.server.uploads import parse_multipart, reference_audio_from_form, validate_form

router = APIRouter()


@router.post(
    "/api/speak", dependencies=[Depends(require_json)], response_class=Response,
    responses={**audio_response(), **error_responses(400, 401, 404, 413, 415, 422, 429, 503)},
)
async def speak(body: SpeakRequest, request: Request, state: ServerState = Depends(get_state)) -> Response:
    """Synthesize `text` with any engine parameters; streams unless `stream` is false."""
    text = state.check_text(body.text, "text")
    try:
        voice = state.resolve_voice(body.voice, "voice")
    except FastTTSError as exc:
        raise from_engine_error(exc) from exc
    kwargs = body.engine_kwargs()
    engine = state.engine
    if body.stream:
        return await stream_audio(
            state, request, lambda: engine.speak_stream_async(text, voice, **kwargs), body.response_format,
            "/api/speak",
        )
    return await whole_audio(
        state, request, lambda: engine.speak_async(text, voice, **kwargs), body.response_format, "/api/speak"
    )


class CloneForm(EngineParams):
    """The non-file fields of POST /api/clone."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(examples=["Hello, world."])
    reference_text: str | None = Field(default=None, max_length=4096)
    reference_audio_url: str | None = Field(default=None, max_length=2048)
    response_format: AudioFormat = "wav"
    stream: bool = True


_CLONE_FILES = {
    "reference_audio": "the voice to clone (wav, flac, mp3, ogg, m4a...)",
    "reference_latent": "MegaTTS3 only: the clip's latent (.npy), when its checkpoint has no encoder",
}


@router.post(
    "/api/clone", response_class=Response,
    responses={**audio_response(), **error_responses(400, 401, 404, 413, 415, 422, 429, 503)},
    openapi_extra=multipart_body(CloneForm, _CLONE_FILES, ("text",)),
)
async def clone(request: Request, state: ServerState = Depends(get_state)) -> Response:
    """Speak `text` in the voice of an uploaded reference clip (multipart: reference_audio, reference_text)."""
    engine = state.engine
    if not engine.can_clone:
        raise ApiError(400, f"the served {engine.family} model cannot clone voices", "reference_audio",
                       "unsupported_operation")
    fields, files = await parse_multipart(request, state.config, ("reference_audio", "reference_latent"))
    form = validate_form(CloneForm, fields)
    text = state.check_text(form.text, "text")
    reference: Any = await reference_audio_from_form(state.config, files.get("reference_audio"),
                                                     form.reference_audio_url, "reference_audio")
    if "reference_latent" in files:  # MegaTTS3 takes (wav, npy latent), as its reference does
        reference = (reference, files["reference_latent"])
    kwargs = form.engine_kwargs()
    ref_text = form.reference_text
    if form.stream:
        return await stream_audio(
            state, request,
            lambda: engine.clone_voice_stream_async(text, reference, reference_text=ref_text, **kwargs),
            form.response_format, "/api/clone",
        )
    return await whole_audio(
        state, request, lambda: engine.clone_voice_async(text, reference, reference_text=ref_text, **kwargs),
        form.response_format, "/api/clone",
    )


@router.get("/health", response_model=Health, responses=error_responses(401))
async def health(state: ServerState = Depends(get_state)) -> dict[str, Any]:
    """Liveness plus what is served and how busy it is."""
    engine = state.engine
    return {
        "status": "ok",
        "model": state.model_id,
        "family": engine.family,
        "sample_rate": engine.sample_rate,
        "default_voice": engine.default_voice,
        "can_clone": engine.can_clone,
        "active": state.gate.active,
        "queued": state.gate.waiting,
        "capacity": state.gate.capacity,
        "engine": engine.stats(),
    }


@router.get(
    "/metrics", response_class=Response,
    responses={200: {"description": "Prometheus text exposition format",
                     "content": {PROMETHEUS_TEXT: {"schema": {"type": "string"}}}}, **error_responses(401)},
)
async def metrics(state: ServerState = Depends(get_state)) -> Response:
    """Prometheus text format."""
    return Response(await state.metrics_text(), media_type=PROMETHEUS_TEXT)

