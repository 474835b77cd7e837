"""MegaTTS3 G2P: a Qwen2 causal LM (the `g2p/` Hugging Face folder) that writes merged phone ids after the text.

Prompt: tokens of '<BOT>' + text + '<BOS>', then a forced `sil` (S+145) where S is the id of '<Reserved_TTS_0>'.
Generation stops at S+801. The phones are the forced `sil` plus every generated token except the last (the stop
token, or the final token when the length limit is hit), as the reference slices `out[len(text_ids):-1]`.
`G2P` is also an `LMAdapter`, so the LM backends can batch it; `generate` is a plain greedy loop for direct use.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fast_tts.errors import ModelLoadError
from fast_tts.models.lm import LMSource
from fast_tts.models.megatts3.phones import SIL, split_merged
from fast_tts.models.transformer import DecoderConfig, Transformer, rotary_inv_freq

SPEECH_START_TOKEN = "<Reserved_TTS_0>"
STOP_OFFSET = 801
MAX_NEW_TOKENS = 256


class G2P(nn.Module):
    """Qwen2 decoder + token embedding + LM head, with the tokenizer and the MegaTTS3 prompt rules."""

    num_codebooks = 1

    def __init__(self, cfg: DecoderConfig, vocab_size: int, tie_embeddings: bool, tokenizer, speech_start: int) -> None:
        super().__init__()
        self.transformer = Transformer(cfg)
        self.embed_tokens = nn.Embedding(vocab_size, cfg.hidden_size)
        self.lm_head = None if tie_embeddings else nn.Linear(cfg.hidden_size, vocab_size, bias=False)
        self.tokenizer = tokenizer
        self.speech_start = speech_start
        self._decode_head: nn.Module | None = None
        self.source: LMSource | None = None  # set by from_folder

    @property
    def stop_id(self) -> int:
        return self.speech_start + STOP_OFFSET

    @classmethod
    def from_folder(cls, folder: str | Path) -> G2P:
        """Load config.json, tokenizer.json and model.safetensors (or its sharded index) from a HF folder."""
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        folder = Path(folder)
        for name in ("config.json", "tokenizer.json"):
            if not (folder / name).is_file():
                raise ModelLoadError(f"G2P folder {folder} lacks {name}")
        cfg_dict = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        try:
            cfg = DecoderConfig.from_hf(cfg_dict)
        except (KeyError, ValueError) as exc:
            raise ModelLoadError(f"{folder / 'config.json'}: {exc}") from exc
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        speech_start = tokenizer.token_to_id(SPEECH_START_TOKEN)
        if speech_start is None:
            raise ModelLoadError(f"{folder / 'tokenizer.json'} has no {SPEECH_START_TOKEN} token")
        files = [folder / "model.safetensors"]
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            files = [folder / s for s in shards]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise ModelLoadError(f"G2P weights missing: {missing}")
        state: dict[str, torch.Tensor] = {}
        for f in files:
            state.update(load_file(str(f)))
        tie = bool(cfg_dict.get("tie_word_embeddings", "lm_head.weight" not in state))
        vocab = int(cfg_dict["vocab_size"])
        with torch.device("meta"):
            model = cls(cfg, vocab, tie, tokenizer, speech_start)
        dtype = torch.float32
        decoder: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            if key.startswith("model.") and not key.startswith("model.embed_tokens."):
                decoder[key[len("model."):]] = value.to(dtype)
        try:
            # each part on its own: the decoder's pre-hook fuses the Hugging Face q/k/v and gate/up names
            model.transformer.load_state_dict(decoder, strict=True, assign=True)
            model.embed_tokens.load_state_dict({"weight": state["model.embed_tokens.weight"].to(dtype)}, assign=True)
            if model.lm_head is not None:
                model.lm_head.load_state_dict({"weight": state["lm_head.weight"].to(dtype)}, assign=True)
        except (RuntimeError, KeyError) as exc:
            raise ModelLoadError(f"G2P weights in {folder} do not match config.json: {exc}") from exc
        unset = [n for n, p in model.named_parameters() if p.is_meta]
        if unset:
            raise ModelLoadError(f"G2P weights in {folder} lack {unset[:5]}")
        model.transformer.inv_freq = rotary_inv_freq(cfg)
        model.source = LMSource(folder, stock_head=True)
        return model

    def prompt_ids(self, text: str) -> list[int]:
        """'<BOT>' + text + '<BOS>' token ids followed by the forced sil token."""
        return self.tokenizer.encode("<BOT>" + text + "<BOS>").ids + [self.speech_start + SIL]

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Input embeddings (B, T, H) for tokens (B, T, 1)."""
        return self.embed_tokens(tokens[..., 0])

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits (B, 1, vocab) in float32 for final-norm hidden states (B, H)."""
        if self._decode_head is not None:
            return self._decode_head(hidden)[:, None]
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(hidden, weight).float()[:, None]

    def prepare_for_backend(self, dtype: torch.dtype, device: torch.device, quantize: str | None = None) -> None:
        """For a bf16 backend on CPU, read the head (a third of Qwen2.5-0.5B) as a tiled bf16 copy through the
        native kernel, with float32 sums, instead of streaming the float32 matrix every step; with `quantize` set
        ("int8" or "int4", the decoder's linears), as an int8 copy where the CPU runs int8 products: the head keeps
        8 bits under 4-bit layers, as llama.cpp's 4-bit files keep their output matrix at 6 to 8 bits."""
        from fast_tts.kernels.linear import (
            TiledBF16Linear,
            TiledInt8Linear,
            linear_around,
            native_bf16_available,
            quantized_available,
            tiled_layout_fits,
        )

        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        head = linear_around(weight)
        usable = dtype == torch.bfloat16 and device.type == "cpu" and weight.device.type == "cpu"
        if usable and quantize is not None and quantized_available("int8") and TiledInt8Linear.fits(head):
            self._decode_head = TiledInt8Linear(head, float_out=True)
        elif usable and tiled_layout_fits(head) and native_bf16_available():
            self._decode_head = TiledBF16Linear(head, float_out=True)
        else:
            self._decode_head = None

    def phones(self, generated: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(phone, tone) rows (1, L) from the generated ids, reference slicing included."""
        seq = [self.speech_start + SIL] + list(generated)
        merged = torch.tensor(seq[:-1], dtype=torch.long) - self.speech_start
        ph, tone = split_merged(merged)
        return ph[None], tone[None]

    @torch.inference_mode()
    def generate(self, text: str, max_new_tokens: int = MAX_NEW_TOKENS) -> list[int]:
        """Greedy generation with the preallocated KV cache; returns the new ids (stop id included when reached)."""
        ids = self.prompt_ids(text)
        device = self.embed_tokens.weight.device
        cache = self.transformer.new_cache(1, len(ids) + max_new_tokens)
        tokens = torch.tensor([ids], device=device)
        pos = torch.arange(len(ids), device=device)[None]
        out: list[int] = []
        for _ in range(max_new_tokens):
            hidden = self.transformer(self.embed(tokens[..., None]), pos, cache)
            nxt = int(self.logits(hidden[:, -1])[0, 0].argmax())
            out.append(nxt)
            if nxt == self.stop_id:
                break
            tokens = torch.tensor([[nxt]], device=device)
            pos = pos[:, -1:] + 1
        return out

    def phonemize(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Text segment -> (phone, tone) (1, L) by greedy decoding."""
        return self.phones(self.generate(text))
