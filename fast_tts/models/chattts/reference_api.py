"""The public attributes of the reference ChatTTS 0.2.5 `Chat`, over fast_tts's modules.

Scripts written for the reference reach past `Chat`'s methods into `chat.config`, `chat.tokenizer`, `chat.speaker`,
`chat.gpt` and `chat.context`. These classes give those names the reference's meaning (same call signatures, return
types and values) on top of our tokenizer, speaker functions and GPT. Where a reference internal has no counterpart
here (the transformers `LlamaModel`, the generation loop), the attribute raises an AttributeError that says what to
use instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pybase16384 as b14
import torch

from fast_tts.errors import InvalidInputError, ModelLoadError
from fast_tts.models.chattts import speaker as spk
from fast_tts.models.chattts.gpt import ChatTTSGPT, inject_speaker
from fast_tts.models.chattts.loader import ChatTTSModels
from fast_tts.models.chattts.tokenizer import ChatTTSTokenizer, decorate_code_prompts, decorate_text_prompts

# ----- chat.config: the reference's field names and defaults (the real model's sizes); load() fills in the
# checkpoint's sizes. Every default is a fresh instance, so changing one Config never changes another.


@dataclass(repr=False, eq=False)
class Path:
    """Checkpoint files relative to the model folder (`load` reads these)."""

    vocos_ckpt_path: str = "asset/Vocos.safetensors"
    dvae_ckpt_path: str = "asset/DVAE.safetensors"
    gpt_ckpt_path: str = "asset/gpt"
    decoder_ckpt_path: str = "asset/Decoder.safetensors"
    tokenizer_path: str = "asset/tokenizer"
    embed_path: str = "asset/Embed.safetensors"


@dataclass(repr=False, eq=False)
class Decoder:
    """A conv stack (the GPT-hidden Decoder, and the DVAE's encoder and decoder)."""

    idim: int = 384
    odim: int = 384
    hidden: int = 512
    n_layer: int = 12
    bn_dim: int = 128


@dataclass(repr=False, eq=False)
class VQ:
    dim: int = 1024
    levels: tuple = (5, 5, 5, 5)
    G: int = 2
    R: int = 2


@dataclass(repr=False, eq=False)
class DVAE:
    encoder: Decoder = field(default_factory=lambda: Decoder(idim=512, odim=1024, hidden=256, n_layer=12, bn_dim=128))
    decoder: Decoder = field(default_factory=lambda: Decoder(idim=512, odim=512, hidden=256, n_layer=12, bn_dim=128))
    vq: VQ = field(default_factory=VQ)


@dataclass(repr=False, eq=False)
class GPT:
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_attention_heads: int = 12
    num_hidden_layers: int = 20
    use_cache: bool = False
    max_position_embeddings: int = 4096
    spk_emb_dim: int = 192
    spk_KL: bool = False
    num_audio_tokens: int = 626
    num_text_tokens: int = 21178
    num_vq: int = 4


@dataclass(repr=False, eq=False)
class Embed:
    hidden_size: int = 768
    num_audio_tokens: int = 626
    num_text_tokens: int = 21178
    num_vq: int = 4


@dataclass(repr=False, eq=False)
class FeatureExtractorInitArgs:
    sample_rate: int = 24000
    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 100
    padding: str = "center"


@dataclass(repr=False, eq=False)
class FeatureExtractor:
    init_args: FeatureExtractorInitArgs = field(default_factory=FeatureExtractorInitArgs)


@dataclass(repr=False, eq=False)
class BackboneInitArgs:
    input_channels: int = 100
    dim: int = 512
    intermediate_dim: int = 1536
    num_layers: int = 8


@dataclass(repr=False, eq=False)
class Backbone:
    init_args: BackboneInitArgs = field(default_factory=BackboneInitArgs)


@dataclass(repr=False, eq=False)
class FourierHeadInitArgs:
    dim: int = 512
    n_fft: int = 1024
    hop_length: int = 256
    padding: str = "center"


@dataclass(repr=False, eq=False)
class FourierHead:
    init_args: FourierHeadInitArgs = field(default_factory=FourierHeadInitArgs)


@dataclass(repr=False, eq=False)
class Vocos:
    feature_extractor: FeatureExtractor = field(default_factory=FeatureExtractor)
    backbone: Backbone = field(default_factory=Backbone)
    head: FourierHead = field(default_factory=FourierHead)


@dataclass(repr=False, eq=False)
class Config:
    """`chat.config`: the reference's blocks (sizes are read from the checkpoint at load and written back here),
    the speaker statistics string, and fast_tts's own runtime choices."""

    path: Path = field(default_factory=Path)
    decoder: Decoder = field(default_factory=Decoder)
    dvae: DVAE = field(default_factory=DVAE)
    gpt: GPT = field(default_factory=GPT)
    embed: Embed = field(default_factory=Embed)
    vocos: Vocos = field(default_factory=Vocos)
    spk_stat: str | None = None  # std ++ mean, base16384 of float16; None: asset/spk_stat.json or .pt
    dtype: str = "float32"  # "bfloat16" runs generation (and, where the CPU has bf16 kernels, decoding) in bf16
    backend: str = "torch"
    max_batch: int = 8
    residual_scale_base: str = "levels_minus_1"  # DVAE residual scale; "levels" = vector_quantize_pytorch >= 1.2x


def sync_config(config: Config, models: ChatTTSModels) -> None:
    """Write the loaded checkpoint's sizes into `config` (fresh block objects, so no other Config changes)."""
    c = models.config
    g = c.gpt
    config.gpt = GPT(
        hidden_size=g.hidden_size, intermediate_size=g.intermediate_size, num_attention_heads=g.num_heads,
        num_hidden_layers=g.num_layers, max_position_embeddings=g.max_position_embeddings,
        num_audio_tokens=c.embed.num_audio_tokens, num_text_tokens=c.embed.num_text_tokens, num_vq=c.embed.num_vq,
    )
    config.embed = Embed(c.embed.hidden_size, c.embed.num_audio_tokens, c.embed.num_text_tokens, c.embed.num_vq)

    def stack(s: Any) -> Decoder:
        return Decoder(s.idim, s.odim, s.hidden, s.n_layer, s.bn_dim)

    config.decoder = stack(c.decoder)
    config.dvae = DVAE(stack(c.dvae.encoder), stack(c.dvae.decoder),
                       VQ(c.dvae.vq_dim, tuple(c.dvae.levels), c.dvae.groups, c.dvae.residuals))
    v = c.vocos
    config.vocos = Vocos(
        FeatureExtractor(FeatureExtractorInitArgs(c.sample_rate, v.n_fft, v.hop_length, v.n_mels)),
        Backbone(BackboneInitArgs(v.n_mels, v.dim, v.intermediate_dim, v.num_layers)),
        FourierHead(FourierHeadInitArgs(v.dim, v.n_fft, v.hop_length)),
    )


def coef_string(coef: torch.Tensor) -> str:
    """`chat.coef`: the Decoder's mel scaling `coef` as the reference prints it (base16384 of float32 bytes)."""
    return b14.encode_to_string(coef.detach().cpu().float().reshape(-1).numpy().astype("<f4").tobytes())


# ----- chat.context --------------------------------------------------------------------------------------------


class Context:
    """`chat.context`: the interrupt flag (`set(True)` by `chat.interrupt()`, cleared when `infer` starts)."""

    def __init__(self) -> None:
        self._interrupt = False

    def set(self, v: bool) -> None:
        self._interrupt = bool(v)

    def get(self) -> bool:
        return self._interrupt


# ----- chat.tokenizer ------------------------------------------------------------------------------------------


class Tokenizer:
    """`chat.tokenizer`: left-padded batch encoding and batch decoding, with the reference's attribute names."""

    def __init__(self, tok: ChatTTSTokenizer) -> None:
        self._tok = tok
        self.len = len(tok)
        self.spk_emb_ids = tok.spk_emb_id
        self.break_0_ids = tok.break_0_id
        self.eos_token = tok.eos_id

    def encode(
        self, text: Sequence[str], num_vq: int, prompt: torch.Tensor | None = None, device: Any = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """input_ids (B, L, num_vq) int64, attention_mask (B, L) int64, text_mask (B, L) bool, left-padded with 0;
        `prompt` (num_vq, Tp) audio codes fill the last Tp positions of every row."""
        if isinstance(text, str) or not all(isinstance(t, str) for t in text) or not text:
            raise InvalidInputError("text must be a non-empty list of str", field="text")
        if prompt is not None and prompt.shape[0] != num_vq:
            raise InvalidInputError(f"prompt has {prompt.shape[0]} rows, expected num_vq = {num_vq}", field="prompt")
        ids, mask, text_mask = self._tok.encode(list(text), num_vq, prompt)
        return ids.to(device), mask.to(device), text_mask.to(device)

    def decode(
        self,
        sequences: Sequence[int] | Sequence[Sequence[int]] | torch.Tensor,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> list[str]:
        """One string per sequence (1-D tensors or int lists): special tokens kept unless asked, BERT clean-up on."""
        rows = list(sequences)
        if rows and not isinstance(rows[0], (torch.Tensor, np.ndarray, Sequence)):
            raise InvalidInputError("decode takes a list of token-id sequences (one per text)", field="sequences")
        out = []
        for row in rows:
            ids = row.tolist() if isinstance(row, (torch.Tensor, np.ndarray)) else list(row)
            if any(not isinstance(i, int) for i in ids):
                raise InvalidInputError("each sequence must be 1-D token ids", field="sequences")
            out.append(self._tok.decode(ids, skip_special_tokens, clean_up_tokenization_spaces is not False))
        return out

    def __getattr__(self, name: str) -> Any:
        if name == "_tokenizer":
            raise AttributeError(
                "fast_tts reads tokenizer.json with the `tokenizers` library; there is no transformers "
                "BertTokenizerFast. Use chat.tokenizer.encode / decode."
            )
        raise AttributeError(f"'Tokenizer' object has no attribute {name!r}")


# ----- chat.speaker --------------------------------------------------------------------------------------------


class Speaker:
    """`chat.speaker`: speaker and audio-prompt strings, prompt decoration and speaker injection."""

    def __init__(self, dim: int, std: torch.Tensor | None, mean: torch.Tensor | None) -> None:
        self.dim = dim
        self.std, self.mean = std, mean

    def sample_random(self) -> str:
        """A random speaker string (global torch RNG; the same seed gives the reference's speaker)."""
        if self.std is None or self.mean is None:
            raise ModelLoadError(
                "this checkpoint has no speaker statistics: put asset/spk_stat.pt or asset/spk_stat.json in the model "
                "folder, or set chat.config.spk_stat (the base16384 std++mean string) before load()"
            )
        return spk.sample_random_speaker(self.std, self.mean)

    @torch.inference_mode()
    def apply(
        self,
        emb: torch.Tensor,
        spk_emb: str | torch.Tensor,
        input_ids: torch.Tensor,
        spk_emb_ids: int,
        device: Any = None,
        inplace: bool = True,
    ) -> torch.Tensor:
        """Put the L2-normalised speaker vector at every `[spk_emb]` position of emb (B, L, H); in place by default."""
        vector = spk.decode_speaker(spk_emb, self.dim) if isinstance(spk_emb, str) else spk_emb
        out = inject_speaker(emb, input_ids[..., 0], spk.normalize_speaker(vector).to(emb.device), spk_emb_ids)
        if inplace:
            emb.copy_(out)
            return emb
        return out

    @staticmethod
    def decorate_code_prompts(
        text: Sequence[str], prompt: str, txt_smp: str | None, spk_emb: str | None
    ) -> list[str]:
        """`[Stts][spk_emb]{txt_smp}{prompt}{text}[Ptts]` per text (`[empty_spk]` without a speaker)."""
        return decorate_code_prompts(list(text), prompt, txt_smp, spk_emb)

    @staticmethod
    def decorate_text_prompts(text: Sequence[str], prompt: str) -> list[str]:
        """`[Sbreak]{text}[Pbreak]{prompt}` per text (the refine prompt)."""
        return decorate_text_prompts(list(text), prompt)

    @staticmethod
    def encode_prompt(prompt: torch.Tensor) -> str:
        """Audio-prompt string of codes (num_vq, T)."""
        if prompt.dim() != 2:
            raise InvalidInputError(f"prompt must be 2-D (num_vq, T), got shape {tuple(prompt.shape)}", "prompt")
        return spk.encode_prompt(prompt)

    @staticmethod
    def decode_prompt(prompt: str) -> torch.Tensor:
        """Codes (num_vq, T) int32 of an audio-prompt string."""
        return spk.decode_prompt(prompt)

    @staticmethod
    def _encode(spk_emb: torch.Tensor) -> str:
        return spk.encode_speaker(spk_emb)

    @staticmethod
    def _decode(spk_emb: str) -> np.ndarray:
        return spk.decode_speaker(spk_emb).numpy()


# ----- chat.gpt ------------------------------------------------------------------------------------------------


@dataclass(repr=False, eq=False)
class GenerationOutputs:
    """Per-row generated ids ((T, num_vq), or (T,) for text) and hidden states ((T, H))."""

    ids: list[torch.Tensor]
    attentions: list[Any]
    hiddens: list[torch.Tensor]

    def destroy(self) -> None:
        self.ids, self.attentions, self.hiddens = [], [], []


_GPT_HINTS = {
    "gpt": "fast_tts runs its own Llama stack (chat.gpt.transformer), not a transformers LlamaModel",
    "llama_config": "the Llama sizes are in chat.config.gpt",
    "generate": "generation runs on fast_tts's batching backend: use chat.infer(..., skip_refine_text=True) for "
                "codes and audio, chat.infer(..., refine_text_only=True) for refined text",
    "_prepare_generation_inputs": "generation runs on fast_tts's batching backend: use chat.infer",
    "llm": "with load(use_vllm=True) the vLLM engine sits behind chat.infer; it is not exposed",
    "generator": "chat.infer replays the reference's random draws itself (manual_seed or the global torch RNG)",
    "load_pretrained": "use chat.load(source='custom', custom_path=...)",
    "prepare": "use chat.load(compile=True)",
}


class GPTView:
    """`chat.gpt`: sizes, embedding tables and heads of the loaded GPT, and `_prepare_generation_outputs`."""

    Context = Context
    GenerationOutputs = GenerationOutputs

    def __init__(self, gpt: ChatTTSGPT, num_audio_tokens: int, num_text_tokens: int, device: torch.device,
                 use_flash_attn: bool, is_vllm: bool) -> None:
        self.transformer = gpt.transformer
        self.device = self.device_gpt = device
        self.num_vq = gpt.embed.num_vq
        self.num_audio_tokens = num_audio_tokens
        self.num_text_tokens = num_text_tokens
        self.use_flash_attn = use_flash_attn
        self.is_vllm = is_vllm
        self.is_te_llama = False
        self.emb_code = list(gpt.embed.emb_code)
        self.emb_text = gpt.embed.emb_text
        self.head_code = list(gpt.embed.head_code)  # weight norm already folded: W = g * v / ||v||
        self.head_text = gpt.embed.head_text

    @torch.no_grad()
    def _prepare_generation_outputs(
        self,
        inputs_ids: torch.Tensor,
        start_idx: int,
        end_idx: torch.Tensor,
        attentions: list[Any],
        hiddens: list[torch.Tensor],
        infer_text: bool,
    ) -> GenerationOutputs:
        """Rows `inputs_ids[b, start_idx : start_idx + end_idx[b]]` (text: codebook 0 only), and the stacked
        per-step hiddens (B, H) cut to the same lengths."""
        lengths = [int(n) for n in end_idx.tolist()]
        ids = [inputs_ids[b].narrow(0, start_idx, n) for b, n in enumerate(lengths)]
        if infer_text:
            ids = [i[:, 0] for i in ids]
        rows = []
        if hiddens:
            stacked = torch.stack(hiddens, 1)
            rows = [stacked[b].narrow(0, 0, n) for b, n in enumerate(lengths)]
        return GenerationOutputs(ids=ids, attentions=attentions, hiddens=rows)

    def __getattr__(self, name: str) -> Any:
        hint = _GPT_HINTS.get(name)
        if hint is not None:
            raise AttributeError(f"chat.gpt.{name} is a reference internal fast_tts does not have: {hint}")
        raise AttributeError(f"'GPTView' object has no attribute {name!r}")
