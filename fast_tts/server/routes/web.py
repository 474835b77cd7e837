"""The web page at / and its static assets."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

router = APIRouter()


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    """The single-page UI (its script calls the JSON API with the key the user enters)."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")
