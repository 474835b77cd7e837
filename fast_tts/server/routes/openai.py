"""OpenAI-compatible routes: /v1/audio/speech, /v1/models, /v1/audio/voices."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from fast_tts.errors import FastTTSError
from fast_tts.server.problems import from_engine_error
from fast_tts.server.routes.common import require_json
from fast_tts.server.schemas import ModelList, SpeechRequest, VoiceList, audio_response, error_responses
from fast_tts.server.state import ServerState, get_state
from fast_tts.server.synthesis import stream_audio, whole_audio

router = APIRouter(prefix="/v1")


@router.post(
    "/audio/speech", dependencies=[Depends(require_json)], response_class=Response,
    responses={**audio_response(event_stream=True), **error_responses(400, 401, 404, 413, 415, 429, 503)},
)
async def create_speech(body: SpeechRequest, request: Request, state: ServerState = Depends(get_state)) -> Response:
    """Synthesize `input`; streams chunked audio (or SSE events with stream_format=sse) as it is generated."""
    state.check_model(body.model)
    text = state.check_text(body.input, "input")
    try:
        voice = state.resolve_voice(body.voice_name(), "voice")
    except FastTTSError as exc:
        raise from_engine_error(exc) from exc
    params: dict[str, Any] = {}
    if body.speed != 1.0:
        params["speed"] = body.speed
    engine = state.engine
    # OpenAI's pcm is raw 24 kHz s16le; clients play it at that rate, so resample unless the operator says otherwise
    out_rate = state.config.openai_pcm_rate if body.response_format == "pcm" else None
    if body.stream or body.stream_format == "sse":
        return await stream_audio(
            state, request, lambda: engine.speak_stream_async(text, voice, **params), body.response_format,
            "/v1/audio/speech", sse=body.stream_format == "sse", text_chars=len(text), out_rate=out_rate,
        )
    return await whole_audio(
        state, request, lambda: engine.speak_async(text, voice, **params), body.response_format, "/v1/audio/speech",
        out_rate=out_rate,
    )


@router.get("/models", response_model=ModelList, responses=error_responses(401))
async def list_models(state: ServerState = Depends(get_state)) -> dict[str, Any]:
    """The served model and its aliases, in OpenAI's list shape."""
    return {
        "object": "list",
        "data": [{"id": mid, "object": "model", "created": 0, "owned_by": "fast-tts"} for mid in state.model_ids()],
    }


@router.get("/audio/voices", response_model=VoiceList, responses=error_responses(401))
async def list_voices(state: ServerState = Depends(get_state)) -> dict[str, Any]:
    """Voices a request may name: engine speakers first, then aliases (each with what it resolves to)."""
    voices = []
    for name in state.voices():
        target = state.resolve_voice(name) or state.engine.default_voice
        voices.append({"id": name, "name": name, "voice": target, "alias": target != name})
    return {"object": "list", "voices": [v["id"] for v in voices], "data": voices}
