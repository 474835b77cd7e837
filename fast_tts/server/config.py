"""Operator settings of one server: limits, key, voice and model aliases (filled from `fast-tts serve` flags)."""

from __future__ import annotations

from dataclasses import dataclass, field

OPENAI_VOICES = (
    "alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx", "sage", "shimmer", "verse",
)
OPENAI_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts", "gpt-4o-mini-tts-2025-12-15")


@dataclass
class ServerConfig:
    """Everything the HTTP layer enforces; the engine knows nothing of these."""

    api_key: str | None = None
    max_text_chars: int = 4096
    max_upload_mb: float = 20.0
    max_concurrency: int = 8
    max_queue: int = 64
    queue_timeout_s: float = 120.0
    allow_url_audio: bool = False
    model_name: str | None = None
    openai_pcm_rate: int | None = 24000  # None: pcm at the engine's own rate
    stream_lead_s: float = 0.0  # > 0: streams stay at most this much audio ahead of real time (frees CPU under load)
    voice_aliases: dict[str, str] = field(default_factory=dict)
    max_audio_seconds: float = 300.0  # longest uploaded audio once decoded (a tiny file can decode to hours)

    @property
    def max_upload_bytes(self) -> int:
        """Largest accepted uploaded file, in bytes."""
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_json_bytes(self) -> int:
        """Largest accepted JSON body: room for the text cap in 4-byte UTF-8 plus JSON escaping and the other fields."""
        return max(1 << 20, self.max_text_chars * 8 + (64 << 10))

    @property
    def max_multipart_bytes(self) -> int:
        """Largest accepted multipart body: one upload plus form fields and boundaries."""
        return self.max_upload_bytes + self.max_json_bytes


def parse_aliases(pairs: list[str] | None) -> dict[str, str]:
    """Turn ["alloy=joe", ...] into {"alloy": "joe"}; a malformed pair is a usage error (ValueError)."""
    aliases: dict[str, str] = {}
    for pair in pairs or []:
        for item in pair.split(","):
            if not item.strip():
                continue
            name, sep, target = item.partition("=")
            if not sep or not name.strip() or not target.strip():
                raise ValueError(f"--voice-alias expects NAME=VOICE, got {item!r}")
            aliases[name.strip()] = target.strip()
    return aliases
