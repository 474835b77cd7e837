"""One JSON error shape for every route, OpenAI's: {"error": {"message", "type", "param", "code"}}.

Engine errors (fast_tts.errors) and pydantic validation errors are mapped here, so no user mistake becomes a 500.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fast_tts.errors import (
    EngineClosedError,
    InvalidInputError,
    MissingDependencyError,
    UnknownVoiceError,
    UnsupportedOperationError,
)

log = logging.getLogger("fast_tts.server")


class ApiError(StarletteHTTPException):
    """An HTTP error with the OpenAI error fields; subclassing HTTPException lets it pass FastAPI's body parsing."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type_: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=status, detail=message, headers=headers)
        self.message = message
        self.param = param
        self.code = code
        self.type = type_


def error_body(message: str, type_: str, param: str | None, code: str | None) -> dict[str, Any]:
    """The OpenAI error envelope."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(err: ApiError) -> JSONResponse:
    """Render an ApiError."""
    return JSONResponse(error_body(err.message, err.type, err.param, err.code), err.status_code, headers=err.headers)


def from_engine_error(exc: Exception) -> ApiError:
    """Map a fast_tts error raised by the engine or the audio layer to its HTTP status."""
    if isinstance(exc, UnknownVoiceError):
        return ApiError(404, str(exc), exc.field or "voice", "voice_not_found")
    if isinstance(exc, InvalidInputError):
        return ApiError(400, str(exc), exc.field, "invalid_value")
    if isinstance(exc, UnsupportedOperationError):  # the request asks what the served model cannot do: 4xx, final
        return ApiError(400, str(exc), None, "unsupported_operation")
    if isinstance(exc, EngineClosedError):
        return ApiError(503, str(exc), None, "engine_closed", "server_error", {"Retry-After": "5"})
    if isinstance(exc, MissingDependencyError):  # this install cannot do what is asked; retrying will not help
        return ApiError(400, str(exc), None, "missing_dependency")
    raise exc


def _field_of(loc: tuple[Any, ...]) -> str | None:
    """('body', 'speed') -> 'speed'; ('body',) -> None."""
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "form")]
    return ".".join(parts) or None


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that give every error the JSON shape above."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(exc.status_code)
        return JSONResponse(
            error_body(str(exc.detail), "invalid_request_error", None, code), exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        param = _field_of(tuple(first.get("loc", ())))
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        status = 400 if request.url.path.startswith("/v1/") else 422
        body = error_body(message, "invalid_request_error", param, "invalid_value")
        body["error"]["details"] = [
            {"param": _field_of(tuple(e.get("loc", ()))), "message": e.get("msg")} for e in errors
        ]
        return JSONResponse(body, status)

    @app.exception_handler(InvalidInputError)
    @app.exception_handler(UnsupportedOperationError)
    @app.exception_handler(EngineClosedError)
    @app.exception_handler(MissingDependencyError)
    async def _engine_error(_: Request, exc: Exception) -> JSONResponse:
        return error_response(from_engine_error(exc))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal server error", "server_error", None, "internal_error"), 500)
