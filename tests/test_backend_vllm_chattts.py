"""ChatTTS and vLLM: `Chat.load(use_vllm=True)` runs the GPT on the torch backend, says so, and sounds the same.

vLLM samples one token per sequence per step and hands back no hidden states; ChatTTS's GPT samples four codebooks
jointly and feeds their summed embeddings back (README, "vLLM backend"). An explicit backend="vllm" for ChatTTS is
refused at construction (tests/test_backend_vllm.py, on the real engine).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from chattts_checkpoint import build_checkpoint
from test_chattts_loader import SMALL_DIMS

import fast_tts as ChatTTS
from fast_tts.backends.torch_backend import TorchBackend


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("chattts_small_vllm")
    build_checkpoint(root, SMALL_DIMS, seed=3)
    return root


def _speak(ckpt: Path, **load: object) -> tuple[ChatTTS.Chat, np.ndarray]:
    chat = ChatTTS.Chat()
    assert chat.load(source="custom", custom_path=str(ckpt), device="cpu", dtype="float32", **load)
    params = ChatTTS.Chat.InferCodeParams(manual_seed=5, max_new_token=12, show_tqdm=False)
    wavs = chat.infer(["hello"], skip_refine_text=True, params_infer_code=params)
    return chat, wavs[0]


def test_use_vllm_runs_the_gpt_on_the_torch_backend_and_says_so(small_ckpt: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        chat, wav = _speak(small_ckpt, use_vllm=True)
    try:
        assert isinstance(chat.runtime.code_gen, TorchBackend)
        assert any("use_vllm=True" in r.getMessage() and "torch" in r.getMessage() for r in caplog.records)
    finally:
        chat.unload()
    plain, want = _speak(small_ckpt)
    plain.unload()
    assert wav.size > 0 and np.array_equal(wav, want)
