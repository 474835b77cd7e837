"""Speakers: create (JSON preset or multipart with reference audio), list, delete; persisted by the engine."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from fast_tts.errors import FastTTSError, UnknownVoiceError
from fast_tts.server.problems import ApiError, from_engine_error
from fast_tts.server.schemas import (
    SpeakerCreated,
    SpeakerDeleted,
    SpeakerList,
    SpeakerRequest,
    error_responses,
    multipart_body,
)
from fast_tts.server.state import ServerState, get_state
from fast_tts.server.uploads import parse_multipart, reference_audio_from_form, validate_form
from fast_tts.speakers import validate_name

router = APIRouter(prefix="/api/speakers")


class _SpeakerForm(SpeakerRequest):
    """Multipart variant: may also name a URL for the reference audio."""

    audio_url: str | None = None


@router.get("", response_model=SpeakerList, responses=error_responses(401))
async def list_speakers(state: ServerState = Depends(get_state)) -> dict[str, Any]:
    """Saved speakers and the default voice."""
    return {"default": state.engine.default_voice, "speakers": sorted(state.engine.list_speakers())}


_SPEAKER_FILES = {
    "audio": "reference clip of the speaker's voice (families that clone)",
    "latent": "MegaTTS3 only: the clip's latent (.npy), when its checkpoint has no encoder",
}


@router.post(
    "", status_code=201, response_model=SpeakerCreated,
    responses=error_responses(400, 401, 404, 409, 413, 415, 422),
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": SpeakerRequest.model_json_schema()},
        **multipart_body(_SpeakerForm, _SPEAKER_FILES, ("name",))["requestBody"]["content"],
    }}},
)
async def create_speaker(
    request: Request, replace: bool = False, state: ServerState = Depends(get_state)
) -> JSONResponse:
    """Save a speaker under `name`; 409 when the name is taken unless `?replace=true`."""
    content_type = request.headers.get("content-type", "").lower()
    audio: Any = None
    if content_type.startswith("multipart/form-data"):
        fields, files = await parse_multipart(request, state.config, ("audio", "latent"))
        form = validate_form(_SpeakerForm, fields)
        audio = await reference_audio_from_form(state.config, files.get("audio"), form.audio_url, "audio",
                                                required=False)
        if audio is not None and "latent" in files:  # MegaTTS3: (wav, npy latent)
            audio = (audio, files["latent"])
    elif content_type.split(";")[0].strip() == "application/json":
        try:
            payload = await request.json()
        except ValueError:
            raise ApiError(400, "body is not valid JSON", "body", "invalid_json") from None
        if not isinstance(payload, dict):
            raise ApiError(422, "body must be a JSON object", "body", "invalid_value")
        form = validate_form(SpeakerRequest, payload)
    else:
        raise ApiError(415, "expected application/json or multipart/form-data", "Content-Type",
                       "unsupported_media_type")
    try:
        name = validate_name(form.name)
        async with state.speaker_writes:
            taken = name in state.engine.list_speakers() or name == state.engine.default_voice
            if taken and not replace:
                raise ApiError(409, f"speaker {name!r} already exists", "name", "speaker_exists")
            await state.engine.add_speaker(name, audio=audio, reference_text=form.reference_text, **form.params)
    except FastTTSError as exc:
        raise from_engine_error(exc) from exc
    return JSONResponse({"name": name}, status_code=201)


@router.delete("/{name}", response_model=SpeakerDeleted, responses=error_responses(400, 401, 404))
async def delete_speaker(name: str, state: ServerState = Depends(get_state)) -> dict[str, Any]:
    """Remove a saved speaker; 404 if there is none by that name."""
    try:
        validate_name(name)
        async with state.speaker_writes:
            if name not in state.engine.list_speakers():
                raise UnknownVoiceError(name, field="name")
            await state.engine.delete_speaker(name)
    except FastTTSError as exc:
        raise from_engine_error(exc) from exc
    return {"deleted": name}
