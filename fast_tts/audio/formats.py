"""Output format names, their HTTP media types, and format lookup from a file name."""

from __future__ import annotations

from pathlib import Path

from fast_tts.errors import InvalidInputError

FORMATS: tuple[str, ...] = ("wav", "mp3", "opus", "aac", "flac", "pcm")

# What OpenAI's /v1/audio/speech answers with for each response_format (opus is Ogg-contained Opus).
MEDIA_TYPES: dict[str, str] = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "opus": "audio/opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "pcm": "audio/pcm",
}

_EXTENSIONS: dict[str, str] = {
    ".wav": "wav",
    ".wave": "wav",
    ".mp3": "mp3",
    ".opus": "opus",
    ".ogg": "opus",
    ".oga": "opus",
    ".aac": "aac",
    ".adts": "aac",
    ".flac": "flac",
    ".pcm": "pcm",
    ".raw": "pcm",
}


def check_format(fmt: str, field: str = "response_format") -> str:
    """Return the canonical format name, or raise InvalidInputError naming the allowed ones."""
    name = fmt.strip().lower() if isinstance(fmt, str) else fmt
    if name not in FORMATS:
        raise InvalidInputError(f"unsupported audio format {fmt!r}; choose one of: {', '.join(FORMATS)}", field=field)
    return name


def format_from_path(path: str | Path) -> str:
    """Guess the output format from a file extension (.wav, .mp3, .opus/.ogg, .aac, .flac, .pcm/.raw)."""
    suffix = Path(path).suffix.lower()
    fmt = _EXTENSIONS.get(suffix)
    if fmt is None:
        known = ", ".join(sorted(_EXTENSIONS))
        raise InvalidInputError(
            f"cannot tell the audio format from {str(path)!r}; use one of the extensions {known} or give a format",
            field="output",
        )
    return fmt
