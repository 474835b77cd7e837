"""Write a random Qwen2 causal LM as a Hugging Face folder that `G2P.from_folder` and external engines both load.

The tokenizer is byte-level BPE with MegaTTS3's G2P specials (`<BOT>`, `<BOS>`, `<Reserved_TTS_0..801>`), so the
folder is a valid (if random) MegaTTS3 `g2p/`. Weights are normal with standard deviation `std` (norm weights
around 1): with std 0.2 greedy decoding does not collapse onto one id, so ids compared across engines mean something.
`FULL` is the Qwen2.5-0.5B shape that MegaTTS3's G2P has.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY = {"hidden": 128, "intermediate": 256, "layers": 2, "heads": 2, "kv_heads": 1, "vocab": 4096}
FULL = {"hidden": 896, "intermediate": 4864, "layers": 24, "heads": 14, "kv_heads": 2, "vocab": 151936}


def write_tokenizer(folder: Path) -> int:
    """tokenizer.json (byte-level BPE, no merges, G2P specials); returns its size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<BOT>", "<BOS>"] + [f"<Reserved_TTS_{i}>" for i in range(802)])
    tok.save(str(folder / "tokenizer.json"))
    return tok.get_vocab_size()


def write_random_qwen2(
    folder: str | Path,
    hidden: int = 128,
    intermediate: int = 256,
    layers: int = 2,
    heads: int = 2,
    kv_heads: int = 1,
    vocab: int = 4096,
    std: float = 0.2,
    seed: int = 0,
    tie: bool = False,
) -> Path:
    """config.json, tokenizer.json and model.safetensors (float32) of a random Qwen2 under `folder`."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n_tok = write_tokenizer(folder)
    if vocab < n_tok:
        raise ValueError(f"vocab {vocab} is smaller than the tokenizer ({n_tok})")
    head_dim = hidden // heads
    cfg = {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": hidden,
        "intermediate_size": intermediate, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "head_dim": head_dim, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "vocab_size": vocab, "max_position_embeddings": 4096, "tie_word_embeddings": tie, "hidden_act": "silu",
        "torch_dtype": "float32", "bos_token_id": 0, "eos_token_id": 1,
    }
    (folder / "config.json").write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    g = torch.Generator().manual_seed(seed)
    kv = kv_heads * head_dim

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=g) * std

    def norm(n: int) -> torch.Tensor:
        return 1 + 0.1 * torch.randn(n, generator=g)

    state: dict[str, torch.Tensor] = {"model.embed_tokens.weight": rand(vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        state.update({
            p + "input_layernorm.weight": norm(hidden), p + "post_attention_layernorm.weight": norm(hidden),
            p + "self_attn.q_proj.weight": rand(hidden, hidden),
            p + "self_attn.q_proj.bias": rand(hidden),
            p + "self_attn.k_proj.weight": rand(kv, hidden), p + "self_attn.k_proj.bias": rand(kv),
            p + "self_attn.v_proj.weight": rand(kv, hidden), p + "self_attn.v_proj.bias": rand(kv),
            p + "self_attn.o_proj.weight": rand(hidden, hidden),
            p + "mlp.gate_proj.weight": rand(intermediate, hidden),
            p + "mlp.up_proj.weight": rand(intermediate, hidden),
            p + "mlp.down_proj.weight": rand(hidden, intermediate),
        })
    state["model.norm.weight"] = norm(hidden)
    if not tie:
        state["lm_head.weight"] = rand(vocab, hidden)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    return folder
