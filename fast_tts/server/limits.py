"""Admission and size limits: the API key, body caps enforced while reading, and the concurrency gate (429)."""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fast_tts.server.metrics import ServerMetrics
from fast_tts.server.problems import ApiError, error_body

# Paths anyone may GET without the key: the static web page (it holds no data; the user types the key into it).
_PUBLIC_PREFIXES = ("/static/",)
_PUBLIC_PATHS = ("/", "/favicon.ico")


async def _send_json(send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    """Answer directly from a middleware, before the app runs."""
    raw = json.dumps(body).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    hdrs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": raw})


class AuthMiddleware:
    """Require `Authorization: Bearer KEY` on every route but the static page; compared in constant time."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self._key = api_key.encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._key is None or scope["type"] != "http" or self._is_public(scope):
            await self.app(scope, receive, send)
            return
        supplied = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    supplied = token.strip()
        if not hmac.compare_digest(supplied, self._key):
            message = "missing API key (send Authorization: Bearer KEY)" if not supplied else "invalid API key"
            await _send_json(
                send, 401, error_body(message, "invalid_request_error", "Authorization", "invalid_api_key"),
                {"WWW-Authenticate": "Bearer"},
            )
            return
        await self.app(scope, receive, send)

    @staticmethod
    def _is_public(scope: Scope) -> bool:
        path = scope.get("path", "")
        return scope.get("method") in ("GET", "HEAD") and (
            path in _PUBLIC_PATHS or path.startswith(_PUBLIC_PREFIXES)
        )


class BodyLimitMiddleware:
    """Refuse bodies over the cap: at once from Content-Length, else while reading (never buffering past the cap)."""

    def __init__(self, app: ASGIApp, json_cap: int, multipart_cap: int, params: dict[str, str]) -> None:
        self.app = app
        self.json_cap = json_cap
        self.multipart_cap = multipart_cap
        self.params = params

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        content_type = headers.get(b"content-type", b"").decode("latin-1").lower()
        multipart = content_type.startswith("multipart/")
        cap = self.multipart_cap if multipart else self.json_cap
        param = self.params.get(scope.get("path", ""), "body")
        declared = headers.get(b"content-length")
        # Connection: close makes uvicorn drop the socket after the answer instead of draining the rest of the body.
        too_large = ApiError(
            413, f"request body is larger than {cap} bytes", param, "payload_too_large", headers={"Connection": "close"}
        )
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _send_json(send, 400, error_body("bad Content-Length", "invalid_request_error",
                                                       "Content-Length", "invalid_value"))
                return
            if length > cap:
                await _send_json(send, 413, error_body(too_large.message, too_large.type, param, too_large.code),
                                 {"Connection": "close"})
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap:
                    raise too_large
            return message

        await self.app(scope, limited_receive, send)


class _Slot:
    """One held place in the gate; released exactly once."""

    def __init__(self, gate: AdmissionGate) -> None:
        self._gate = gate
        self._since = time.monotonic()
        self._released = False

    def release(self) -> None:
        """Give the place back (idempotent)."""
        if not self._released:
            self._released = True
            self._gate._release(time.monotonic() - self._since)


class AdmissionGate:
    """At most `capacity` syntheses at once, at most `max_queue` waiting; past that 429 with Retry-After."""

    def __init__(self, capacity: int, max_queue: int, timeout_s: float, metrics: ServerMetrics) -> None:
        self.capacity = max(1, capacity)
        self.max_queue = max(0, max_queue)
        self.timeout_s = timeout_s
        self.metrics = metrics
        self._sem = asyncio.Semaphore(self.capacity)
        self.active = 0
        self.waiting = 0
        self._mean_hold_s = 1.0

    def retry_after(self) -> int:
        """Seconds a refused client should wait: the queue ahead of it divided over the slots."""
        return max(1, math.ceil(self._mean_hold_s * (self.waiting + 1) / self.capacity))

    async def acquire(self) -> _Slot:
        """Wait for a slot (cancellation-safe); 429 when the queue is full, 503 when the wait times out."""
        if self._sem.locked() and self.waiting >= self.max_queue:
            self.metrics.rejected.inc()
            raise ApiError(429, "server is at capacity; retry later", None, "rate_limit_exceeded",
                           "rate_limit_error", {"Retry-After": str(self.retry_after())})
        self.waiting += 1
        self.metrics.queued.inc()
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._sem.acquire()
        except TimeoutError:
            raise ApiError(503, "timed out waiting for a synthesis slot", None, "queue_timeout", "server_error",
                           {"Retry-After": str(self.retry_after())}) from None
        finally:
            self.waiting -= 1
            self.metrics.queued.dec()
        self.active += 1
        self.metrics.active.inc()
        return _Slot(self)

    def _release(self, held_s: float) -> None:
        self.active -= 1
        self.metrics.active.dec()
        self._mean_hold_s = 0.8 * self._mean_hold_s + 0.2 * held_s
        self._sem.release()
