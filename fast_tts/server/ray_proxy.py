"""ASGI middleware for Ray Serve's HTTP proxies: what a client sees when a replica dies under its request.

Ray Serve's proxy answers nothing (its HTTP server then sends a bare 500) when the replica holding a request dies
before the response starts, and cuts the body when it dies mid-response. In front of the proxy this middleware:
  - sends a request again (up to three attempts) when its replica died before answering, if sending it twice
    cannot do harm (reads and syntheses; not speaker writes); Serve routes the new attempt to a live replica,
  - otherwise answers 503 with Retry-After and the server's JSON error body,
  - ends a cut server-sent-event stream with an `error` event; a cut audio stream stays cut (no final chunk), so
    the client's HTTP library reports an incomplete body instead of taking it for a whole file.
It is loaded in every proxy through RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH (see `proxy_middlewares`), so it
applies to every Serve application behind those proxies; it imports only the standard library and Starlette, which
the proxy already has.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("fast_tts.server")

# The environment variable Ray Serve reads in each proxy, and the value that installs this middleware.
CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
CALLBACK_PATH = "fast_tts.server.ray_proxy:proxy_middlewares"
# Ray's switch for "this machine only": a local instance then binds to 127.0.0.1 instead of the machine's address.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Every answer that went through this middleware carries this header, so a deployment can check it is installed.
MARK_HEADER = b"x-fast-tts-proxy"
RETRIED_HEADER = b"x-fast-tts-retried"
MARK = (MARK_HEADER, b"1")

# Requests that may be sent twice: reads and syntheses have no effect a second attempt could repeat.
_SAFE_METHODS = ("GET", "HEAD")
_SAFE_POSTS = ("/v1/audio/speech", "/api/speak", "/api/clone")


def _error_body(message: str) -> bytes:
    """The server's JSON error envelope (fast_tts.server.problems.error_body, without importing the server)."""
    return json.dumps(
        {"error": {"message": message, "type": "server_error", "param": None, "code": "replica_unavailable"}}
    ).encode()


class ReplicaFaultMiddleware:
    """Retry, 503 + Retry-After, or a marked cut, for requests whose Serve replica died (see the module doc).

    An attempt that a live replica took runs to its end however long it takes (a long text synthesized whole only
    answers when done); an attempt whose replica died fails at once. Waiting for a replica is Serve's: while the
    deployment has none, Serve queues the request, and answers 503 itself once the deployment is unavailable.
    """

    def __init__(self, app: ASGIApp, attempts: int = 3, retry_after_s: int = 5) -> None:
        self.app = app
        self.attempts = attempts
        self.retry_after_s = retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path", "").startswith("/-/"):  # Serve's own health routes
            await self.app(scope, receive, send)
            return
        recorded: list[Message] = []
        disconnected = False

        def replaying() -> Receive:
            """Each attempt reads the body again: first what earlier attempts read, then the client's socket."""
            position = 0

            async def next_message() -> Message:
                nonlocal position, disconnected
                if position < len(recorded):
                    position += 1
                    return recorded[position - 1]
                message = await receive()
                if message["type"] == "http.disconnect":
                    disconnected = True
                else:
                    recorded.append(message)
                    position += 1
                return message

            return next_message

        retryable = scope.get("method") in _SAFE_METHODS or scope.get("path") in _SAFE_POSTS
        for attempt in range(self.attempts):
            outcome = _Outcome(send, attempt)
            try:
                await self.app(dict(scope), replaying(), outcome.send)
            except Exception as exc:
                log.warning("proxy error on %s %s: %r", scope.get("method"), scope.get("path"), exc)
            if outcome.started or disconnected or not retryable or attempt + 1 == self.attempts:
                break
            log.warning("%s %s: the replica died before answering; sending it again (attempt %d)",
                        scope.get("method"), scope.get("path"), attempt + 2)
            await asyncio.sleep(0.2 * (attempt + 1))
        if disconnected and not outcome.started:
            return
        if not outcome.started:
            body = _error_body("the replica serving this request stopped; retry later")
            await send({"type": "http.response.start", "status": 503, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(self.retry_after_s).encode()), MARK, *outcome.retried_header(),
            ]})
            await send({"type": "http.response.body", "body": body})
        elif not outcome.finished and outcome.event_stream and not disconnected:
            event = {"type": "error", "error": {"message": "the replica serving this stream stopped",
                                                "type": "server_error", "code": "replica_unavailable"}}
            await send({"type": "http.response.body", "body": f"data: {json.dumps(event)}\n\n".encode(),
                        "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        # a cut audio stream: return without the final message; the HTTP server then closes the connection


class _Outcome:
    """Watches one attempt's answer: whether it started, whether it finished, whether it is an event stream."""

    def __init__(self, send: Send, attempt: int) -> None:
        self._send = send
        self._attempt = attempt
        self.started = False
        self.finished = False
        self.event_stream = False

    def retried_header(self) -> list[tuple[bytes, bytes]]:
        """X-Fast-TTS-Retried: how many times the request was sent again (none on a first attempt)."""
        return [(RETRIED_HEADER, str(self._attempt).encode())] if self._attempt else []

    async def send(self, message: Message) -> None:
        """Pass one message to the client, marking the response and noting what it is."""
        if message["type"] == "http.response.start":
            headers = [*message.get("headers", []), MARK, *self.retried_header()]
            self.event_stream = any(name.lower() == b"content-type" and value.startswith(b"text/event-stream")
                                    for name, value in headers)
            message = {**message, "headers": headers}
            self.started = True
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.finished = True
        await self._send(message)


def proxy_middlewares() -> list[Any]:
    """The callback Ray Serve's proxies call (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH): the middleware list."""
    return [Middleware(ReplicaFaultMiddleware)]


def prepare_ray_environment(address: str | None) -> None:
    """Set what Ray reads from the environment at import and start: this middleware in the proxies of a cluster
    started from here; and for a local instance, or a cluster on this machine's loopback address, loopback binding
    (Ray otherwise turns 127.0.0.1 into the machine's address). Call it before importing Ray."""
    os.environ.setdefault(CALLBACK_ENV, CALLBACK_PATH)
    host = (address or "127.0.0.1").rpartition(":")[0] or address or ""
    if address is None or host in ("localhost", "::1", "[::1]") or host.startswith("127."):
        os.environ[LOOPBACK_ENV] = "0"
