"""Hugging Face Llama / Qwen2 folder -> GGUF for the llama.cpp backend, written with the `gguf` package.

What is written: the decoder's tensors under llama.cpp's names (f32 norms and biases; f32 or f16 matrices), its
hyper-parameters, and no tokenizer (tokenizer model "none" with the embedding's row count as vocabulary size):
fast-tts tokenizes itself and hands llama.cpp token ids or embeddings. `q8_0` and `q4_0` are the f16 file quantized
by llama.cpp's own `llama_model_quantize`.
- A stock causal LM (`LMSource.stock_head`) keeps its head: arch `qwen2` or `llama`, ids in, logits out.
- A decoder whose heads live elsewhere (ChatTTS) keeps its arch but gets a one-row placeholder token table (it is
  only ever fed embeddings) and no head, so llama.cpp's head is that one row: an unused logit that costs nothing.
  The backend reads the final-norm hidden states. (llama.cpp's head-less `llama-embed` arch would fit, but it
  attends without the KV cache, so it cannot decode.)
- Llama's rotary embedding in llama.cpp rotates adjacent pairs, Hugging Face's rotates the two halves of each head:
  Llama q/k rows are reordered per head so both compute the same thing. Qwen2 uses the halves form in both.

Files are cached next to the checkpoint (`<folder>/fast-tts-<arch>[-body]-<type>.gguf`) or, when that folder is
read-only, under the cache dir; a JSON sidecar records the source files' sizes and modification times, and a
mismatch (the checkpoint changed) rebuilds the file. Builders of the same file wait on a lock file, so one converts.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fast_tts.errors import InvalidInputError, MissingDependencyError, ModelLoadError
from fast_tts.models.lm import LMSource

GGUF_TYPES = ("f32", "f16", "q8_0", "q4_0")
QUANTIZED = ("q8_0", "q4_0")  # made from the f16 file by llama.cpp
CONVERTER_VERSION = 1  # bump when the written file changes, so cached files are rebuilt
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def default_cache_dir() -> Path:
    """$FAST_TTS_CACHE/gguf, else $XDG_CACHE_HOME/fast-tts/gguf (~/.cache/fast-tts/gguf)."""
    base = os.environ.get("FAST_TTS_CACHE")
    if base:
        return Path(base) / "gguf"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "fast-tts" / "gguf"


def check_gguf_type(gguf_type: str) -> str:
    """Validate a GGUF type name (InvalidInputError naming the choices)."""
    if gguf_type not in GGUF_TYPES:
        raise InvalidInputError(f"gguf_type must be one of {', '.join(GGUF_TYPES)}; got {gguf_type!r}", "gguf_type")
    return gguf_type


def read_config(folder: Path) -> dict:
    """The folder's config.json (ModelLoadError when missing or unreadable)."""
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {folder / 'config.json'}: {exc}") from exc


def gguf_arch(config: dict) -> str:
    """llama.cpp architecture for a Hugging Face config (ModelLoadError for one we do not convert)."""
    kind = str(config.get("model_type", "")).lower()
    if kind == "qwen2":
        return "qwen2"
    if kind == "llama":
        return "llama"
    raise ModelLoadError(f"the llama.cpp backend converts Llama and Qwen2 checkpoints, not model_type {kind!r}")


def weight_files(folder: Path) -> list[Path]:
    """The folder's safetensors files (one, or the shards of its index)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"cannot read {index}: {exc}") from exc
        files = [folder / s for s in shards]
    else:
        files = [folder / "model.safetensors"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ModelLoadError(f"weights missing in {folder}: {missing}")
    return files


def fingerprint(source: LMSource, gguf_type: str) -> dict:
    """What the cached file was built from: converter version, type, head mode, the source files' stats."""
    folder = Path(source.folder)
    files = [folder / "config.json", *weight_files(folder)]
    stats = []
    for f in files:
        st = f.stat()
        stats.append([f.name, st.st_size, st.st_mtime_ns])
    return {"converter": CONVERTER_VERSION, "type": gguf_type, "stock_head": source.stock_head, "files": stats}


def gguf_path(source: LMSource, gguf_type: str = "f16", cache_dir: str | Path | None = None) -> Path:
    """The GGUF for `source`, converted (and quantized) when missing or built from other source files.

    `cache_dir` forces where the file lives; by default it sits next to the checkpoint when that folder is
    writable, else in `default_cache_dir()` under a name derived from the checkpoint's path.
    """
    check_gguf_type(gguf_type)
    folder = Path(source.folder).resolve()
    arch = gguf_arch(read_config(folder))
    name = f"fast-tts-{arch}{'' if source.stock_head else '-body'}-{gguf_type}.gguf"
    if cache_dir is not None:
        target_dir = Path(cache_dir)
    elif os.access(folder, os.W_OK):
        target_dir = folder
    else:
        target_dir = default_cache_dir() / hashlib.sha256(str(folder).encode()).hexdigest()[:16]
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / name
    want = fingerprint(source, gguf_type)
    with _locked(target.with_suffix(".lock")):
        if _current(target, want):
            return target
        if gguf_type in QUANTIZED:
            f16 = gguf_path(source, "f16", target_dir)
            _atomic(target, lambda tmp: quantize(f16, tmp, gguf_type))
        else:
            _atomic(target, lambda tmp: write_gguf(folder, tmp, gguf_type, source.stock_head))
        target.with_suffix(".json").write_text(json.dumps(want), encoding="utf-8")
    return target


