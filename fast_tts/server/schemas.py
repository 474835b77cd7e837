"""Request bodies. Ranges live here so pydantic names the offending field; text caps are checked per operator."""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

AudioFormat = Literal["wav", "mp3", "opus", "aac", "flac", "pcm"]
ParamValue = Union[StrictBool, StrictInt, StrictFloat, StrictStr]


class VoiceRef(BaseModel):
    """OpenAI's custom-voice object: {"id": "..."}."""

    id: str = Field(min_length=1, max_length=256)


class SpeechRequest(BaseModel):
    """POST /v1/audio/speech, as OpenAI defines it (unknown extra fields are ignored, as OpenAI clients may send)."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=256)
    input: str
    voice: Union[str, VoiceRef]
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

    text: str
    voice: str | None = Field(default=None, max_length=256)
    response_format: AudioFormat = "wav"
    stream: bool = True


class SpeakerRequest(BaseModel):
    """POST /api/speakers as JSON (a preset without reference audio); multipart adds the audio."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    reference_text: str | None = Field(default=None, max_length=4096)
    params: dict[str, ParamValue] = Field(default_factory=dict, max_length=32)
