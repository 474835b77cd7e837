"""`fast-tts serve --ray`: the same HTTP app on Ray Serve, as replicas that each hold an engine.

Every replica runs the whole app of fast_tts.server.app (routes, key, limits, streaming, web page) around its own
engine; Serve's HTTP proxy on each node routes requests to the replica with the fewest in hand, streams responses
back, and cancels a request on its replica when the client goes away (the app then stops the generation).

State the replicas share:
  - speakers: one speaker store directory (`--speakers-dir`, on a file system every node mounts); the engine checks
    a cached speaker against the store on each use, so an add, replace or delete through any replica counts at once;
  - metrics: each replica labels its metrics `replica="<id>"` and publishes them every few seconds to a small named
    actor (`MetricsBoard`); /metrics, whichever replica answers it, reports every live replica plus Serve's own
    `ray_serve_*` metrics read from each node's Ray metrics endpoint.
Faults: see fast_tts.server.ray_proxy (loaded into Serve's proxies through an environment variable).

The same application serves from a Serve config file or a KubeRay RayService: import path
`fast_tts.server.ray_serve:build_app`, args = the serve flags with underscores (`{"model": "/models/x",
"replicas": 2}`); see deploy/rayservice.yaml.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import ray
from ray import serve

from fast_tts.server.app import Replica, create_app
from fast_tts.server.cli import config_from_args, engine_factory, parse_serve_options, serve_options
from fast_tts.server.metrics import merge_exposition
from fast_tts.server.ray_proxy import CALLBACK_ENV, CALLBACK_PATH, MARK_HEADER
from fast_tts.server.state import ServerState

log = logging.getLogger("fast_tts.server")

APP_NAME = "fast-tts"
DEPLOYMENT_NAME = "FastTTS"
SERVE_NAMESPACE = "serve"
PUBLISH_EVERY_S = 5.0  # how often a replica sends its metrics to the board
FORGET_AFTER_S = 3 * PUBLISH_EVERY_S  # a replica silent this long is gone (killed, or scaled down)


@ray.remote(num_cpus=0)
class MetricsBoard:
    """The latest metrics text of each replica, so that whichever replica answers /metrics can report all of them."""

    def __init__(self) -> None:
        self._texts: dict[str, tuple[float, bytes]] = {}

    def put(self, replica: str, text: bytes) -> None:
        """Record `replica`'s current metrics."""
        self._texts[replica] = (time.monotonic(), text)

    def drop(self, replica: str) -> None:
        """Forget a replica that is shutting down."""
        self._texts.pop(replica, None)

    def texts(self) -> list[bytes]:
        """The metrics of every replica heard from recently."""
        now = time.monotonic()
        self._texts = {r: (t, text) for r, (t, text) in self._texts.items() if now - t < FORGET_AFTER_S}
        return [text for _, text in self._texts.values()]


def _board(app_name: str) -> Any:
    """The app's metrics board, created by the first replica that asks (detached: it outlives any one replica)."""
    return MetricsBoard.options(  # type: ignore[attr-defined]
        name=f"{app_name}-metrics", namespace=SERVE_NAMESPACE, get_if_exists=True, lifetime="detached"
    ).remote()


def _serve_lines(text: str) -> str:
    """Only the ray_serve_* families of a Ray node's metrics exposition."""
    keep = []
    for line in text.splitlines():
        name = line.split(" ", 3)[2] if line.startswith(("# HELP ", "# TYPE ")) else line
        if name.startswith("ray_serve_"):
            keep.append(line)
    return "\n".join(keep) + "\n" if keep else ""


async def _serve_metrics() -> list[bytes]:
    """Serve's own metrics, from the Ray metrics endpoint of every live node (nodes that do not answer are skipped)."""
    nodes = await asyncio.to_thread(ray.nodes)
    urls = [f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics"
            for n in nodes if n.get("Alive") and n.get("MetricsExportPort")]
    texts = []
    async with httpx.AsyncClient(timeout=3.0) as client:
        for url in urls:
            try:
                response = await client.get(url)
                response.raise_for_status()
            except httpx.HTTPError as exc:
                log.warning("no Serve metrics from %s: %s", url, exc)
                continue
            texts.append(_serve_lines(response.text).encode())
    return texts


def _replica(name: str, app_name: str) -> Replica:
    """The replica hooks of fast_tts.server.app: publish this replica's metrics, report everyone's."""
    board = _board(app_name)

    @contextlib.asynccontextmanager
    async def running(state: ServerState) -> AsyncIterator[None]:
        async def publish() -> None:
            while True:
                try:
                    await board.put.remote(name, state.metrics.render())
                except Exception as exc:
                    log.warning("could not publish metrics: %s", exc)
                await asyncio.sleep(PUBLISH_EVERY_S)

        task = asyncio.create_task(publish())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(Exception):
                await board.drop.remote(name)

    async def metrics(state: ServerState) -> bytes:
        own = state.metrics.render()
        try:
            await board.put.remote(name, own)
            texts = await board.texts.remote()
        except Exception as exc:
            log.warning("metrics board unavailable: %s", exc)
            texts = [own]
        try:
            texts += await _serve_metrics()
        except Exception as exc:
            log.warning("could not read Serve's metrics: %s", exc)
        return merge_exposition(texts)

    return Replica(name=name, running=running, metrics=metrics)


