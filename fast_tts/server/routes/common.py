"""Small dependencies the route modules share."""

from __future__ import annotations

from fastapi import Request

from fast_tts.server.problems import ApiError


def require_json(request: Request) -> None:
    """415 naming Content-Type unless the body is declared as JSON (checked before the body is validated)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise ApiError(415, f"expected Content-Type application/json, got {content_type or 'none'!r}",
                       "Content-Type", "unsupported_media_type")
