"""Prometheus metrics of one server: time to first audio, real-time factor, queue depth, active streams, statuses."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

# What /metrics answers with (the Prometheus text exposition format).
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"

_TTFA_BUCKETS = (0.025, 0.05, 0.1, 0.15, 0.25, 0.4, 0.6, 1.0, 1.5, 2.5, 4.0, 8.0, 15.0, 30.0)
_RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0, 8.0)


class _EngineStats:
    """Reads engine.stats() at scrape time, so the gauges are never stale."""

    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self._stats = stats

    def collect(self) -> Any:
        """Yield one gauge per numeric entry of engine.stats()."""
        try:
            stats = self._stats()
        except Exception:  # a failing stats() must not break the scrape
            return
        for key in ("queue_depth", "active", "capacity", "completed", "failed", "cancelled"):
            value = stats.get(key)
            if isinstance(value, (int, float)):
                yield GaugeMetricFamily(f"fast_tts_engine_{key}", f"engine.stats()['{key}']", value=float(value))


class _Families:
    """A collector that yields given metric families (to render parsed or relabelled metrics again)."""

    def __init__(self, families: Callable[[], Iterable[Metric]]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        """The families, as they are now."""
        yield from self._families()


def _with_labels(families: Iterable[Metric], labels: dict[str, str]) -> Iterator[Metric]:
    """The same families with `labels` added to every sample."""
    for family in families:
        labelled = Metric(family.name, family.documentation, family.type, family.unit)
        for sample in family.samples:
            labelled.add_sample(sample.name, {**labels, **sample.labels}, sample.value, sample.timestamp,
                                sample.exemplar)
        yield labelled


def merge_exposition(texts: Iterable[bytes | str]) -> bytes:
    """Several Prometheus text expositions as one: the samples of families with the same name are put together.

    For a server made of replicas: each replica's text carries its own `replica` label, so no sample collides.
    """
    merged: dict[str, Metric] = {}
    for text in texts:
        raw = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        for family in text_string_to_metric_families(raw):
            into = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type, family.unit))
            into.samples.extend(family.samples)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(lambda: merged.values()))
    return generate_latest(registry)


class ServerMetrics:
    """All metrics live in a registry of their own, so several apps in one process do not collide.

    `labels` are added to every sample on output (a replica of a scaled-out server sets `replica`).
    """

    def __init__(
        self, engine_stats: Callable[[], dict[str, Any]] | None = None, labels: dict[str, str] | None = None
    ) -> None:
        self.registry = CollectorRegistry()
        self._exposed = self.registry
        if labels:
            self._exposed = CollectorRegistry(auto_describe=False)
            self._exposed.register(_Families(lambda: _with_labels(self.registry.collect(), labels)))
        r = self.registry
        self.requests = Counter(
            "fast_tts_http_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.ttfa = Histogram(
            "fast_tts_time_to_first_audio_seconds",
            "From request arrival to the first audio chunk leaving the engine",
            ["route", "stream"], buckets=_TTFA_BUCKETS, registry=r,
        )
        self.rtf = Histogram(
            "fast_tts_real_time_factor",
            "Synthesis wall time divided by audio duration (lower is faster)",
            ["route", "stream"], buckets=_RTF_BUCKETS, registry=r,
        )
        self.audio_seconds = Counter("fast_tts_audio_seconds", "Seconds of audio produced", registry=r)
        self.active = Gauge("fast_tts_active_streams", "Requests holding a synthesis slot", registry=r)
        self.queued = Gauge("fast_tts_queue_depth", "Requests waiting for a synthesis slot", registry=r)
        self.rejected = Counter("fast_tts_rejected", "Requests refused with 429 (queue full)", registry=r)
        self.cancelled = Counter(
            "fast_tts_cancelled", "Syntheses cancelled because the client went away", registry=r
        )
        if engine_stats is not None:
            r.register(_EngineStats(engine_stats))

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self._exposed)


class StatusMiddleware:
    """Count every HTTP answer by route template (bounded label set) and status code."""

    def __init__(self, app: Any, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        counted = False

        async def counting_send(message: dict[str, Any]) -> None:
            nonlocal counted
            if message["type"] == "http.response.start" and not counted:
                counted = True
                route = scope.get("route")
                label = getattr(route, "path", None) or "unmatched"
                self.metrics.requests.labels(label, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)

