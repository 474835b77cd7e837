"""Persistent speaker store: one self-checking `.npz` per speaker, atomic writes, one previous generation kept.

Layout of a store directory:
  <name>.npz          current version: the speaker's arrays plus a `__meta__` entry (UTF-8 JSON, uint8 array)
  .prev/<name>.npz    the version before it (kept so a torn or corrupt current file never loses the speaker)
  .lock               fcntl lock file that serialises writers across threads and processes

Files are written with numpy's `allow_pickle=False` (never pickle), into a unique temp file in the same
directory, fsynced, then moved into place with os.replace and the directory fsynced. The meta holds a sha256 over
the arrays and the meta itself, so a truncated or altered file is detected on load and the previous one is used.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fast_tts.errors import InvalidInputError

MAX_NAME_CHARS = 64
_META_KEY = "__meta__"
_SUFFIX = ".npz"


def validate_name(name: Any) -> str:
    """Return `name` if it is usable as a speaker name (and a file name), else raise InvalidInputError(field='name')."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidInputError("speaker name must be a non-empty string", field="name")
    if len(name) > MAX_NAME_CHARS:
        raise InvalidInputError(f"speaker name is longer than {MAX_NAME_CHARS} characters", field="name")
    if name != name.strip() or name.startswith(".") or name.startswith("-"):
        raise InvalidInputError(
            "speaker name must not start with '.' or '-' or have surrounding spaces", field="name"
        )
    if any(c in "/\\:*?\"<>|" or ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidInputError(
            "speaker name must not contain path separators, control characters or any of :*?\"<>|",
            field="name",
        )
    return name


def _checksum(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> str:
    """sha256 over every array (name, dtype, shape, bytes) and the canonical JSON of the meta."""
    digest = hashlib.sha256()
    for key in sorted(arrays):
        array = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    digest.update(json.dumps(meta, sort_keys=True, ensure_ascii=False).encode())
    return digest.hexdigest()


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz archive written array by array with allow_pickle=False (any numpy version; never pickle)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for key, array in arrays.items():
            with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
    return buffer.getvalue()


class CorruptSpeakerError(Exception):
    """A speaker file could not be read back or its checksum does not match."""


class SpeakerStore:
    """A directory of named speakers (arrays + JSON meta) that survives crashes and concurrent writers."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        (self.directory / ".prev").mkdir(parents=True, exist_ok=True)
        self._lock_path = self.directory / ".lock"

    @contextlib.contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        """Hold an fcntl lock on the store; each call opens its own descriptor, so threads exclude each other too."""
        with open(self._lock_path, "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _current(self, name: str) -> Path:
        return self.directory / f"{name}{_SUFFIX}"

    def _previous(self, name: str) -> Path:
        return self.directory / ".prev" / f"{name}{_SUFFIX}"

    def _fsync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def save(self, name: str, arrays: dict[str, np.ndarray], meta: dict[str, Any] | None = None) -> None:
        """Atomically write a speaker; the version it replaces becomes the kept previous generation."""
        validate_name(name)
        meta = dict(meta or {})
        arrays = {str(k): np.asarray(v) for k, v in arrays.items()}
        if _META_KEY in arrays:
            raise InvalidInputError(f"array name {_META_KEY!r} is reserved", field="arrays")
        if any(a.dtype == object for a in arrays.values()):
            raise InvalidInputError("speaker arrays must be numeric", field="arrays")
        record = {"meta": meta, "sha256": _checksum(arrays, meta)}
        blob = np.frombuffer(json.dumps(record, ensure_ascii=False).encode(), dtype=np.uint8)
        payload = _npz_bytes({**arrays, _META_KEY: blob})
        with self._locked(exclusive=True):
            # temp files are only made under this lock: any here are leftovers of a crash
            for stale in self.directory.glob(".tmp-*"):
                stale.unlink(missing_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=_SUFFIX, dir=self.directory)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(payload)
                    handle.flush()
                    os.fsync(handle.fileno())
                current = self._current(name)
                if current.exists() and self._read_valid(current) is not None:
                    os.replace(current, self._previous(name))
                    self._fsync_dir(self.directory / ".prev")
                os.replace(tmp, current)
                self._fsync_dir(self.directory)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise

    def _read(self, path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Read and verify one file; raise CorruptSpeakerError if it is unreadable or fails its checksum."""
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
            record = json.loads(arrays.pop(_META_KEY).tobytes().decode())
            meta, expected = record["meta"], record["sha256"]
        except FileNotFoundError:
            raise
        except Exception as exc:  # zipfile/JSON/key errors all mean a damaged file
            raise CorruptSpeakerError(f"{path}: {exc}") from exc
        if _checksum(arrays, meta) != expected:
            raise CorruptSpeakerError(f"{path}: checksum mismatch")
        return arrays, meta

    def _read_valid(self, path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        try:
            return self._read(path)
        except (CorruptSpeakerError, FileNotFoundError):
            return None

    def load(self, name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Return (arrays, meta) of the newest intact version; KeyError if the speaker does not exist."""
        validate_name(name)
        with self._locked(exclusive=False):
            for path in (self._current(name), self._previous(name)):
                found = self._read_valid(path)
                if found is not None:
                    return found
        raise KeyError(name)

    def delete(self, name: str) -> bool:
        """Remove a speaker and its previous generation; return whether it existed.

        The previous generation goes first: a crash between the two unlinks leaves the current version (the speaker
        as it was), never resurrects the older one.
        """
        validate_name(name)
        existed = False
        with self._locked(exclusive=True):
            for path in (self._previous(name), self._current(name)):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    existed = True
            self._fsync_dir(self.directory)
        return existed

    def stamp(self, name: str) -> tuple[Any, ...] | None:
        """A cheap token that changes whenever `name` is saved or deleted (by any process); None if it is absent.

        Built from the inode, size and modification time of both generations' files, so a cache holding a speaker
        can tell, with two stat calls and no read, that another process (another server replica) changed it.
        """
        validate_name(name)
        parts: list[Any] = []
        for path in (self._current(name), self._previous(name)):
            try:
                st = path.stat()
            except FileNotFoundError:
                parts.append(None)
            else:
                parts.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        return None if parts == [None, None] else tuple(parts)

    def names(self) -> list[str]:
        """Sorted names of stored speakers (a speaker whose current file is torn still counts via its previous one)."""
        with self._locked(exclusive=False):
            found = {p.name[: -len(_SUFFIX)] for p in self.directory.glob(f"*{_SUFFIX}") if not p.name.startswith(".")}
            found |= {p.name[: -len(_SUFFIX)] for p in (self.directory / ".prev").glob(f"*{_SUFFIX}")}
        return sorted(found)

    def __contains__(self, name: str) -> bool:
        try:
            self.load(name)
        except (KeyError, InvalidInputError):
            return False
        return True