@serve.ingress()
class FastTTSReplica:
    """One replica: the whole fast-tts app around its own engine, built when Serve starts the replica."""

    def __init__(self, options: dict[str, Any]) -> None:
        self._args = parse_serve_options(options)

    def __serve_build_asgi_app__(self) -> Any:
        """Called by Serve inside the replica: the app, its engine built at the app's startup."""
        logging.getLogger("fast_tts").setLevel(self._args.log_level.upper())
        context = serve.get_replica_context()
        replica = _replica(context.replica_id.unique_id, context.app_name)
        return create_app(engine_factory(self._args), config_from_args(self._args), replica=replica)


def _pair(text: str, flag: str, kind: type) -> tuple[Any, Any]:
    """'A:B' -> (kind(A), kind(B)); ValueError naming the flag otherwise."""
    first, sep, second = str(text).partition(":")
    try:
        if not sep:
            raise ValueError
        return kind(first), kind(second)
    except ValueError:
        raise ValueError(f"{flag} expects A:B, got {text!r}") from None


def deployment_options(args: argparse.Namespace) -> dict[str, Any]:
    """Serve's options for the replicas: how many (or how to scale), their resources, how many requests each takes."""
    if args.replica_cpus < 0 or args.replica_gpus < 0:
        raise ValueError("--replica-cpus and --replica-gpus must not be negative")
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": args.replica_cpus, "num_gpus": args.replica_gpus},
        # every request the app's own gate can hold (running + queued) plus room for health checks and scrapes:
        # the gate, not Serve, decides 429 and 503, as in a lone server
        "max_ongoing_requests": args.max_concurrency + args.max_queue + 8,
        "max_constructor_retry_count": 3,  # a replica that cannot load its model fails the deployment soon
    }
    if args.autoscale:
        low, high = _pair(args.autoscale, "--autoscale", int)
        if not 0 <= low <= high or high < 1:
            raise ValueError(f"--autoscale needs 0 <= MIN <= MAX and MAX >= 1, got {args.autoscale}")
        up, down = _pair(args.scale_delays, "--scale-delays", float)
        if up < 0 or down < 0:
            raise ValueError("--scale-delays must not be negative")
        options["autoscaling_config"] = {
            "min_replicas": low,
            "max_replicas": high,
            "initial_replicas": max(low, 1),
            "target_ongoing_requests": args.target_ongoing or args.max_concurrency,
            "upscale_delay_s": up,
            "downscale_delay_s": down,
            "look_back_period_s": max(2.0, min(30.0, down)),  # decide on load no older than the wait asked for
        }
    else:
        if args.replicas < 1:
            raise ValueError("--replicas must be at least 1")
        options["num_replicas"] = args.replicas
    return options


def application(args: argparse.Namespace) -> Any:
    """The Serve application for these serve flags."""
    deployment = serve.deployment(FastTTSReplica, name=DEPLOYMENT_NAME).options(**deployment_options(args))
    return deployment.bind(serve_options(args))


def build_app(args: dict[str, Any]) -> Any:
    """Application builder for Serve config files and KubeRay: `args` are serve flags with underscores."""
    return application(parse_serve_options(dict(args)))


class _Stop:
    """SIGINT/SIGTERM set a flag (a handler that takes no lock cannot deadlock); Ray's own start replaces the SIGTERM
    handler, so `install` runs again after it."""

    def __init__(self) -> None:
        self.requested = False
        self.install()

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.requested = True

    def wait(self) -> None:
        """Block until a signal came (at once if one already did)."""
        while not self.requested:
            time.sleep(0.2)


def _check_proxy(url: str, api_key: str | None) -> None:
    """Warn when the cluster's Serve proxies lack fast-tts's fault middleware (ray start without its variable)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(f"{url}/health", headers=headers, timeout=30.0)
    except httpx.HTTPError as exc:
        log.warning("could not reach %s/health: %s (on a cluster where Serve already runs, its proxies keep the "
                    "host and port they were started with)", url, exc)
        return
    if MARK_HEADER.decode() not in response.headers:
        log.warning("this cluster's Serve proxies run without fast-tts's fault handling; start its nodes with "
                    "%s=%s so that requests of a dead replica are retried or answered 503", CALLBACK_ENV,
                    CALLBACK_PATH)


def run_on_ray(args: argparse.Namespace) -> int:
    """`fast-tts serve --ray`: deploy on Ray Serve (a local instance unless --ray-address), serve until a signal."""
    try:
        app = application(args)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    local = not args.ray_address  # fast_tts.server.cli set the environment for this before importing Ray
    stop = _Stop()  # a signal during start-up still ends in the clean-up below
    if local:
        ray.init(include_dashboard=False, log_to_driver=args.log_level == "debug")
    else:
        try:
            ray.init(address=args.ray_address, log_to_driver=args.log_level == "debug")
        except Exception as exc:
            log.error("cannot join the Ray cluster at %s: %s%s", args.ray_address, exc.__class__.__name__,
                      " (a cluster with token authentication needs RAY_AUTH_MODE=token and its token in "
                      "RAY_AUTH_TOKEN or ~/.ray/auth_token)" if "auth" in str(exc).lower() else f": {exc}")
            return 2
    stop.install()
    log.info("Ray at %s (%s)", ray.get_runtime_context().gcs_address,
             "a local instance" if local else "joined cluster")
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        url = f"http://{args.host}:{args.port}"
        if not stop.requested:
            _check_proxy(url, args.api_key)
            log.info("serving on Ray Serve at %s", url)
        stop.wait()
    finally:
        log.info("stopping")
        with contextlib.suppress(Exception):
            serve.delete(APP_NAME)
        with contextlib.suppress(Exception):
            ray.kill(ray.get_actor(f"{APP_NAME}-metrics", namespace=SERVE_NAMESPACE))
        if local:
            with contextlib.suppress(Exception):
                serve.shutdown()
        ray.shutdown()
    return 0
