"""MegaTTS3 aligner: a Whisper-style encoder/decoder that reads a prompt's mel and emits phones with end frames.

Greedy decoding keeps a per-layer KV cache for self-attention and computes the cross-attention keys/values once,
so each step costs one token instead of re-running the whole prefix (what the reference does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fast_tts.models.megatts3.phones import ALIGN_BOS, ALIGN_EOS

N_STATE, N_HEAD, N_LAYER = 512, 8, 6
N_AUDIO_CTX, N_TEXT_CTX, N_VOCAB = 3000, 2048, 6800
MAX_STEPS = 768


class LayerNorm(nn.LayerNorm):
    """LayerNorm evaluated in float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class MultiHeadAttention(nn.Module):
    """Whisper attention: key projection without bias, SDPA with its default scale."""

    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Linear(N_STATE, N_STATE)
        self.key = nn.Linear(N_STATE, N_STATE, bias=False)
        self.value = nn.Linear(N_STATE, N_STATE)
        self.out = nn.Linear(N_STATE, N_STATE)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], N_HEAD, -1).transpose(1, 2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
        out = F.scaled_dot_product_attention(self.heads(q), k, v, is_causal=causal)
        return self.out(out.transpose(1, 2).flatten(2))


class Block(nn.Module):
    """Pre-LN residual block: self-attention, optional cross-attention, GELU MLP."""

    def __init__(self, cross: bool) -> None:
        super().__init__()
        self.attn = MultiHeadAttention()
        self.attn_ln = LayerNorm(N_STATE)
        self.cross_attn = MultiHeadAttention() if cross else None
        self.cross_attn_ln = LayerNorm(N_STATE) if cross else None
        self.mlp = nn.Sequential(nn.Linear(N_STATE, 4 * N_STATE), nn.GELU(), nn.Linear(4 * N_STATE, N_STATE))
        self.mlp_ln = LayerNorm(N_STATE)


class AudioEncoder(nn.Module):
    """Two GELU convs (the second with stride 2), sinusoidal positions, 6 blocks, final LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(80, N_STATE, 3, padding=1)
        self.conv2 = nn.Conv1d(N_STATE, N_STATE, 3, stride=2, padding=1)
        self.register_buffer("positional_embedding", torch.zeros(N_AUDIO_CTX, N_STATE))
        self.blocks = nn.ModuleList(Block(cross=False) for _ in range(N_LAYER))
        self.ln_post = LayerNorm(N_STATE)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel)))).transpose(1, 2)
        if x.shape[1] > N_AUDIO_CTX:
            raise ValueError(f"prompt mel has {x.shape[1]} encoder frames; the aligner supports {N_AUDIO_CTX} (~60 s)")
        x = x + self.positional_embedding[: x.shape[1]]
        for b in self.blocks:
            h = b.attn_ln(x)
            x = x + b.attn.attend(b.attn.query(h), b.attn.heads(b.attn.key(h)), b.attn.heads(b.attn.value(h)), False)
            x = x + b.mlp(b.mlp_ln(x))
        return self.ln_post(x)


class TextDecoder(nn.Module):
    """Token + learned position embeddings, 6 causal blocks with cross-attention, LayerNorm, untied out_proj."""

    def __init__(self) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(N_VOCAB, N_STATE)
        self.positional_embedding = nn.Parameter(torch.zeros(N_TEXT_CTX, N_STATE))
        self.blocks = nn.ModuleList(Block(cross=True) for _ in range(N_LAYER))
        self.ln = LayerNorm(N_STATE)
        self.out_proj = nn.Linear(N_STATE, N_VOCAB)

    def cross_kv(self, audio: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Cross-attention keys/values of every block, computed once per prompt."""
        return [(b.cross_attn.heads(b.cross_attn.key(audio)), b.cross_attn.heads(b.cross_attn.value(audio)))
                for b in self.blocks]

    def forward(self, tokens: torch.Tensor, cross: list[tuple[torch.Tensor, torch.Tensor]],
                cache: list[list[torch.Tensor]] | None = None, offset: int = 0) -> torch.Tensor:
        """Logits (B, T, vocab) of `tokens` at positions offset..; with `cache`, self-attention K/V are appended."""
        x = self.token_embedding(tokens) + self.positional_embedding[offset: offset + tokens.shape[1]]
        causal = tokens.shape[1] > 1
        for i, b in enumerate(self.blocks):
            h = b.attn_ln(x)
            k, v = b.attn.heads(b.attn.key(h)), b.attn.heads(b.attn.value(h))
            if cache is not None:
                if cache[i]:
                    k = torch.cat([cache[i][0], k], dim=2)
                    v = torch.cat([cache[i][1], v], dim=2)
                cache[i][:] = [k, v]
                if causal and offset > 0:
                    raise ValueError("several new tokens after a cached prefix are not supported; feed one")
            x = x + b.attn.attend(b.attn.query(h), k, v, causal)
            h = b.cross_attn_ln(x)
            x = x + b.cross_attn.attend(b.cross_attn.query(h), cross[i][0], cross[i][1], False)
            x = x + b.mlp(b.mlp_ln(x))
        return self.out_proj(self.ln(x))


class Aligner(nn.Module):
    """The aligner LM (`aligner_lm/` checkpoint, wrapper key 'model')."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = AudioEncoder()
        self.decoder = TextDecoder()

    def embed_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """Encoder features (B, T/2, 512) of a log-mel (B, 80, T)."""
        return self.encoder(mel)

    def logits(self, tokens: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, K, vocab) over a whole token prefix."""
        return self.decoder(tokens, self.decoder.cross_kv(audio))

    def pack_decoder_for_cpu(self) -> bool:
        """Swap the decoder's linears for prepacked ones when it runs on CPU (`kernels.linear.pack_linears`: our tiled
        kernel, else oneDNN's layout): one-token steps are matrix-vector products, which read the weights faster in
        those layouts. Call after the weights are loaded; returns whether it packed."""
        from fast_tts.kernels.linear import pack_linears, packing_available

        head = self.decoder.out_proj
        if not isinstance(head, nn.Linear) or head.weight.device.type != "cpu":
            return False  # packed already, or not on a CPU
        if not packing_available(head.weight.dtype):
            return False
        return pack_linears(self.decoder) > 0

    @torch.inference_mode()
    def greedy(self, mel: torch.Tensor, max_steps: int = MAX_STEPS, stop_at_eos: bool = True) -> torch.Tensor:
        """Greedy alignment stream (1, K) from BOS 798, stopping after EOS 799 or `max_steps` new tokens."""
        audio = self.embed_audio(mel)
        cross = self.decoder.cross_kv(audio)
        cache: list[list[torch.Tensor]] = [[] for _ in self.decoder.blocks]
        out = [ALIGN_BOS]
        token = torch.tensor([[ALIGN_BOS]], device=mel.device)
        steps = min(max_steps, N_TEXT_CTX - 1)
        for pos in range(steps):
            logits = self.decoder(token, cross, cache, offset=pos)
            nxt = int(logits[0, -1].argmax())
            out.append(nxt)
            if nxt == ALIGN_EOS and stop_at_eos:
                break
            token = torch.tensor([[nxt]], device=mel.device)
        return torch.tensor([out], dtype=torch.long)
