"""ChatTTS tokenizer on `tokenizers` (BERT WordPiece `tokenizer.json`): prompt decoration, left-padded batches."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer


def decorate_code_prompts(texts: list[str], prompt: str, txt_smp: str | None, spk_emb: str | None) -> list[str]:
    """`[Stts][spk_emb]{txt_smp}{prompt}{text}[Ptts]` (`[empty_spk]` without a speaker), control tokens stripped."""
    out = []
    for text in texts:
        for tag in ("[Stts]", "[spk_emb]", "[empty_spk]"):
            text = text.replace(tag, "")
        spk = "[spk_emb]" if spk_emb is not None else "[empty_spk]"
        out.append(f"[Stts]{spk}{txt_smp or ''}{prompt}{text.strip()}[Ptts]")
    return out


def decorate_text_prompts(texts: list[str], prompt: str) -> list[str]:
    """Refine prompts: `[Sbreak]{text}[Pbreak]{prompt}`."""
    return [f"[Sbreak]{text}[Pbreak]{prompt}" for text in texts]


_CLEANUPS = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
             (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


class ChatTTSTokenizer:
    """Token ids, left-padded (B, L, num_vq) batches and the decode used after refinement."""

    def __init__(self, path: str | Path) -> None:
        self._tok = Tokenizer.from_file(str(path))
        self.spk_emb_id = self._id("[spk_emb]")
        self.break_0_id = self._id("[break_0]")
        self.eos_id = self._id("[Ebreak]")

    def _id(self, token: str) -> int:
        tid = self._tok.token_to_id(token)
        if tid is None:
            raise ValueError(f"tokenizer has no {token} token")
        return tid

    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def ids(self, text: str) -> list[int]:
        """Token ids of one text, without special tokens added."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode(
        self, texts: list[str], num_vq: int, prompt_codes: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """input_ids (B, L, num_vq), attention_mask (B, L) int64, text_mask (B, L) bool; left-padded with id 0.

        With `prompt_codes` (num_vq, Tp), every row ends with those codes (mask 1, text_mask 0).
        """
        rows = [self.ids(t) for t in texts]
        tp = 0 if prompt_codes is None else prompt_codes.shape[1]
        width = max(len(r) for r in rows) + tp
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            start = width - tp - len(r)
            ids[i, start : width - tp] = torch.tensor(r, dtype=torch.long)
            mask[i, start:] = 1
        text_mask = mask.bool()
        input_ids = ids[..., None].expand(-1, -1, num_vq).clone()
        if tp:
            text_mask[:, width - tp :] = False
            input_ids[:, width - tp :] = prompt_codes.t().to(torch.long)[None]
        return input_ids, mask, text_mask

    def decode(self, ids: list[int], skip_special_tokens: bool = False, clean_up: bool = True) -> str:
        """Text of ids, WordPiece-joined; special tokens kept and the BERT spacing clean-up applied by default."""
        text = self._tok.decode(ids, skip_special_tokens=skip_special_tokens)
        for old, new in _CLEANUPS if clean_up else ():
            text = text.replace(old, new)
        return text
