"""Request bodies. Ranges live here so pydantic names the offending field; text caps are checked per operator."""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

AudioFormat = Literal["wav", "mp3", "opus", "aac", "flac", "pcm"]
ParamValue = Union[StrictBool, StrictInt, StrictFloat, StrictStr]  # noqa: UP007 - pydantic strict types


class VoiceRef(BaseModel):
    """OpenAI's custom-voice object: {"id": "..."}."""

    id: str = Field(min_length=1, max_length=256)


class SpeechRequest(BaseModel):
    """POST /v1/audio/speech, as OpenAI defines it (unknown extra fields are ignored, as OpenAI clients may send)."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=256, examples=["tts-1"])
    input: str = Field(examples=["Hello, world."])
    voice: str | VoiceRef = Field(examples=["alloy"])
    instructions: str | None = Field(default=None, max_length=8192)
    response_format: AudioFormat = "mp3"
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] = "audio"
    stream: bool = True  # extension: false sends one complete file with Content-Length

    def voice_name(self) -> str:
        """The voice as a plain name."""
        return self.voice.id if isinstance(self.voice, VoiceRef) else self.voice


class EngineParams(BaseModel):
    """Every generation parameter the engines take; None leaves the engine's default."""

    speed: float | None = Field(default=None, ge=0.25, le=4.0)
    pitch: float | None = Field(default=None, ge=0.25, le=4.0)
    temperature: float | None = Field(default=None, gt=0.0, le=5.0)
    top_k: int | None = Field(default=None, ge=0, le=10000)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    max_tokens: int | None = Field(default=None, ge=1, le=65536)
    length_threshold: int | None = Field(default=None, ge=1, le=10000)
    window_size: int | None = Field(default=None, ge=1, le=10000)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    deterministic: bool | None = None
    normalize: bool | None = None
    params: dict[str, ParamValue] = Field(default_factory=dict, max_length=32)

    def engine_kwargs(self) -> dict[str, Any]:
        """The set parameters as keyword arguments for the engine (family-specific `params` merged in)."""
        kwargs = {key: getattr(self, key) for key in EngineParams.model_fields if key != "params"}
        kwargs = {key: value for key, value in kwargs.items() if value is not None}
        for key, value in self.params.items():
            kwargs.setdefault(key, value)
        return kwargs


class SpeakRequest(EngineParams):
    """POST /api/speak: the native route with every engine parameter."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(examples=["Hello, world."])
    voice: str | None = Field(default=None, max_length=256)
    response_format: AudioFormat = "wav"
    stream: bool = True


class SpeakerRequest(BaseModel):
    """POST /api/speakers as JSON (a preset without reference audio); multipart adds the audio."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, examples=["narrator"])
    reference_text: str | None = Field(default=None, max_length=4096)
    params: dict[str, ParamValue] = Field(default_factory=dict, max_length=32)


# ----- responses (documented in /openapi.json, so clients and fuzzers know every status the server answers) -----


class FieldError(BaseModel):
    """One problem of a request that failed validation."""

    param: str | None
    message: str | None


class ErrorInfo(BaseModel):
    """OpenAI's error fields."""

    message: str
    type: str
    param: str | None
    code: str | None
    details: list[FieldError] | None = Field(default=None, description="every problem, on validation errors")


class ErrorResponse(BaseModel):
    """The body of every error answer."""

    error: ErrorInfo


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class VoiceCard(BaseModel):
    id: str
    name: str
    voice: str = Field(description="the engine voice the name resolves to")
    alias: bool


class VoiceList(BaseModel):
    object: Literal["list"]
    voices: list[str]
    data: list[VoiceCard]


class SpeakerList(BaseModel):
    default: str
    speakers: list[str]


class SpeakerCreated(BaseModel):
    name: str


class SpeakerDeleted(BaseModel):
    deleted: str


class Health(BaseModel):
    status: Literal["ok"]
    model: str
    family: str
    sample_rate: int
    default_voice: str
    can_clone: bool
    active: int
    queued: int
    capacity: int
    engine: dict[str, Any]


_STATUS_TEXT = {
    400: "Invalid request (the error names the field)",
    401: "Missing or wrong API key (only when the server has one)",
    404: "Unknown voice, speaker or model",
    409: "A speaker by that name exists (use ?replace=true)",
    413: "Body, upload or decoded audio larger than the server accepts",
    415: "Wrong Content-Type",
    422: "A field has a value outside its range or of the wrong type",
    429: "Too many requests waiting; retry after Retry-After seconds",
    503: "No synthesis slot within the queue timeout, or shutting down; retry after Retry-After seconds",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for these error statuses, each with the error body's model."""
    return {status: {"model": ErrorResponse, "description": _STATUS_TEXT[status]} for status in statuses}


# One server-sent event of /v1/audio/speech with stream_format=sse (OpenAI's shapes), for clients and fuzzers.
_SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "event": {"type": "string"},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"anyOf": [
                {"type": "object", "required": ["type", "audio"], "properties": {
                    "type": {"const": "speech.audio.delta"},
                    "audio": {"type": "string", "description": "base64 of the next encoded audio bytes"}}},
                {"type": "object", "required": ["type", "usage"], "properties": {
                    "type": {"const": "speech.audio.done"}, "usage": {"type": "object"}}},
                {"type": "object", "required": ["type", "error"], "properties": {
                    "type": {"const": "error"}, "error": {"type": "object"}}},
            ]},
        },
    },
}


def audio_response(event_stream: bool = False) -> dict[int | str, dict[str, Any]]:
    """The 200 answer of a synthesis route: one of the audio formats (streamed or whole), or server-sent events."""
    from fast_tts.audio import MEDIA_TYPES

    binary = {"schema": {"type": "string", "format": "binary"}}
    content = {media_type: binary for media_type in MEDIA_TYPES.values()}
    if event_stream:
        content["text/event-stream"] = {"schema": _SSE_EVENT}
    return {200: {"description": "Audio in the requested format (X-Sample-Rate gives its rate)", "content": content}}


def multipart_body(model: type[BaseModel], files: dict[str, str], required: tuple[str, ...]) -> dict[str, Any]:
    """An OpenAPI requestBody for a multipart form: `model`'s fields plus the named file fields."""
    schema = model.model_json_schema()
    properties = dict(schema.get("properties", {}))
    properties.update({name: {"type": "string", "format": "binary", "description": text}
                       for name, text in files.items()})
    properties.pop("params", None)
    properties["params"] = {"type": "string", "description": "JSON object of family-specific parameters"}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "properties": properties, "required": list(required),
    }}}}}
