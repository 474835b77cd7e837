"""Build the FastAPI app around one engine: routes, error shapes, limits, metrics, and the engine's lifetime."""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles

from fast_tts import __version__
from fast_tts.server.config import ServerConfig
from fast_tts.server.limits import AdmissionGate, AuthMiddleware, BodyLimitMiddleware
from fast_tts.server.metrics import ServerMetrics, StatusMiddleware
from fast_tts.server.problems import install_error_handlers
from fast_tts.server.routes import native, openai, speakers, web
from fast_tts.server.state import ServerState

log = logging.getLogger("fast_tts.server")

# Which field a too-large body is blamed on, per route (the test and the user both want a name, not "body").
_BODY_PARAMS = {
    "/v1/audio/speech": "input",
    "/api/speak": "text",
    "/api/clone": "reference_audio",
    "/api/speakers": "audio",
}


@dataclass
class Replica:
    """How one replica of a scaled-out server (fast_tts.server.ray_serve) differs from a lone server."""

    name: str  # its `replica` label on metrics and its X-Fast-TTS-Replica response header
    running: Callable[[ServerState], AbstractAsyncContextManager[None]]  # held while it serves (publishes its metrics)
    metrics: Callable[[ServerState], Awaitable[bytes]]  # what /metrics answers: every replica's, plus the platform's


class _ReplicaHeader:
    """Name the answering replica in an X-Fast-TTS-Replica header on every response."""

    def __init__(self, app: Any, name: str) -> None:
        self.app = app
        self.header = (b"x-fast-tts-replica", name.encode())

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def named_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, named_send)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema without the validation-error body it adds on its own: every error here is ErrorResponse."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.get("responses", {})
                for status, response in list(responses.items()):
                    if "HTTPValidationError" in str(response.get("content", {})):
                        del responses[status]
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema


def create_app(
    engine_factory: Callable[[], Any], config: ServerConfig | None = None, replica: Replica | None = None
) -> FastAPI:
    """An app that builds its engine at startup (inside the server's event loop) and shuts it down at exit."""
    config = config or ServerConfig()
    labels = {"replica": replica.name} if replica is not None else None
    metrics = ServerMetrics(engine_stats=lambda: app.state.tts.engine.stats(), labels=labels)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = engine_factory()
        if inspect.isawaitable(engine):
            engine = await engine
        gate = AdmissionGate(config.max_concurrency, config.max_queue, config.queue_timeout_s, metrics)
        state = ServerState(engine=engine, config=config, metrics=metrics, gate=gate)
        if replica is not None:
            state.render_metrics = lambda: replica.metrics(state)
        app.state.tts = state
        log.info("serving %s (%s Hz, default voice %s)", engine.family, engine.sample_rate, engine.default_voice)
        try:
            if replica is None:
                yield
            else:
                async with replica.running(state):
                    yield
        finally:
            await engine.shutdown()

    app = FastAPI(title="fast-tts", version=__version__, lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(openai.router)
    app.include_router(native.router)
    app.include_router(speakers.router)
    app.include_router(web.router)
    app.mount("/static", StaticFiles(directory=web.STATIC_DIR), name="static")
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    # add_middleware puts each new one outside the previous: the status counter sees 401s and 413s too.
    app.add_middleware(BodyLimitMiddleware, json_cap=config.max_json_bytes, multipart_cap=config.max_multipart_bytes,
                       params=_BODY_PARAMS)
    app.add_middleware(AuthMiddleware, api_key=config.api_key)
    app.add_middleware(StatusMiddleware, metrics=metrics)
    if replica is not None:
        app.add_middleware(_ReplicaHeader, name=replica.name)
    return app
