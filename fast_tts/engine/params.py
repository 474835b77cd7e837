"""Request parameters as typed records: what every family accepts (`SpeechParams`), extended by each family.

An engine resolves a request's parameters as: the family's defaults, then the voice's presets (a Piper speaker can
carry a speed), then the values the caller gave (None means "not given"). `check()` validates the result and names
the field of the first bad value (InvalidInputError).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from fast_tts.errors import InvalidInputError

P = TypeVar("P", bound="SpeechParams")

# names of a public method's arguments that are not request parameters
_NOT_PARAMS = frozenset({"self", "text", "name", "reference_audio", "reference_text", "progress", "unknown"})


@dataclass(frozen=True)
class SpeechParams:
    """Parameters every family accepts. `length_threshold` / `window_size` None: the engine's defaults."""

    speed: float = 1.0
    seed: int | None = None
    deterministic: bool | None = None  # None: the engine's default, or True when a seed is given
    length_threshold: int | None = None
    window_size: int | None = None
    normalize: bool = True

    speed_range = (0.25, 4.0)

    def check(self) -> None:
        """Raise InvalidInputError naming the first bad field."""
        low, high = self.speed_range
        if not is_number(self.speed) or not low <= self.speed <= high:
            raise InvalidInputError(f"speed must be a number from {low} to {high}", field="speed")
        if self.seed is not None and not is_int(self.seed):
            raise InvalidInputError("seed must be an integer", field="seed")
        for key in ("length_threshold", "window_size"):
            value = getattr(self, key)
            if value is not None and (not is_int(value) or value < 1):
                raise InvalidInputError(f"{key} must be a positive integer", field=key)

    def completed(self: P, length_threshold: int, window_size: int, deterministic: bool) -> P:
        """The engine's defaults where the request left these open; a seed alone implies `deterministic`."""
        if self.deterministic is not None:
            deterministic = self.deterministic
        else:
            deterministic = deterministic or self.seed is not None
        return dataclasses.replace(self, length_threshold=self.length_threshold or length_threshold,
                                   window_size=self.window_size or window_size, deterministic=deterministic)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def given(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The request parameters among a public method's `locals()`: its named parameters that are not None, plus the
    unknown keywords it collected (which `resolve` rejects by name)."""
    values = {k: v for k, v in arguments.items() if k not in _NOT_PARAMS and v is not None}
    values.update(arguments.get("unknown") or {})
    return values


def resolve(kind: type[P], presets: Mapping[str, Any], values: Mapping[str, Any], family: str) -> P:
    """`kind`'s defaults, overridden by `presets`, then by `values`; unknown names are refused, the result checked."""
    fields = {f.name for f in dataclasses.fields(kind)}
    for key in values:
        if key not in fields:
            raise InvalidInputError(f"unknown parameter {key!r} for the {family} engine", field=key)
    params = kind(**{**{k: v for k, v in presets.items() if k in fields}, **values})
    params.check()
    return params
