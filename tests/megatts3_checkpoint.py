"""Write a MegaTTS3 checkpoint folder in the official layout, weights from the fixture rule (shared/fixtures/megatts3).

Rule: r = randn(shape, Generator(seed + crc32(key))); `*.weight_g` -> 1 + 0.1r; 1-D bias/beta -> 0.1r; 1-D
weight/gamma -> 1 + 0.1r; >= 2-D -> r / sqrt(prod(shape[1:])); the aligner's encoder position table is Whisper's
sinusoid. The aligner can be engineered to emit a given token stream whatever the audio, and the G2P is a tiny Qwen2
engineered to emit a given merged-id chain whatever the text (both as the fixture README describes), so engine tests
get deterministic, valid phones. Reusable by engine tests: `build_checkpoint(path)`.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import torch
import yaml

from fast_tts.models.megatts3.aligner import Aligner
from fast_tts.models.megatts3.dit import DiT
from fast_tts.models.megatts3.duration import DurationLM
from fast_tts.models.megatts3.wavvae import WaveVAEDecoder, WaveVAEEncoder

DUR_CONFIG = {
    "dur_txt_hs": 512, "dur_model_hidden_size": 384, "dur_model_layers": 28, "dur_code_size": 256,
    "use_rot_embed": True, "dur_model_type": "ar", "lm_use_enc": True, "encoder_type": "rel_fft",
    "hidden_size": 512, "ffn_hidden_size": 1024, "num_heads": 2, "enc_layers": 4, "enc_ffn_kernel_size": 3,
    "dropout": 0.0, "enc_prenet": True, "enc_pre_ln": True, "use_ph_pos_embed": True, "mega_use_char": False,
    "ling_labels": ["tone"], "ling_label_dict_size": [20], "use_pos_embed": False, "use_post_ln": False,
    "lm_bias": True, "use_spk_embed": False, "use_spk_id": False, "use_spk_enc": False, "max_tokens": 40000,
}
WAVVAE_CONFIG = {"melgan_config": {"frame_shift": 240, "use_tanh": True}, "vae_stride": 4, "hop_size": 240}
DEFAULT_ALIGNER_SEQ = [798, 145, 812, 207, 832, 215, 846, 101, 864, 102, 880, 163, 904, 148, 920, 799]
DEFAULT_G2P_CHAIN = [145, 101, 110, 131, 120, 163, 102, 148, 801]


def rule_tensor(key: str, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """The fixture rule's value for one tensor."""
    r = torch.randn(shape, generator=torch.Generator().manual_seed(seed + zlib.crc32(key.encode())))
    if key.endswith(".weight_g"):
        return 1 + 0.1 * r
    if len(shape) == 1:
        return 0.1 * r if key.endswith((".bias", ".beta")) else 1 + 0.1 * r
    return r / math.sqrt(math.prod(shape[1:]))


def encoder_input(n_samples: int) -> torch.Tensor:
    """The WaveVAE encoder oracle's input wav (1, n) by rule: 0.1 * randn with seed 12345."""
    return 0.1 * torch.randn(1, n_samples, generator=torch.Generator().manual_seed(12345))


