"""What a model family hands to an LM backend: the decoder stack, how to embed tokens and read logits, and where
its weights live on disk.

ChatTTS's GPT is one (4 codebooks summed at the input, 4 heads at the output; or text mode with one), a Qwen2
G2P model is another (1 codebook, tied or untied lm_head). The torch backend calls `transformer`, `embed`, `logits`
and, when an adapter defines it, `prepare_for_backend(dtype, device, quantize=...)` (once, after the decoder was
moved), which lets a family set up a faster head for the backend's dtype and quantization. Engines that load
checkpoints themselves (vLLM, llama.cpp, MLX, SGLang) read `source` instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from fast_tts.models.transformer import Transformer


@dataclass(frozen=True)
class LMSource:
    """The on-disk checkpoint of an LM, for backends that load weights themselves.

    `folder` is a Hugging Face model folder (config.json + *.safetensors, tokenizer files when it has them).
    `stock_head` is True when the folder's own LM head computes the adapter's `logits` (a stock causal LM: an engine
    may run it whole, ids in and ids out); False when the family has heads of its own that the folder lacks (ChatTTS):
    an engine then runs the decoder body and hands back final-norm hidden states for the adapter's `logits`.
    """

    folder: Path
    stock_head: bool


@runtime_checkable
class LMAdapter(Protocol):
    """A causal LM as the backend sees it."""

    transformer: Transformer
    num_codebooks: int  # tokens sampled per step: 4 for ChatTTS code mode, 1 for text LMs
    source: LMSource | None  # where the weights live on disk; None when they were built in memory

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Input embeddings (B, T, H) for tokens (B, T, num_codebooks)."""
        ...

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_codebooks, vocab) for final-norm hidden states (B, H); float32."""
        ...