def _current(target: Path, want: dict) -> bool:
    try:
        return target.is_file() and json.loads(target.with_suffix(".json").read_text(encoding="utf-8")) == want
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _atomic(target: Path, build) -> None:
    """Build into a temporary file beside `target`, then rename it over `target`."""
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        build(Path(tmp))
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _tensors(files: list[Path]) -> Iterator[tuple[str, np.ndarray]]:
    """(name without a leading 'model.', float32 array) for every tensor of the checkpoint."""
    from safetensors import safe_open

    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - a safetensors handle, not a dict
                name = key[len("model."):] if key.startswith("model.") else key
                yield name, handle.get_tensor(key).float().numpy()


def _rope_pairs(weight: np.ndarray, heads: int) -> np.ndarray:
    """Reorder q/k rows of each head from (first half, second half) to interleaved pairs (llama.cpp's Llama rope)."""
    rows = weight.shape[0]
    dim = rows // heads
    return weight.reshape(heads, 2, dim // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_gguf(folder: Path, out: Path, gguf_type: str, stock_head: bool) -> None:
    """Convert the Hugging Face folder to a GGUF of type f32 or f16 at `out`."""
    try:
        import gguf
    except ImportError as exc:
        raise MissingDependencyError("the llama.cpp backend needs gguf: pip install 'fast-tts[llama-cpp]'") from exc
    if gguf_type not in ("f32", "f16"):
        raise InvalidInputError(f"write_gguf writes f32 or f16, got {gguf_type!r}", "gguf_type")
    cfg = read_config(folder)
    arch = gguf_arch(cfg)
    try:
        hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        kv_heads = int(cfg.get("num_key_value_heads") or heads)
        layers, inter = int(cfg["num_hidden_layers"]), int(cfg["intermediate_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{folder / 'config.json'} lacks a decoder size: {exc}") from exc
    if cfg.get("hidden_act", "silu") != "silu":
        raise ModelLoadError(f"{folder / 'config.json'}: hidden_act {cfg.get('hidden_act')!r} is not converted")
    rope = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
    if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
        raise ModelLoadError(f"{folder / 'config.json'}: rope_scaling {scaling!r} is not converted")
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    float_type = np.float16 if gguf_type == "f16" else np.float32

    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_name(folder.name)
    writer.add_context_length(int(cfg.get("max_position_embeddings", 4096)))
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(inter)
    writer.add_block_count(layers)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(cfg.get("rope_theta", rope.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if gguf_type == "f16" else gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("none")

    seen: set[str] = set()
    vocab = None
    for name, value in _tensors(weight_files(folder)):
        if name == "lm_head.weight":
            if not stock_head:
                continue
            gg = "output.weight"
        elif name == "embed_tokens.weight":
            if not stock_head:
                continue
            gg, vocab = "token_embd.weight", value.shape[0]
        elif name == "norm.weight":
            gg = "output_norm.weight"
        elif name.startswith("layers."):
            _, index, rest = name.split(".", 2)
            if rest not in _LAYER_NAMES:
                raise ModelLoadError(f"{folder}: tensor {name!r} has no llama.cpp counterpart")
            gg = f"blk.{int(index)}.{_LAYER_NAMES[rest]}"
            if arch != "qwen2" and rest.startswith(("self_attn.q_proj", "self_attn.k_proj")):
                value = _rope_pairs(value, heads if rest.startswith("self_attn.q") else kv_heads)
        elif name == "rotary_emb.inv_freq":
            continue
        else:
            raise ModelLoadError(f"{folder}: tensor {name!r} has no llama.cpp counterpart")
        seen.add(gg)
        writer.add_tensor(gg, value.astype(float_type if value.ndim == 2 else np.float32))
    if not stock_head:  # fed embeddings only; llama.cpp still wants a token table: one placeholder row
        writer.add_tensor("token_embd.weight", np.zeros((1, hidden), dtype=float_type))
        vocab = 1
    if vocab is None:
        raise ModelLoadError(f"{folder}: no embed_tokens.weight (llama.cpp needs the token embedding table)")
    for layer in range(layers):
        for part in ("attn_norm", "ffn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up",
                     "ffn_down"):
            if f"blk.{layer}.{part}.weight" not in seen:
                raise ModelLoadError(f"{folder}: layer {layer} lacks {part} (config.json says {layers} layers)")
    writer.add_vocab_size(vocab)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def quantize(src: Path, dst: Path, gguf_type: str) -> None:
    """Quantize a GGUF with llama.cpp (`llama_model_quantize`); `gguf_type` one of QUANTIZED."""
    import llama_cpp

    ftypes = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0}
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftypes[gguf_type]
    params.nthread = len(os.sched_getaffinity(0))
    code = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if code != 0:
        raise ModelLoadError(f"llama.cpp could not quantize {src} to {gguf_type} (code {code})")