def whisper_sinusoids(length: int = 3000, channels: int = 512) -> torch.Tensor:
    """Whisper's encoder position table."""
    inc = math.log(10000) / (channels // 2 - 1)
    inv = torch.exp(-inc * torch.arange(channels // 2))
    ang = torch.arange(length)[:, None] * inv[None, :]
    return torch.cat([ang.sin(), ang.cos()], dim=1).float()


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _weight_norm_shapes(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The WaveVAE's legacy weight norm: every convolution weight stored as a `weight_g`/`weight_v` pair."""
    out = {}
    for key, shape in shapes.items():
        if key.endswith(".weight") and len(shape) == 3:
            base = key[: -len("weight")]
            out[base + "weight_g"] = (shape[0], 1, 1)
            out[base + "weight_v"] = shape
        else:
            out[key] = shape
    return out


def encoder_rule_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """The WaveVAE encoder's `model_gen` tensors (`encoder.*`, `proj_to_z.*`) filled by the rule."""
    with torch.device("meta"):
        shapes = _weight_norm_shapes(_shapes(WaveVAEEncoder()))
    return {k: rule_tensor(k, s, seed) for k, s in shapes.items()}


def write_full_wavvae(folder: Path, seed: int = 0, encoder_seed: int = 0) -> None:
    """wavvae/ with config.yaml and a model_only_last.ckpt holding the decoder (rule weights, `seed`) and the encoder
    (`encoder_seed`): a full WavVAE."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(WAVVAE_CONFIG), encoding="utf-8")
    state = {**rule_state("model_gen", seed), **encoder_rule_state(encoder_seed)}
    _save(folder / "model_only_last.ckpt", "model_gen", state)


def rule_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """State dict of one wrapper key ('dit', 'dur_model', 'model', 'model_gen') filled by the rule."""
    with torch.device("meta"):
        module = {"dit": DiT, "dur_model": DurationLM, "model": Aligner, "model_gen": WaveVAEDecoder}[name]()
    shapes = _shapes(module)
    if name == "model_gen":
        shapes = _weight_norm_shapes(shapes)
    state = {k: rule_tensor(k, s, seed) for k, s in shapes.items() if k != "encoder.positional_embedding"}
    if name == "model":
        state["encoder.positional_embedding"] = whisper_sinusoids()
    return state


def engineer_aligner(state: dict[str, torch.Tensor], seq: list[int]) -> None:
    """Make greedy decoding emit `seq` (starting at its BOS) whatever the audio: position i predicts seq[i+1]."""
    for key in list(state):
        if key.startswith("decoder.blocks.") and any(p in key for p in (".attn.out.", ".cross_attn.out.", ".mlp.2.")):
            state[key] = torch.zeros_like(state[key])
    state["decoder.token_embedding.weight"] = torch.zeros_like(state["decoder.token_embedding.weight"])
    pos = torch.zeros_like(state["decoder.positional_embedding"])
    for i in range(len(seq) - 1):
        pos[i, i] = 1
    state["decoder.positional_embedding"] = pos
    state["decoder.ln.weight"] = torch.ones_like(state["decoder.ln.weight"])
    state["decoder.ln.bias"] = torch.zeros_like(state["decoder.ln.bias"])
    out = torch.zeros_like(state["decoder.out_proj.weight"])
    for i in range(len(seq) - 1):
        out[seq[i + 1], i] = 1
    state["decoder.out_proj.weight"] = out
    state["decoder.out_proj.bias"] = torch.zeros_like(state["decoder.out_proj.bias"])


def _save(path: Path, wrapper: str, state: dict[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {wrapper: state}}, path)


def write_g2p(folder: Path, chain: list[int] = DEFAULT_G2P_CHAIN, hidden: int = 64) -> None:
    """A tiny Qwen2 folder (byte-level tokenizer + <BOT>/<BOS>/<Reserved_TTS_0..801>) whose greedy output is
    S+chain[1:] after the forced S+chain[0] whatever the text (successor table in embeddings and lm_head)."""
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    folder.mkdir(parents=True, exist_ok=True)
    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(byte_chars))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<BOT>", "<BOS>"] + [f"<Reserved_TTS_{i}>" for i in range(802)])
    tok.save(str(folder / "tokenizer.json"))
    s = tok.token_to_id("<Reserved_TTS_0>")
    vocab_size = tok.get_vocab_size()
    cfg = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": hidden,
           "intermediate_size": 2 * hidden, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "vocab_size": vocab_size,
           "max_position_embeddings": 4096, "tie_word_embeddings": False, "hidden_act": "silu"}
    (folder / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    g = torch.Generator().manual_seed(1234)
    state: dict[str, torch.Tensor] = {}
    kv = hidden // 4 * 2
    for layer in range(2):
        p = f"model.layers.{layer}."
        shapes = {"self_attn.q_proj.weight": (hidden, hidden), "self_attn.q_proj.bias": (hidden,),
                  "self_attn.k_proj.weight": (kv, hidden), "self_attn.k_proj.bias": (kv,),
                  "self_attn.v_proj.weight": (kv, hidden), "self_attn.v_proj.bias": (kv,),
                  "mlp.gate_proj.weight": (2 * hidden, hidden), "mlp.up_proj.weight": (2 * hidden, hidden)}
        for k, shp in shapes.items():
            state[p + k] = torch.randn(shp, generator=g) * 0.1
        state[p + "self_attn.o_proj.weight"] = torch.zeros(hidden, hidden)  # residual stream carries the embedding
        state[p + "mlp.down_proj.weight"] = torch.zeros(hidden, 2 * hidden)
        state[p + "input_layernorm.weight"] = torch.ones(hidden)
        state[p + "post_attention_layernorm.weight"] = torch.ones(hidden)
    state["model.norm.weight"] = torch.ones(hidden)
    emb = torch.randn(vocab_size, hidden, generator=g) * 0.01
    head = torch.zeros(vocab_size, hidden)
    if len(chain) > hidden:
        raise ValueError(f"chain of {len(chain)} tokens needs hidden >= {len(chain)}")
    for i, tok_id in enumerate(chain):
        emb[s + tok_id] = 0
        emb[s + tok_id, i] = 1.0
        if i + 1 < len(chain):
            head[s + chain[i + 1], i] = 50.0  # a wide margin: sampling (top-k/top-p/temperature) keeps the chain
    state["model.embed_tokens.weight"] = emb
    state["lm_head.weight"] = head
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))


def write_aligner(root: str | Path, seed: int = 0, aligner_seq: list[int] | None = DEFAULT_ALIGNER_SEQ) -> None:
    """aligner_lm/model_only_last.ckpt by the rule, engineered to emit `aligner_seq` unless it is None."""
    state = rule_state("model", seed)
    if aligner_seq is not None:
        engineer_aligner(state, list(aligner_seq))
    _save(Path(root) / "aligner_lm" / "model_only_last.ckpt", "model", state)


def build_checkpoint(root: str | Path, seed: int = 0, aligner_seq: list[int] | None = DEFAULT_ALIGNER_SEQ,
                     g2p_chain: list[int] | None = DEFAULT_G2P_CHAIN, win_size: int = 960) -> Path:
    """Write diffusion_transformer/, duration_lm/, aligner_lm/, wavvae/ (decoder.ckpt) and g2p/ under `root`
    (aligner engineered to `aligner_seq`, or plain rule weights when None)."""
    root = Path(root)
    (root / "diffusion_transformer").mkdir(parents=True, exist_ok=True)
    (root / "diffusion_transformer" / "config.yaml").write_text(
        yaml.safe_dump({"win_size": win_size, "frames_multiple": 8}), encoding="utf-8")
    (root / "duration_lm").mkdir(parents=True, exist_ok=True)
    (root / "duration_lm" / "config.yaml").write_text(yaml.safe_dump(DUR_CONFIG), encoding="utf-8")
    (root / "wavvae").mkdir(parents=True, exist_ok=True)
    (root / "wavvae" / "config.yaml").write_text(yaml.safe_dump(WAVVAE_CONFIG), encoding="utf-8")
    for sub, wrapper, fname in (("diffusion_transformer", "dit", "model_only_last.ckpt"),
                                ("duration_lm", "dur_model", "model_only_last.ckpt"),
                                ("wavvae", "model_gen", "decoder.ckpt")):
        _save(root / sub / fname, wrapper, rule_state(wrapper, seed))
    write_aligner(root, seed, aligner_seq)
    write_g2p(root / "g2p", list(g2p_chain or DEFAULT_G2P_CHAIN))
    return root
