"""Build ChatTTS checkpoints in the official layout (2Noise/ChatTTS `asset/...`) from a seeded weight rule.

The rule is the one the parity fixture states (every tensor = randn from a generator seeded by SEED + crc32(name),
times a per-kind scale plus offset), so the tiny fixture checkpoint is rebuilt bit for bit; the same code builds a
checkpoint of any size (full-size random weights for benchmarks and Chat tests) from a `dims` dict.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from fast_tts.models.chattts.loader import COMPONENT_FILES
from fast_tts.models.chattts.mel import htk_mel_filterbank

# The real model's sizes (2Noise/ChatTTS); `num_text_tokens` follows the tokenizer that ships with the checkpoint.
FULL_DIMS: dict[str, Any] = {
    "gpt": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 20,
            "num_audio_tokens": 626, "num_text_tokens": 21178, "num_vq": 4},
    "embed": {"hidden_size": 768, "num_audio_tokens": 626, "num_text_tokens": 21178, "num_vq": 4},
    "decoder": {"idim": 384, "odim": 384, "hidden": 512, "n_layer": 12, "bn_dim": 128},
    "dvae": {
        "encoder": {"idim": 512, "odim": 1024, "hidden": 256, "n_layer": 12, "bn_dim": 128},
        "decoder": {"idim": 512, "odim": 512, "hidden": 256, "n_layer": 12, "bn_dim": 128},
        "vq": {"dim": 1024, "levels": [5, 5, 5, 5], "G": 2, "R": 2},
    },
    "vocos": {"dim": 512, "intermediate_dim": 1536, "num_layers": 8},
}


KIND_SCALE_OFFSET = {
    "bias": (0.02, 0.0),
    "norm": (0.1, 1.0),
    "layer_scale": (0.05, 0.25),
    "wn_g": (0.1, 1.0),
    "coef": (0.1, 1.0),
}

N_MELS, N_FFT = 100, 1024


def _conv_stack(prefix: str, idim: int, odim: int, hidden: int, n_layer: int,
                bn: int) -> Iterator[tuple[str, list[int]]]:
    """Keys of one DVAE-style conv stack (conv_in, ConvNeXt blocks, conv_out)."""
    yield f"{prefix}conv_in.0.weight", [bn, idim, 3]
    yield f"{prefix}conv_in.0.bias", [bn]
    yield f"{prefix}conv_in.2.weight", [hidden, bn, 3]
    yield f"{prefix}conv_in.2.bias", [hidden]
    for i in range(n_layer):
        b = f"{prefix}decoder_block.{i}."
        yield b + "weight", [hidden]
        yield b + "dwconv.weight", [hidden, 1, 7]
        yield b + "dwconv.bias", [hidden]
        yield b + "norm.weight", [hidden]
        yield b + "norm.bias", [hidden]
        yield b + "pwconv1.weight", [4 * hidden, hidden]
        yield b + "pwconv1.bias", [4 * hidden]
        yield b + "pwconv2.weight", [hidden, 4 * hidden]
        yield b + "pwconv2.bias", [hidden]
    yield f"{prefix}conv_out.weight", [odim, hidden, 1]


def state_shapes(dims: dict[str, Any]) -> dict[str, list[tuple[str, list[int]]]]:
    """Per component, the (key, shape) list of its official state dict for the sizes in `dims`."""
    v, d, dv, e, g = dims["vocos"], dims["decoder"], dims["dvae"], dims["embed"], dims["gpt"]
    vocos: list[tuple[str, list[int]]] = [
        ("feature_extractor.mel_spec.spectrogram.window", [N_FFT]),
        ("feature_extractor.mel_spec.mel_scale.fb", [N_FFT // 2 + 1, N_MELS]),
        ("backbone.embed.weight", [v["dim"], N_MELS, 7]),
        ("backbone.embed.bias", [v["dim"]]),
        ("backbone.norm.weight", [v["dim"]]),
        ("backbone.norm.bias", [v["dim"]]),
    ]
    for i in range(v["num_layers"]):
        b = f"backbone.convnext.{i}."
        vocos += [
            (b + "gamma", [v["dim"]]),
            (b + "dwconv.weight", [v["dim"], 1, 7]),
            (b + "dwconv.bias", [v["dim"]]),
            (b + "norm.weight", [v["dim"]]),
            (b + "norm.bias", [v["dim"]]),
            (b + "pwconv1.weight", [v["intermediate_dim"], v["dim"]]),
            (b + "pwconv1.bias", [v["intermediate_dim"]]),
            (b + "pwconv2.weight", [v["dim"], v["intermediate_dim"]]),
            (b + "pwconv2.bias", [v["dim"]]),
        ]
    vocos += [
        ("backbone.final_layer_norm.weight", [v["dim"]]),
        ("backbone.final_layer_norm.bias", [v["dim"]]),
        ("head.out.weight", [N_FFT + 2, v["dim"]]),
        ("head.out.bias", [N_FFT + 2]),
        ("head.istft.window", [N_FFT]),
    ]
    enc, dec, vq = dv["encoder"], dv["decoder"], dv["vq"]
    dvae: list[tuple[str, list[int]]] = [
        ("coef", [1, N_MELS, 1]),
        ("downsample_conv.0.weight", [enc["idim"], N_MELS, 3]),
        ("downsample_conv.0.bias", [enc["idim"]]),
        ("downsample_conv.2.weight", [enc["idim"], enc["idim"], 4]),
        ("downsample_conv.2.bias", [enc["idim"]]),
        ("preprocessor_mel.mel_spec.spectrogram.window", [N_FFT]),
        ("preprocessor_mel.mel_spec.mel_scale.fb", [N_FFT // 2 + 1, N_MELS]),
    ]
    dvae += list(_conv_stack("encoder.", enc["idim"], enc["odim"], enc["hidden"], enc["n_layer"], enc["bn_dim"]))
    dvae += list(_conv_stack("decoder.", dec["idim"], dec["odim"], dec["hidden"], dec["n_layer"], dec["bn_dim"]))
    dvae.append(("out_conv.weight", [N_MELS, dec["idim"], 3]))
    group_dim, n_levels = vq["dim"] // vq["G"], len(vq["levels"])
    for gi in range(vq["G"]):
        b = f"vq_layer.quantizer.rvqs.{gi}."
        dvae += [
            (b + "project_in.weight", [n_levels, group_dim]),
            (b + "project_in.bias", [n_levels]),
            (b + "project_out.weight", [group_dim, n_levels]),
            (b + "project_out.bias", [group_dim]),
        ]
    decoder = [("coef", [1, N_MELS, 1])]
    decoder += list(_conv_stack("decoder.", d["idim"], d["odim"], d["hidden"], d["n_layer"], d["bn_dim"]))
    decoder.append(("out_conv.weight", [N_MELS, d["idim"], 3]))
    h, n_audio, n_text = e["hidden_size"], e["num_audio_tokens"], e["num_text_tokens"]
    embed = [(f"emb_code.{q}.weight", [n_audio, h]) for q in range(e["num_vq"])]
    embed.append(("emb_text.weight", [n_text, h]))
    embed += [("head_text.parametrizations.weight.original0", [n_text, 1]),
              ("head_text.parametrizations.weight.original1", [n_text, h])]
    for q in range(e["num_vq"]):
        embed += [(f"head_code.{q}.parametrizations.weight.original0", [n_audio, 1]),
                  (f"head_code.{q}.parametrizations.weight.original1", [n_audio, h])]
    gh, gi_ = g["hidden_size"], g["intermediate_size"]
    gpt: list[tuple[str, list[int]]] = []
    for i in range(g["num_hidden_layers"]):
        b = f"layers.{i}."
        gpt += [(b + f"self_attn.{p}_proj.weight", [gh, gh]) for p in "qkvo"]
        gpt += [(b + "mlp.gate_proj.weight", [gi_, gh]), (b + "mlp.up_proj.weight", [gi_, gh]),
                (b + "mlp.down_proj.weight", [gh, gi_]),
                (b + "input_layernorm.weight", [gh]), (b + "post_attention_layernorm.weight", [gh])]
    gpt.append(("norm.weight", [gh]))
    return {"vocos": vocos, "dvae": dvae, "decoder": decoder, "embed": embed, "gpt": gpt}


def weight_kind(key: str) -> str:
    """The rule row a state-dict key falls under."""
    if key.endswith(".window"):
        return "hann_window"
    if key.endswith("mel_scale.fb"):
        return "mel_fb"
    if key == "coef":
        return "coef"
    if key.endswith("parametrizations.weight.original0"):
        return "wn_g"
    if re.search(r"decoder_block\.\d+\.weight$", key) or re.search(r"convnext\.\d+\.gamma$", key):
        return "layer_scale"
    if key.endswith(".bias"):
        return "bias"
    if key.endswith(("norm.weight", "_layernorm.weight")):
        return "norm"
    return "weight"


def rule_tensor(name: str, shape: list[int], kind: str, seed: int = 0) -> torch.Tensor:
    """The float32 value the weight rule gives `name` (= `<component>.<key>`)."""
    if kind == "hann_window":
        return torch.hann_window(shape[0])
    if kind == "mel_fb":
        return htk_mel_filterbank(shape[0], 0.0, 12000.0, shape[1], 24000)
    gen = torch.Generator().manual_seed(seed + zlib.crc32(name.encode()))
    value = torch.randn(shape, generator=gen)
    if kind == "weight":
        fan_in = int(np.prod(shape)) // shape[0]
        scale, offset = fan_in**-0.5, 0.0
    else:
        scale, offset = KIND_SCALE_OFFSET[kind]
    return value * torch.tensor(scale, dtype=torch.float32) + torch.tensor(offset, dtype=torch.float32)


def tensor_sha256(t: torch.Tensor) -> str:
    """sha256 of a tensor's float32 little-endian bytes (the manifest's checksum)."""
    return hashlib.sha256(t.detach().float().contiguous().numpy().astype("<f4").tobytes()).hexdigest()


def llama_config_json(dims: dict[str, Any]) -> dict[str, Any]:
    """A Hugging Face Llama `config.json` for the GPT sizes in `dims`."""
    g = dims["gpt"]
    heads = g["num_attention_heads"]
    return {
        "architectures": ["LlamaModel"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": g["hidden_size"], "intermediate_size": g["intermediate_size"],
        "num_attention_heads": heads, "num_key_value_heads": heads, "head_dim": g["hidden_size"] // heads,
        "num_hidden_layers": g["num_hidden_layers"], "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False,
        "vocab_size": 32000,
    }


def spk_stat_string(hidden: int, seed: int = 0) -> str:
    """The fixture's spk_stat rule: base16384 of float16(std ++ mean), std = 1 + 0.5|randn|, mean = 0.5 randn."""
    import pybase16384 as b14

    rng = torch.Generator().manual_seed(seed + zlib.crc32(b"spk_stat.std"))
    std = 1 + 0.5 * torch.randn(hidden, generator=rng).abs()
    mean = 0.5 * torch.randn(hidden, generator=torch.Generator().manual_seed(seed + zlib.crc32(b"spk_stat.mean")))
    return b14.encode_to_string(torch.cat([std, mean]).half().numpy().tobytes())


