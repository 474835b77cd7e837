"""Shared test settings: a fixed small thread count so timings and float results are stable on 2 cores."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# A process reads Ray's settings from the environment once, when it first imports Ray, and several test modules
# import it: set them here, before any of them, whatever the collection order. Test clusters bind to 127.0.0.1 with
# fast-tts's proxy middleware; Ray 2.60 gives a ray.init() cluster token authentication, so this process's client
# and the servers that join tests/test_ray_serve.py's cluster use it too.
try:
    from fast_tts.server.ray_proxy import prepare_ray_environment

    prepare_ray_environment(None)
    os.environ.setdefault("RAY_AUTH_MODE", "token")
except ImportError:  # an install without the server extra
    pass

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # the Piper-only install has no torch
    pass
