"""`fast-tts` command line: speak text to a file or stdout, list voices, and start the server (fast_tts.server.cli).

User mistakes end with one line `fast-tts: error: ...` on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fast_tts.errors import FastTTSError

PROG = "fast-tts"


class _Usage(Exception):
    """A command-line mistake, reported as one line."""


def _fail(message: str, code: int = 2) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return code


class _Parser(argparse.ArgumentParser):
    """argparse that reports mistakes as a single line (no usage dump) with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _Usage(message)


def build_parser(with_serve_args: bool = False) -> argparse.ArgumentParser:
    """The argument parser; the server's options are added only when `serve` is asked for (keeps startup light)."""
    parser = _Parser(prog=PROG, description="Fast neural text-to-speech: speak, list voices, serve.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    speak = commands.add_parser("speak", help="synthesize text to an audio file (or stdout)")
    speak.add_argument("text", nargs="?", help="text to speak (or use -i FILE)")
    speak.add_argument("-i", "--input", help="read the text from this file ('-' for stdin)")
    speak.add_argument("-o", "--output", help="output file, or '-' for stdout (default: speech.<format>)")
    speak.add_argument("--voice", help="voice or speaker name (see `fast-tts voices`; default: each language to its "
                                       "voice)")
    speak.add_argument("--format", help="wav, mp3, opus, aac, flac or pcm (default: from the output suffix, else wav)")
    speak.add_argument("--speed", type=float, default=1.0, help="speaking rate, 0.25 to 4.0 (default 1.0)")
    speak.add_argument("--stream", action="store_true", help="write audio as it is made (with -o -: to stdout)")
    speak.add_argument("--model", help="model file or folder (default: the bundled voices)")
    speak.add_argument("--seed", type=int, help="reproducible output (Piper: noise-free synthesis)")
    speak.add_argument("--speakers-dir", help="speaker store to find custom speakers in (e.g. the server's)")
    speak.add_argument("--backend", help="LM backend of ChatTTS / MegaTTS3: torch (default), llama-cpp, mlx-lm, "
                                         "sglang (each but torch is an extra; see the README)")
    speak.add_argument("--backend-option", action="append", default=[], metavar="KEY=VALUE",
                       help="an option of that backend, e.g. dtype=bfloat16, quantize=int4 (torch) or gguf_type=q8_0 "
                            "(llama-cpp); repeatable")

    voices = commands.add_parser("voices", help="list the voices of a model and the languages they speak")
    voices.add_argument("--model", help="model file or folder (default: the bundled voices)")
    voices.add_argument("--speakers-dir", help="also list the custom speakers stored here")

    serve = commands.add_parser("serve", help="start the HTTP server (needs the 'server' extra)")
    if with_serve_args:
        from fast_tts.server.cli import add_serve_arguments

        add_serve_arguments(serve)
    return parser


def _read_text(args: argparse.Namespace) -> str:
    if args.text is not None and args.input is not None:
        raise _Usage("give the text or -i FILE, not both")
    if args.input is None:
        if args.text is None:
            raise _Usage("no text given: fast-tts speak TEXT, or -i FILE")
        text = args.text
    elif args.input == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(args.input).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise _Usage(f"input file not found: {args.input}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise _Usage(f"cannot read input file {args.input}: {exc}") from None
    if not text.strip():
        raise _Usage("input text is empty")
    return text


def _output(args: argparse.Namespace) -> tuple[Path | None, str]:
    """Resolve (path or None for stdout, format) and check the destination before any synthesis."""
    from fast_tts.audio import check_format, format_from_path

    fmt = check_format(args.format, field="format") if args.format else None
    if args.output == "-":
        return None, fmt or "wav"
    path = Path(args.output or f"speech.{fmt or 'wav'}")
    if fmt is None:
        fmt = format_from_path(path) if path.suffix else "wav"
    parent = path.resolve().parent
    if path.is_dir():
        raise _Usage(f"output {path} is a directory")
    if not parent.is_dir():
        raise _Usage(f"cannot write {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise _Usage(f"cannot write {path}: permission denied")
    return path, fmt


def _store(args: argparse.Namespace) -> dict[str, Any]:
    """Engine keywords: --speakers-dir (an existing folder: the CLI never creates one), and for the bundled voices
    `preload=False`, so a run loads only the voices its text needs."""
    kw: dict[str, Any] = {} if args.model else {"preload": False}
    if args.speakers_dir is None:
        return kw
    if not Path(args.speakers_dir).is_dir():
        raise _Usage(f"speakers folder not found: {args.speakers_dir}")
    return {**kw, "speakers_dir": args.speakers_dir}


async def _speak(args: argparse.Namespace) -> int:
    """Run `speak`: whole file, streamed file, or streamed stdout."""
    from fast_tts.audio import StreamEncoder, write_audio
    from fast_tts.engine.auto import AutoEngine, parse_backend_options

    text = _read_text(args)
    path, fmt = _output(args)
    options = _store(args)
    if args.backend is not None:
        options["backend"] = args.backend
    if args.backend_option:
        options["backend_options"] = parse_backend_options(args.backend_option)
    engine = AutoEngine(args.model, **options)
    bar: Any = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if path is None or total < 2:
            return
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="segment", file=sys.stderr, leave=False)
        bar.update(done - bar.n)

    params: dict[str, Any] = {"speed": args.speed, "seed": args.seed, "progress": progress}
    try:
        if args.stream:
            encoder = StreamEncoder(fmt, engine.sample_rate)
            stream = engine.speak_stream_async(text, args.voice, **params)
            chunk = await anext(stream, None)  # a mistake (voice, language) fails here, before a file is opened
            sink = sys.stdout.buffer if path is None else open(path, "wb")  # noqa: SIM115 - closed below
            samples = 0
            try:
                while chunk is not None:
                    samples += len(chunk)
                    sink.write(encoder.write(chunk))
                    sink.flush()
                    chunk = await anext(stream, None)
                sink.write(encoder.close())
                sink.flush()
            finally:
                await stream.aclose()
                if path is not None:
                    sink.close()
        else:
            audio = await engine.speak_async(text, args.voice, **params)
            samples = len(audio)
            if path is None:
                from fast_tts.audio import encode

                sys.stdout.buffer.write(encode(audio, engine.sample_rate, fmt))
                sys.stdout.buffer.flush()
            else:
                write_audio(audio, path, engine.sample_rate, fmt)
    finally:
        if bar is not None:
            bar.close()
        await engine.shutdown()
    if path is not None:
        seconds = samples / engine.sample_rate
        print(f"wrote {path.resolve()} ({seconds:.2f} s of audio, {fmt}, {engine.sample_rate} Hz)")
    return 0


async def _voices(args: argparse.Namespace) -> int:
    """Run `voices`: one voice per line, the default marked, then the languages it speaks where the engine says."""
    from fast_tts.engine.auto import AutoEngine

    engine = AutoEngine(args.model, **_store(args))
    try:
        rows = [(f"{name} (default)" if name == engine.default_voice else name, _languages(engine, name))
                for name in engine.list_speakers()]
        width = max(len(label) for label, _ in rows)
        for label, detail in rows:
            print(f"{label:<{width}}  {detail}" if detail else label)
    finally:
        await engine.shutdown()
    return 0


def _languages(engine: Any, name: str) -> str:
    """ "en, zh  (en: joe, zh: zf_xiaobei)" for a built-in voice of an engine that knows languages; "" otherwise."""
    from fast_tts.errors import UnknownVoiceError

    try:
        spoken = engine.voice_languages(name) if hasattr(engine, "voice_languages") else ()
    except UnknownVoiceError:  # a custom speaker
        return ""
    detail = ", ".join(spoken)
    if len(spoken) > 1 and hasattr(engine, "voice_routes"):
        detail += "  (" + ", ".join(f"{lang}: {voice}" for lang, voice in engine.voice_routes(name)) + ")"
    return detail


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `fast-tts`; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        serving = bool(argv) and argv[0] == "serve"
        try:
            parser = build_parser(with_serve_args=serving)
        except ImportError as exc:
            return _fail(f"`serve` needs the server extra (pip install 'fast-tts[server]'): {exc}")
        args = parser.parse_args(argv)
        if args.command == "serve":
            from fast_tts.server.cli import run_serve

            return int(run_serve(args) or 0)
        runner = _speak if args.command == "speak" else _voices
        return asyncio.run(runner(args))
    except _Usage as exc:
        return _fail(str(exc))
    except FastTTSError as exc:
        return _fail(str(exc))
    except BrokenPipeError:
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        return _fail(f"{type(exc).__name__}: {exc}", code=1)


if __name__ == "__main__":
    sys.exit(main())
