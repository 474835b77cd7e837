"""`fast-tts serve`: the flags and the entry point (fast_tts.cli imports these lazily)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from fast_tts.server.config import ServerConfig, parse_aliases


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the serve flags to `parser`."""
    parser.add_argument("--model", default=None, help="model folder (default: the bundled Piper voice)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every route")
    parser.add_argument("--max-text-chars", type=int, default=4096, help="longest accepted input text")
    parser.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted uploaded file")
    parser.add_argument("--max-concurrency", type=int, default=8, help="syntheses running at once")
    parser.add_argument("--engine-concurrency", type=int, default=None,
                        help="requests the engine interleaves (default: --max-concurrency, so each admitted request "
                             "makes progress and gets its first audio early)")
    parser.add_argument("--max-queue", type=int, default=64, help="requests waiting for a slot before 429")
    parser.add_argument("--queue-timeout", type=float, default=120.0, help="seconds a request may wait (then 503)")
    parser.add_argument("--allow-url-audio", action="store_true", help="allow reference audio given as a URL")
    parser.add_argument("--speakers-dir", default=None,
                        help="where saved speakers live (default $XDG_DATA_HOME/fast-tts/speakers)")
    parser.add_argument("--model-name", default=None, help="model id reported by /v1/models")
    parser.add_argument("--backend", default=None,
                        help="LM backend of ChatTTS / MegaTTS3: torch (default), llama-cpp, mlx-lm, sglang (each but "
                             "torch is an extra; see the README)")
    parser.add_argument("--backend-option", action="append", default=[], metavar="KEY=VALUE",
                        help="an option of that backend, e.g. dtype=bfloat16, quantize=int4 (torch) or "
                             "gguf_type=q8_0 (llama-cpp); repeatable")
    parser.add_argument("--voice-alias", action="append", default=[], metavar="NAME=VOICE",
                        help="map an OpenAI voice name (alloy, nova, ...) to one of ours; repeatable")
    parser.add_argument("--openai-pcm-rate", type=int, default=24000,
                        help="sample rate of response_format=pcm on /v1 (OpenAI's is 24000; 0 = the model's own)")
    parser.add_argument("--stream-lead", type=float, default=0.0, metavar="SECONDS",
                        help="pace streams to stay at most this much audio ahead of real time (0: as fast as "
                             "possible); under load the CPU then goes to other requests' first audio")
    parser.add_argument("--max-audio-seconds", type=float, default=300.0,
                        help="longest uploaded reference audio, decoded (refused while decoding past it)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    ray = parser.add_argument_group("scale out on Ray Serve (pip install 'fast-tts[ray]')")
    ray.add_argument("--ray", action="store_true",
                     help="serve with Ray Serve: replicas that each hold an engine, behind Serve's HTTP proxy "
                          "on --host/--port")
    ray.add_argument("--replicas", type=int, default=1, help="fixed number of replicas (default 1)")
    ray.add_argument("--autoscale", default=None, metavar="MIN:MAX",
                     help="scale between MIN and MAX replicas on the requests each replica has in hand")
    ray.add_argument("--target-ongoing", type=float, default=None, metavar="N",
                     help="with --autoscale: requests per replica to aim for (default: --max-concurrency)")
    ray.add_argument("--scale-delays", default="10:120", metavar="UP:DOWN",
                     help="with --autoscale: seconds load must stay high before adding a replica, and low before "
                          "removing one (default 10:120)")
    ray.add_argument("--ray-address", default=None, metavar="ADDR",
                     help="join this Ray cluster (host:port of its head); default: start a local Ray instance "
                          "bound to 127.0.0.1")
    ray.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs Ray reserves for each replica")
    ray.add_argument("--replica-gpus", type=float, default=0.0, help="GPUs Ray reserves for each replica")


class _OptionsParser(argparse.ArgumentParser):
    """A parser for serve options that come from a file or another process: mistakes raise ValueError."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ValueError(message)


def _serve_parser() -> argparse.ArgumentParser:
    parser = _OptionsParser(prog="fast-tts serve", add_help=False)
    add_serve_arguments(parser)
    return parser


def serve_options(args: argparse.Namespace) -> dict[str, Any]:
    """The serve flags in `args` as a plain dict (JSON-safe), for the replicas of a scaled-out server."""
    names = {action.dest for action in _serve_parser()._actions}
    return {key: value for key, value in vars(args).items() if key in names}


def parse_serve_options(options: dict[str, Any]) -> argparse.Namespace:
    """Flags given as a dict ({"model": "/m", "replicas": 2, "allow_url_audio": true}) parsed like the command line;
    ValueError names an unknown or malformed one."""
    parser = _serve_parser()
    actions = {action.dest: action for action in parser._actions}
    argv: list[str] = []
    for key, value in options.items():
        action = actions.get(key)
        if action is None or not action.option_strings:
            raise ValueError(f"unknown serve option {key!r}")
        flag = action.option_strings[-1]
        if isinstance(action, argparse._StoreTrueAction):
            if not isinstance(value, bool):
                raise ValueError(f"serve option {key!r} must be true or false")
            argv += [flag] if value else []
        elif value is None:
            continue
        elif isinstance(value, (list, tuple)):
            for item in value:
                argv += [flag, str(item)]
        else:
            argv += [flag, str(value)]
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The ServerConfig the flags describe (ValueError on a malformed alias)."""
    return ServerConfig(
        api_key=args.api_key or None,
        max_text_chars=args.max_text_chars,
        max_upload_mb=args.max_upload_mb,
        max_concurrency=args.max_concurrency,
        max_queue=args.max_queue,
        queue_timeout_s=args.queue_timeout,
        allow_url_audio=args.allow_url_audio,
        model_name=args.model_name,
        openai_pcm_rate=args.openai_pcm_rate or None,
        stream_lead_s=max(0.0, args.stream_lead),
        voice_aliases=parse_aliases(args.voice_alias),
        max_audio_seconds=args.max_audio_seconds,
    )


def default_speakers_dir() -> Path:
    """$XDG_DATA_HOME/fast-tts/speakers (~/.local/share/... when unset): speakers outlive the process."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "fast-tts" / "speakers"


def engine_factory(args: argparse.Namespace) -> Any:
    """Build the engine inside uvicorn's event loop (engines may bind loop resources at construction); a malformed
    --backend-option is an InvalidInputError now, before anything starts."""
    from fast_tts.engine.auto import parse_backend_options

    backend: dict[str, Any] = {"backend": args.backend} if args.backend is not None else {}
    if args.backend_option:
        backend["backend_options"] = parse_backend_options(args.backend_option)

    def build() -> Any:
        from fast_tts.engine.auto import AutoEngine

        return AutoEngine(
            model_path=args.model,
            speakers_dir=args.speakers_dir or default_speakers_dir(),
            max_concurrency=args.engine_concurrency or args.max_concurrency,
            **backend,
        )

    return build


def run_serve(args: argparse.Namespace) -> int:
    """Serve until interrupted; returns the exit status."""
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
        factory = engine_factory(args)
    except ValueError as exc:  # InvalidInputError included
        logging.getLogger("fast_tts.server").error("%s", exc)
        return 2
    if args.ray:
        from fast_tts.server.ray_proxy import prepare_ray_environment

        prepare_ray_environment(args.ray_address)
        try:
            from fast_tts.server.ray_serve import run_on_ray
        except ImportError as exc:
            logging.getLogger("fast_tts.server").error(
                "--ray needs Ray Serve: pip install 'fast-tts[ray]' (%s)", exc)
            return 2
        return run_on_ray(args)
    import uvicorn

    from fast_tts.server.app import create_app

    app = create_app(factory, config)
    server = uvicorn.Server(uvicorn.Config(
        app, host=args.host, port=args.port, log_level=args.log_level, access_log=args.log_level == "debug",
        timeout_graceful_shutdown=5, lifespan="on",
    ))
    server.run()
    return 0 if server.started else 1
