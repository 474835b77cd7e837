"""What a model family hands to an LM backend: the decoder stack plus how to embed tokens and read logits.

ChatTTS's GPT is one (4 codebooks summed at the input, 4 heads at the output; or text mode with one), a Qwen2
G2P model is another (1 codebook, tied or untied lm_head). Backends only ever call these three members, plus
`prepare_for_backend(dtype, device)` when an adapter defines it (called once, after the decoder was moved), which
lets a family set up a faster head for the backend's dtype.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from fast_tts.models.transformer import Transformer


@runtime_checkable
class LMAdapter(Protocol):
    """A causal LM as the backend sees it."""

    transformer: Transformer
    num_codebooks: int  # tokens sampled per step: 4 for ChatTTS code mode, 1 for text LMs

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Input embeddings (B, T, H) for tokens (B, T, num_codebooks)."""
        ...

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_codebooks, vocab) for final-norm hidden states (B, H); float32."""
        ...
