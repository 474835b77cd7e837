"""Multipart parsing with caps, and reference audio from an upload (or a URL, only when the operator allows it)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from fast_tts.audio import read_audio
from fast_tts.audio.files import AudioTooLongError
from fast_tts.errors import InvalidInputError
from fast_tts.server.config import ServerConfig
from fast_tts.server.problems import ApiError


async def _read_capped(upload: UploadFile, cap: int, field: str) -> bytes:
    """Read an uploaded file, refusing it (413) as soon as it passes `cap` bytes."""
    data = await upload.read(cap + 1)
    if len(data) > cap:
        raise ApiError(413, f"{field} is larger than {cap} bytes", field, "payload_too_large")
    if not data:
        raise ApiError(400, f"{field} is empty", field, "invalid_audio")
    return data


async def parse_multipart(
    request: Request, config: ServerConfig, file_fields: tuple[str, ...]
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Split a multipart/form-data body into text fields and the named file fields (415 for other bodies)."""
    content_type = request.headers.get("content-type", "").lower()
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(415, "expected Content-Type multipart/form-data", "Content-Type", "unsupported_media_type")
    try:
        form = await request.form(max_files=len(file_fields), max_fields=64, max_part_size=config.max_json_bytes)
    except MultiPartException as exc:
        raise ApiError(400, f"malformed multipart body: {exc.message}", "body", "invalid_body") from None
    fields: dict[str, Any] = {}
    files: dict[str, bytes] = {}
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key not in file_fields:
                    raise ApiError(400, f"unexpected file field {key!r}", key, "invalid_value")
                files[key] = await _read_capped(value, config.max_upload_bytes, key)
            else:
                fields[key] = value
    finally:
        await form.close()
    return fields, files


async def _fetch_url(url: str, cap: int, field: str) -> bytes:
    """GET an http(s) URL with a size cap and a timeout; errors name `field`."""
    if not url.startswith(("http://", "https://")):
        raise ApiError(400, f"{field} must be an http(s) URL", field, "invalid_value")
    import httpx  # only servers started with --allow-url-audio get here

    try:
        async with httpx.AsyncClient(timeout=10.0, follow_redirects=False) as client:
            async with client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise ApiError(400, f"{field}: fetching gave HTTP {response.status_code}", field, "fetch_failed")
                data = bytearray()
                async for piece in response.aiter_bytes():
                    data += piece
                    if len(data) > cap:
                        raise ApiError(413, f"{field}: remote file is larger than {cap} bytes", field,
                                       "payload_too_large")
                return bytes(data)
    except httpx.HTTPError as exc:
        raise ApiError(400, f"{field}: could not fetch ({exc.__class__.__name__})", field, "fetch_failed") from None


async def reference_audio_from_form(
    config: ServerConfig, data: bytes | None, url: str | None, field: str, required: bool = True
) -> bytes | None:
    """The reference clip's bytes, checked to decode as audio (400 naming `field` otherwise)."""
    if data is None and url:
        if not config.allow_url_audio:
            raise ApiError(400, "this server does not fetch URLs (start it with --allow-url-audio)",
                           f"{field}_url", "url_fetch_disabled")
        data = await _fetch_url(url, config.max_upload_bytes, f"{field}_url")
    if data is None:
        if required:
            raise ApiError(400, f"{field} is required (a multipart file)", field, "missing_audio")
        return None
    try:  # decoding stops at the operator's cap: a small upload can decode to hours
        audio, sample_rate = await asyncio.to_thread(read_audio, data, max_seconds=config.max_audio_seconds)
    except AudioTooLongError as exc:
        raise ApiError(413, f"{field}: {exc}", field, "audio_too_long") from None
    except InvalidInputError as exc:
        raise ApiError(400, f"{field} is not readable audio: {exc}", field, "invalid_audio") from None
    except Exception as exc:  # any decoder failure on user bytes is the user's 400, never our 500
        raise ApiError(400, f"{field} is not readable audio ({exc.__class__.__name__})", field,
                       "invalid_audio") from None
    if len(audio) == 0 or sample_rate <= 0:
        raise ApiError(400, f"{field} contains no audio", field, "invalid_audio")
    return data


def validate_form(model: type[BaseModel], fields: dict[str, Any]) -> Any:
    """Validate form fields with pydantic; the first error becomes a 422 naming its field."""
    if isinstance(fields.get("params"), str):
        try:
            fields["params"] = json.loads(fields["params"])
        except json.JSONDecodeError as exc:
            raise ApiError(422, f"params: not valid JSON ({exc.msg})", "params", "invalid_value") from None
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        raise ApiError(422, f"{param}: {err['msg']}", param, "invalid_value") from None
