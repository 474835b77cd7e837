"""What goes into ChatTTS's GPT: a voice's conditioning, the prompt of one utterance (embeddings, the speaker vector
injected at `[spk_emb]`) or of one refinement (token ids), and the sampling both generate with. decode.py is the
other end: generated frames to audio.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fast_tts.errors import InvalidInputError
from fast_tts.models.chattts.gpt import inject_speaker
from fast_tts.models.chattts.loader import ChatTTSModels
from fast_tts.models.chattts.speaker import decode_prompt, decode_speaker, normalize_speaker
from fast_tts.models.chattts.tokenizer import decorate_code_prompts, decorate_text_prompts
from fast_tts.sampling import SamplingParams


@dataclass(frozen=True)
class ChatTTSVoice:
    """A ChatTTS voice: a speaker string (timbre), and/or an audio prompt (codes of a recording) with its
    transcript; all None lets the model pick a voice per utterance."""

    spk_emb: str | None = None  # speaker string (timbre vector)
    spk_smp: str | None = None  # audio-prompt string (codes of a reference recording)
    txt_smp: str | None = None  # transcript of the audio prompt


@dataclass(frozen=True)
class CodeRequest:
    """One utterance for code generation: text (normalized), the voice it is spoken in, sampling and prompt tags."""

    text: str
    sampling: SamplingParams
    voice: ChatTTSVoice = ChatTTSVoice()
    prompt: str = "[speed_5]"


@torch.inference_mode()
def code_prompt(models: ChatTTSModels, req: CodeRequest) -> torch.Tensor:
    """Prompt embeddings (L, H) of one utterance, with the speaker vector injected at `[spk_emb]`."""
    if not req.text.strip():
        raise InvalidInputError("text is empty after normalization", field="input")
    tok, voice, num_vq = models.tokenizer, req.voice, models.config.embed.num_vq
    codes = decode_prompt(voice.spk_smp) if voice.spk_smp is not None else None
    if codes is not None and codes.shape[0] != num_vq:
        raise InvalidInputError(f"audio prompt has {codes.shape[0]} codebooks, expected {num_vq}", "spk_smp")
    decorated = decorate_code_prompts([req.text], req.prompt, voice.txt_smp, voice.spk_emb)
    ids, _mask, text_mask = tok.encode(decorated, num_vq, codes)
    emb = models.gpt.embed.prompt_embedding(ids, text_mask)
    if voice.spk_emb is not None:
        vector = normalize_speaker(decode_speaker(voice.spk_emb, models.config.gpt.hidden_size))
        emb = inject_speaker(emb, ids[..., 0], vector, tok.spk_emb_id)
    return emb[0].float()


@torch.inference_mode()
def refine_prompt(models: ChatTTSModels, text: str, prompt: str = "") -> torch.Tensor:
    """Prompt token ids (L, 1) of one text's refinement."""
    ids = models.tokenizer.ids(decorate_text_prompts([text], prompt)[0])
    return torch.tensor(ids, dtype=torch.long)[:, None]


def code_sampling(
    temperature: float | Sequence[float],
    top_p: float | None,
    top_k: int | None,
    repetition_penalty: float,
    min_new_tokens: int,
    max_new_tokens: int,
    eos: int,
    seed: int | None,
    ensure_non_empty: bool,
    return_hidden: bool,
) -> SamplingParams:
    """SamplingParams with ChatTTS's processing (keep >= 3 tokens, penalty over the last 16 frames, stop on eos).

    `ensure_non_empty` forbids eos at the first step (the reference restarts the generation instead, and crashes
    when a seed is set).
    """
    floor = 1 if ensure_non_empty and max_new_tokens > 0 else 0
    return SamplingParams(
        temperature=list(temperature) if isinstance(temperature, (list, tuple)) else float(temperature),
        top_p=top_p,
        top_k=top_k,
        min_tokens_to_keep=3,
        repetition_penalty=repetition_penalty,
        repetition_window=16,
        min_new_tokens=min(max(min_new_tokens, floor), max_new_tokens),
        max_new_tokens=max_new_tokens,
        stop_token_ids=[eos],
        seed=seed,
        return_hidden=return_hidden,
    )
