"""`python -m fast_tts.server`: the same as `fast-tts serve`."""

from __future__ import annotations

import argparse
import sys

from fast_tts.server.cli import add_serve_arguments, run_serve


def main() -> int:
    """Parse the serve flags and run."""
    parser = argparse.ArgumentParser(prog="python -m fast_tts.server", description="fast-tts HTTP server")
    add_serve_arguments(parser)
    return run_serve(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
