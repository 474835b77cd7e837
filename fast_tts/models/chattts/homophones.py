"""Character-to-character homophone maps for ChatTTS text, applied per UTF-16 code unit like the reference."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from fast_tts.errors import InvalidInputError

DEFAULT_MAP_PATH = Path(__file__).with_name("data") / "homophones.json"

_BMP = 0x10000


class HomophoneMap:
    """A {char: char} map held as a 65536-entry lookup table over UTF-16 code units."""

    def __init__(self, pairs: dict[str, str]) -> None:
        """Build the lookup table; every key and value must be one character of the Basic Multilingual Plane."""
        table = np.arange(_BMP, dtype=np.uint16)
        for key, value in pairs.items():
            for what, char in (("key", key), ("value", value)):
                if not isinstance(char, str) or len(char) != 1 or ord(char) >= _BMP:
                    raise InvalidInputError(
                        f"homophone map {what} {char!r} (entry {key!r}) must be a single character of the Basic "
                        "Multilingual Plane: the map is applied per UTF-16 code unit",
                        field="homophones_map",
                    )
            table[ord(key)] = ord(value)
        self._table = table
        self._size = len(pairs)

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> HomophoneMap:
        """Read a JSON object of single-character pairs; None loads the map shipped with fast_tts."""
        path = Path(DEFAULT_MAP_PATH if path is None else path)
        try:
            with open(path, encoding="utf-8") as f:
                pairs = json.load(f)
        except FileNotFoundError:
            raise InvalidInputError(f"homophone map file not found: {path}", field="homophones_map") from None
        except OSError as e:
            raise InvalidInputError(f"cannot read homophone map {path}: {e}", field="homophones_map") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            message = f"homophone map {path} is not valid UTF-8 JSON: {e}"
            raise InvalidInputError(message, field="homophones_map") from None
        if not isinstance(pairs, dict):
            raise InvalidInputError(f"homophone map {path} must hold one JSON object", field="homophones_map")
        return cls(pairs)

    def __len__(self) -> int:
        """Number of pairs in the map."""
        return self._size

    def __call__(self, text: str) -> str:
        """Replace every UTF-16 code unit of `text` that the map holds, in one pass (no chaining)."""
        if not text:
            return text
        units = np.frombuffer(text.encode("utf-16-le", "surrogatepass"), dtype="<u2")
        mapped = self._table[units]
        if np.array_equal(mapped, units):
            return text
        return mapped.astype("<u2").tobytes().decode("utf-16-le", "surrogatepass")

    def replacements(self, text: str) -> list[tuple[str, str]]:
        """The (original, replacement) pairs that `__call__` would apply to `text`, in order (for logging)."""
        units = np.frombuffer(text.encode("utf-16-le", "surrogatepass"), dtype="<u2")
        changed = np.nonzero(self._table[units] != units)[0]
        return [(chr(units[i]), chr(self._table[units[i]])) for i in changed]
