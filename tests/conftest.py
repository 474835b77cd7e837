"""Shared test settings: a fixed small thread count so timings and float results are stable on 2 cores."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # the Piper-only install has no torch
    pass