SPECIAL_TOKENS = (
    ["[Sasr]", "[Pasr]", "[Easr]", "[Stts]", "[Ptts]", "[Etts]", "[Sbreak]", "[Pbreak]", "[Ebreak]", "[uv_break]",
     "[v_break]", "[lbreak]", "[llbreak]", "[undefine]", "[laugh]", "[spk_emb]", "[empty_spk]", "[music]", "[pure]"]
    + [f"[break_{i}]" for i in range(8)] + [f"[laugh_{i}]" for i in range(3)]
    + [f"[oral_{i}]" for i in range(10)] + [f"[speed_{i}]" for i in range(10)]
)


def build_tokenizer(out_dir: Path, vocab_size: int) -> None:
    """Write a BERT WordPiece tokenizer (ASCII, CJK chars, filler pieces) with the 50 ChatTTS tokens at the end."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    base = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [chr(c) for c in range(33, 127)]
    base += [chr(c) for c in range(0x4E00, 0x9FA6)]
    n_base = vocab_size - len(SPECIAL_TOKENS)
    base = base[:n_base] + [f"##p{i}" for i in range(max(0, n_base - len(base)))]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(base)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, handle_chinese_chars=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(SPECIAL_TOKENS)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config))
    (out_dir / "special_tokens_map.json").write_text(json.dumps({"additional_special_tokens": SPECIAL_TOKENS}))


def build_checkpoint(
    root: Path,
    dims: dict[str, Any],
    seed: int = 0,
    gpt_config: dict[str, Any] | None = None,
    tokenizer_dir: Path | None = None,
    spk_stat: str | None = None,
) -> dict[str, str]:
    """Write a checkpoint in the official layout under `root`; returns {`<component>.<key>`: sha256} of each tensor.

    `tokenizer_dir` is copied to `asset/tokenizer/` (else a synthetic tokenizer of `num_text_tokens` is written);
    `spk_stat` goes to `asset/spk_stat.json` (else one is drawn by the fixture's spk_stat rule).
    """
    root = Path(root)
    (root / "asset" / "gpt").mkdir(parents=True, exist_ok=True)
    hashes: dict[str, str] = {}
    for component, entries in state_shapes(dims).items():
        tensors = {}
        for key, shape in entries:
            name = f"{component}.{key}"
            tensors[key] = rule_tensor(name, shape, weight_kind(key), seed)
            hashes[name] = tensor_sha256(tensors[key])
        save_file(tensors, str(root / COMPONENT_FILES[component]))
    (root / "asset/gpt/config.json").write_text(json.dumps(gpt_config or llama_config_json(dims), indent=1))
    tok_out = root / "asset" / "tokenizer"
    if tokenizer_dir is not None:
        tok_out.mkdir(parents=True, exist_ok=True)
        for f in Path(tokenizer_dir).iterdir():
            shutil.copyfile(f, tok_out / f.name)
    else:
        build_tokenizer(tok_out, dims["embed"]["num_text_tokens"])
    spk = spk_stat if spk_stat is not None else spk_stat_string(dims["gpt"]["hidden_size"], seed)
    (root / "asset" / "spk_stat.json").write_text(json.dumps({"spk_stat": spk}, ensure_ascii=False))
    return hashes


def build_fixture_checkpoint(root: Path, fixture_dir: Path) -> dict[str, str]:
    """Rebuild the checkpoint a parity fixture folder describes (its config.json, tokenizer/ and spk_stat)."""
    cfg = json.loads((Path(fixture_dir) / "config.json").read_text())
    return build_checkpoint(root, cfg["dims"], cfg["seed"], cfg["gpt_config_json"], Path(fixture_dir) / "tokenizer",
                            cfg["spk_stat"])


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
