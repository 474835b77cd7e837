"""Exceptions shared by every layer; each names the problem so the CLI and the server can report it as is."""

from __future__ import annotations


class FastTTSError(Exception):
    """Base class of every error fast_tts raises on purpose."""


class InvalidInputError(FastTTSError, ValueError):
    """A caller-supplied value is wrong; `field` names the parameter (the server maps this to HTTP 400/422)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class UnknownVoiceError(InvalidInputError):
    """The requested voice / speaker name does not exist (HTTP 404)."""

    def __init__(self, name: str, available: list[str] | None = None, field: str = "voice") -> None:
        hint = f"; available: {', '.join(sorted(available))}" if available else ""
        super().__init__(f"unknown voice {name!r}{hint}", field=field)
        self.name = name


class UnsupportedOperationError(FastTTSError):
    """The loaded model family cannot do what was asked (for example cloning with Piper)."""


class EngineClosedError(FastTTSError, RuntimeError):
    """The engine was shut down; no new request is accepted."""


class ModelLoadError(FastTTSError, RuntimeError):
    """A checkpoint is missing, incomplete or does not match the expected layout; the message names the file."""


class MissingDependencyError(FastTTSError, ImportError):
    """An optional feature needs a package that is not installed; the message names what to install."""
