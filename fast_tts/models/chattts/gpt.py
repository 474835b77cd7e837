"""ChatTTS GPT: text + 4-codebook embeddings, weight-normed heads, prompt embedding, and LM adapters for backends.

Checkpoint names are those of `asset/Embed.safetensors`; the weight-norm pairs (`parametrizations.weight.original0`
= g, `original1` = v) are folded into plain Linear weights W = g * v / ||v|| once, at load time.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fast_tts.models.chattts.config import EmbedConfig
from fast_tts.models.lm import LMSource
from fast_tts.models.transformer import KVCache, Transformer

WN_G, WN_V = "parametrizations.weight.original0", "parametrizations.weight.original1"


def _fold_weight_norm(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    """Replace each (g, v) weight-norm pair of the checkpoint by W = g * v / ||v|| (norm per output row)."""
    for g_key in [k for k in state_dict if k.startswith(prefix) and k.endswith(WN_G)]:
        base = g_key[: -len(WN_G)]
        v_key = base + WN_V
        if v_key not in state_dict:
            continue
        g, v = state_dict.pop(g_key), state_dict.pop(v_key)
        norm = v.reshape(v.shape[0], -1).norm(dim=1).reshape(g.shape)
        state_dict[base + "weight"] = v * (g / norm)


class ChatTTSEmbed(nn.Module):
    """`emb_code[q]`, `emb_text`, `head_code[q]`, `head_text` of ChatTTS."""

    def __init__(self, cfg: EmbedConfig) -> None:
        super().__init__()
        self.num_vq = cfg.num_vq
        h = cfg.hidden_size
        self.emb_code = nn.ModuleList(nn.Embedding(cfg.num_audio_tokens, h) for _ in range(cfg.num_vq))
        self.emb_text = nn.Embedding(cfg.num_text_tokens, h)
        self.head_text = nn.Linear(h, cfg.num_text_tokens, bias=False)
        self.head_code = nn.ModuleList(nn.Linear(h, cfg.num_audio_tokens, bias=False) for _ in range(cfg.num_vq))
        self.register_load_state_dict_pre_hook(_fold_weight_norm)

    def code_embedding(self, ids: torch.Tensor) -> torch.Tensor:
        """Sum of the codebook embeddings: ids (..., num_vq) -> (..., H)."""
        return torch.stack([emb(ids[..., q]) for q, emb in enumerate(self.emb_code)], dim=-2).sum(-2)

    def code_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits (..., num_vq, num_audio_tokens) of the 4 code heads."""
        return torch.stack([head(hidden) for head in self.head_code], dim=-2).float()

    def text_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits (..., num_text_tokens) of the text head."""
        return self.head_text(hidden).float()

    def forward(self, input_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """`prompt_embedding` (calling the module embeds a prompt, as the reference's `chat.embed(ids, text_mask)`)."""
        return self.prompt_embedding(input_ids, text_mask)

    def prompt_embedding(self, input_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings (B, L, H): `emb_text` where text_mask, else the code sum (padding and audio codes).

        input_ids is (B, L, num_vq), or (B, L, 1) for a text-only prompt (the id then stands in every slot).
        """
        text_mask = text_mask.bool()
        input_ids = input_ids.expand(-1, -1, self.num_vq)
        text = self.emb_text(input_ids[..., 0].masked_fill(~text_mask, 0))
        code = self.code_embedding(input_ids.masked_fill(text_mask[..., None], 0))
        return torch.where(text_mask[..., None], text, code)


def inject_speaker(emb: torch.Tensor, ids: torch.Tensor, spk_vector: torch.Tensor, spk_emb_id: int) -> torch.Tensor:
    """Replace the embedding at every `[spk_emb]` position (ids (B, L)) by the (normalised) speaker vector."""
    hit = (ids == spk_emb_id)[..., None]
    return torch.where(hit, spk_vector.to(emb.dtype), emb)


def compact_left_padding(emb: torch.Tensor,
                         attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded (B, L, H) -> tokens moved to the front of each row, positions 0..L-1 and per-row lengths.

    The cache then holds each row's prompt at positions 0..n-1, as if the row ran alone; the padding slots sit at
    positions >= n and are overwritten by later steps before any query can see them.
    """
    b, seq = attention_mask.shape
    lengths = attention_mask.long().sum(1)
    cols = torch.arange(seq, device=emb.device)
    src = (cols[None, :] + (seq - lengths)[:, None]) % seq
    moved = torch.gather(emb, 1, src[..., None].expand(-1, -1, emb.shape[-1]))
    return moved, cols.expand(b, seq), lengths


class ChatTTSGPT(nn.Module):
    """The Llama stack (shared Transformer) with ChatTTS's embeddings and heads."""

    def __init__(self, transformer: Transformer, embed: ChatTTSEmbed) -> None:
        super().__init__()
        self.transformer = transformer
        self.embed = embed
        self.source: LMSource | None = None  # the asset/gpt folder, set by the loader (its heads are in Embed)

    def prefill(self, emb: torch.Tensor, attention_mask: torch.Tensor,
                cache: KVCache) -> tuple[torch.Tensor, torch.Tensor]:
        """Run left-padded prompt embeddings through the stack into rows 0..B-1 of `cache`.

        Returns the final-norm hidden state of each row's last prompt token (B, H) and the row lengths (B,), which
        are the positions of each row's next token.
        """
        moved, positions, lengths = compact_left_padding(emb, attention_mask)
        hidden = self.transformer(moved, positions, cache)
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]
        return last, lengths

    def step(self, emb: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One decode step: embeddings (B, H) at positions (B,) -> final-norm hidden states (B, H)."""
        return self.transformer(emb[:, None], positions[:, None], cache)[:, 0]


class CodeLM:
    """LMAdapter for code mode: embed = sum of the 4 codebook tables, logits = the 4 code heads (B, 4, 626)."""

    def __init__(self, gpt: ChatTTSGPT) -> None:
        self.transformer = gpt.transformer
        self.num_codebooks = gpt.embed.num_vq
        self.source = gpt.source
        self._embed = gpt.embed
        self._head: nn.Module | None = None  # set by `prepare_for_backend`

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, 4) code ids -> (B, T, H)."""
        return self._embed.code_embedding(tokens)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, H) -> (B, 4, num_audio_tokens), float32."""
        if self._head is not None:
            return self._head(hidden).reshape(hidden.shape[0], self.num_codebooks, -1)
        return self._embed.code_logits(hidden)

    def prepare_for_backend(self, dtype: torch.dtype, device: torch.device, quantize: str | None = None) -> None:
        """Run the 4 heads as one float32 layer on the native kernel where it runs (see `native_head`)."""
        self._head = native_head(list(self._embed.head_code), device)


class TextLM:
    """LMAdapter for text (refine) mode: embed = `emb_text`, logits = `head_text` as (B, 1, num_text_tokens)."""

    def __init__(self, gpt: ChatTTSGPT) -> None:
        self.transformer = gpt.transformer
        self.num_codebooks = 1
        self.source = gpt.source
        self._embed = gpt.embed
        self._head: nn.Module | None = None  # set by `prepare_for_backend`

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, 1) text ids -> (B, T, H)."""
        return self._embed.emb_text(tokens[..., 0])

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, H) -> (B, 1, num_text_tokens), float32."""
        if self._head is not None:
            return self._head(hidden)[:, None]
        return self._embed.text_logits(hidden)[:, None]

    def prepare_for_backend(self, dtype: torch.dtype, device: torch.device, quantize: str | None = None) -> None:
        """Run the text head on the native kernel where it runs (see `native_head`)."""
        self._head = native_head([self._embed.head_text], device)


def native_head(heads: list[nn.Linear], device: torch.device) -> nn.Module | None:
    """`heads` stacked into one float32 layer on the native kernel, for a backend's decode steps on CPU.

    A step's head is a product of a few rows with a large float32 matrix (the text head alone is 65 MB), bound by
    how fast the weights stream: the native kernel reads them at the memory bandwidth, torch's float32 product at
    small batch a fraction of it. Each output stays one float32 dot product. None where the kernel does not run.
    """
    from fast_tts.kernels.linear import TiledF32Linear, linear_around, native_available, tiled_layout_fits

    if device.type != "cpu" or not native_available(torch.float32):
        return None
    fused = linear_around(torch.cat([head.weight.detach().float() for head in heads]))
    return TiledF32Linear(fused) if tiled_layout_fits(fused) else None
