"""Load a ChatTTS checkpoint in the official layout (Hugging Face repo 2Noise/ChatTTS) into plain PyTorch modules.

Layout under `root`: `asset/{Vocos,DVAE,Decoder,Embed}.safetensors`, `asset/gpt/{config.json,model.safetensors}`,
`asset/tokenizer/tokenizer.json`. Sizes come from `gpt/config.json` and the tensor shapes (config.py). Files elsewhere
can be named one by one with `CheckpointPaths` (the reference's `Config.path` fields).

`spk_stat` (std ++ mean of the speaker distribution, needed by `sample_random_speaker`) is not among the files
ChatTTS 0.2 reads: the reference keeps it as a string in its Python config. We take, in this order: the `spk_stat`
argument, `asset/spk_stat.json` ({"spk_stat": "<base16384 string>"}), or `asset/spk_stat.pt` (the 0.1-era tensor
std ++ mean, read with `torch.load(weights_only=True)`, cast to float16).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from fast_tts.errors import ModelLoadError
from fast_tts.models.chattts.config import ChatTTSConfig, config_from_shapes
from fast_tts.models.chattts.dvae import DVAE, MelDecoder
from fast_tts.models.chattts.gpt import WN_G, WN_V, ChatTTSEmbed, ChatTTSGPT, CodeLM, TextLM
from fast_tts.models.chattts.quantizer import ScaleBase
from fast_tts.models.chattts.speaker import parse_spk_stat
from fast_tts.models.chattts.tokenizer import ChatTTSTokenizer
from fast_tts.models.chattts.vocos import Vocos
from fast_tts.models.lm import LMSource
from fast_tts.models.transformer import Transformer

COMPONENT_FILES = {
    "vocos": "asset/Vocos.safetensors",
    "dvae": "asset/DVAE.safetensors",
    "decoder": "asset/Decoder.safetensors",
    "embed": "asset/Embed.safetensors",
    "gpt": "asset/gpt/model.safetensors",
}
GPT_CONFIG = "asset/gpt/config.json"
TOKENIZER = "asset/tokenizer/tokenizer.json"
SPK_STAT = "asset/spk_stat.json"
SPK_STAT_PT = "asset/spk_stat.pt"
# Files the reference hashes; the sha256 map key is "sha256_" + path with "/" and "." replaced by "_".
HASHED_FILES = (
    "asset/Decoder.safetensors", "asset/DVAE.safetensors", "asset/Embed.safetensors", "asset/Vocos.safetensors",
    "asset/gpt/config.json", "asset/gpt/model.safetensors", "asset/tokenizer/special_tokens_map.json",
    "asset/tokenizer/tokenizer_config.json", "asset/tokenizer/tokenizer.json",
)
# Tensors a checkpoint may carry that nothing uses (the reference deletes the GPT's token embedding).
IGNORED = {"gpt": {"embed_tokens.weight"}}


@dataclass(frozen=True)
class CheckpointPaths:
    """Where each part of a checkpoint is: the four module files, the GPT folder (config.json + model.safetensors)
    and the tokenizer folder; the speaker statistics are looked for next to Embed.safetensors."""

    vocos: Path
    dvae: Path
    decoder: Path
    embed: Path
    gpt_dir: Path
    tokenizer_dir: Path

    @classmethod
    def under(cls, root: str | Path) -> CheckpointPaths:
        """The official layout under `root`."""
        root = Path(root)
        return cls(
            vocos=root / COMPONENT_FILES["vocos"],
            dvae=root / COMPONENT_FILES["dvae"],
            decoder=root / COMPONENT_FILES["decoder"],
            embed=root / COMPONENT_FILES["embed"],
            gpt_dir=(root / GPT_CONFIG).parent,
            tokenizer_dir=(root / TOKENIZER).parent,
        )

    def files(self) -> dict[str, Path]:
        """Per component, its safetensors file."""
        return {"vocos": self.vocos, "dvae": self.dvae, "decoder": self.decoder, "embed": self.embed,
                "gpt": self.gpt_dir / "model.safetensors"}

    def required(self) -> list[Path]:
        """Every file a load reads."""
        return [*self.files().values(), self.gpt_dir / "config.json", self.tokenizer_dir / "tokenizer.json"]


def sha256_key(rel_path: str) -> str:
    """The reference's sha256-map key of a file, e.g. `sha256_asset_gpt_config_json`."""
    return "sha256_" + rel_path.replace("/", "_").replace(".", "_")


@dataclass
class ChatTTSModels:
    """The loaded ChatTTS modules (eval mode) plus tokenizer and speaker statistics."""

    config: ChatTTSConfig
    gpt: ChatTTSGPT
    dvae: DVAE
    decoder: MelDecoder
    vocos: Vocos
    tokenizer: ChatTTSTokenizer
    spk_std: torch.Tensor | None
    spk_mean: torch.Tensor | None

    @property
    def code_lm(self) -> CodeLM:
        """LM adapter for code generation."""
        return CodeLM(self.gpt)

    @property
    def text_lm(self) -> TextLM:
        """LM adapter for text refinement."""
        return TextLM(self.gpt)


def verify_files(root: Path, sha256_map: Mapping[str, str]) -> None:
    """Check every file named in `sha256_map` (reference key names); ModelLoadError naming the first mismatch."""
    known = {sha256_key(p): p for p in HASHED_FILES}
    for key, expected in sha256_map.items():
        if key not in known:
            raise ModelLoadError(f"unknown sha256 map key {key!r}; known keys: {', '.join(sorted(known))}")
        path = root / known[key]
        if not path.is_file():
            raise ModelLoadError(f"missing checkpoint file {path}")
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != expected.lower():
            raise ModelLoadError(
                f"sha256 mismatch for {path}: got {digest.hexdigest()}, expected {expected} ({key})"
            )


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (a safetensors handle, not a dict)
    except Exception as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc


def _checkpoint_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """The tensor names and shapes a module expects in its checkpoint (before weight-norm folding and fusion)."""
    shapes: dict[str, tuple[int, ...]] = {}
    heads = {n for n, m in module.named_modules()
             if n.startswith(("head_code", "head_text")) and isinstance(m, nn.Linear)}
    for key, t in module.state_dict().items():
        base, _, leaf = key.rpartition(".")
        if base in heads and leaf == "weight":
            shapes[f"{base}.{WN_G}"] = (t.shape[0], 1)
            shapes[f"{base}.{WN_V}"] = tuple(t.shape)
        elif key.endswith("self_attn.wqkv.weight"):
            attn = module.get_submodule(base.rpartition(".")[0])
            for name, rows in zip("qkv", attn.split):
                shapes[f"{base[: -len('wqkv')]}{name}_proj.weight"] = (rows, t.shape[1])
        elif key.endswith("self_attn.wqkv.bias"):
            attn = module.get_submodule(base.rpartition(".")[0])
            for name, rows in zip("qkv", attn.split):
                shapes[f"{base[: -len('wqkv')]}{name}_proj.bias"] = (rows,)
        elif key.endswith("mlp.w13.weight"):
            for name in ("gate_proj", "up_proj"):
                shapes[f"{base[: -len('w13')]}{name}.weight"] = (t.shape[0] // 2, t.shape[1])
        else:
            shapes[key] = tuple(t.shape)
    return shapes


def _load_into(module: nn.Module, tensors: dict[str, torch.Tensor], component: str, path: Path) -> None:
    """Strict load with errors that name the file, the key and both shapes."""
    expected = _checkpoint_shapes(module)
    tensors = {k: v for k, v in tensors.items() if k not in IGNORED.get(component, ())}
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise ModelLoadError(f"{path}: missing tensor {missing[0]!r} ({len(missing)} missing in all)")
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise ModelLoadError(f"{path}: unexpected tensor {unexpected[0]!r} ({len(unexpected)} unexpected in all)")
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise ModelLoadError(
                f"{path}: tensor {key!r} has shape {tuple(tensors[key].shape)}, expected {shape}"
            )
    module.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)


def _consistent(cfg: ChatTTSConfig) -> ChatTTSConfig:
    """Tie the sizes that must agree across files to one source, so a mismatch shows up as a named shape error."""
    h = cfg.gpt.hidden_size
    dv = cfg.dvae
    return replace(
        cfg,
        embed=replace(cfg.embed, hidden_size=h),
        decoder=replace(cfg.decoder, idim=h // 2, odim=h // 2),
        dvae=replace(dv, encoder=replace(dv.encoder, odim=dv.vq_dim),
                     decoder=replace(dv.decoder, idim=dv.vq_dim // 2, odim=dv.vq_dim // 2)),
    )


def _speaker_stats(folder: Path, spk_stat: str | None, hidden: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(std, mean) float16 from the argument, spk_stat.json or spk_stat.pt in `folder`; (None, None) when absent."""
    as_json, as_pt = folder / Path(SPK_STAT).name, folder / Path(SPK_STAT_PT).name
    if spk_stat is None and as_json.is_file():
        try:
            spk_stat = json.loads(as_json.read_text(encoding="utf-8"))["spk_stat"]
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"cannot read {as_json}: {exc}") from exc
    if spk_stat is not None:
        return parse_spk_stat(spk_stat, hidden)
    if as_pt.is_file():
        try:
            stat = torch.load(as_pt, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelLoadError(f"cannot read {as_pt}: {exc}") from exc
        if not isinstance(stat, torch.Tensor) or stat.numel() != 2 * hidden:
            raise ModelLoadError(f"{as_pt} must hold a tensor of {2 * hidden} values (std ++ mean)")
        std, mean = stat.reshape(-1).to(torch.float16).chunk(2)
        return std.clone(), mean.clone()
    return None, None


def load_chattts(
    root: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    verify_sha256: Mapping[str, str] | None = None,
    spk_stat: str | None = None,
    residual_scale_base: ScaleBase = "levels_minus_1",
    paths: CheckpointPaths | None = None,
) -> ChatTTSModels:
    """Load every ChatTTS module from `root` (or from `paths`, file by file); the GPT (stack, embeddings, heads) runs
    in `dtype`, decoding in float32.

    `verify_sha256` uses the reference's map keys (`sha256_asset_DVAE_safetensors`, ...) for files under `root`.
    Raises ModelLoadError naming the file (and the tensor) that is missing, corrupt or of the wrong shape.
    """
    root = Path(root)
    paths = paths or CheckpointPaths.under(root)
    for path in paths.required():
        if not path.is_file():
            raise ModelLoadError(f"missing checkpoint file {path}")
    if verify_sha256:
        verify_files(root, verify_sha256)
    gpt_config = paths.gpt_dir / "config.json"
    try:
        gpt_json = json.loads(gpt_config.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {gpt_config}: {exc}") from exc
    files = paths.files()
    tensors = {c: _read_tensors(path) for c, path in files.items()}
    shapes = {c: {k: tuple(v.shape) for k, v in t.items()} for c, t in tensors.items()}
    try:
        cfg = _consistent(config_from_shapes(gpt_json, shapes, residual_scale_base))
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelLoadError(f"{root}: cannot derive the model sizes: {exc}") from exc
    with torch.device("cpu"):
        modules: dict[str, nn.Module] = {
            "vocos": Vocos(cfg.vocos),
            "dvae": DVAE(cfg.dvae),
            "decoder": MelDecoder(cfg.decoder),
            "embed": ChatTTSEmbed(cfg.embed),
            "gpt": Transformer(cfg.gpt),
        }
    for comp, module in modules.items():
        _load_into(module, tensors[comp], comp, files[comp])
    del tensors
    tokenizer_file = paths.tokenizer_dir / "tokenizer.json"
    try:
        tokenizer = ChatTTSTokenizer(tokenizer_file)
    except Exception as exc:
        raise ModelLoadError(f"cannot read {tokenizer_file}: {exc}") from exc
    if len(tokenizer) > cfg.embed.num_text_tokens:
        raise ModelLoadError(
            f"{tokenizer_file} has {len(tokenizer)} tokens but emb_text has {cfg.embed.num_text_tokens} rows"
        )
    std, mean = _speaker_stats(paths.embed.parent, spk_stat, cfg.gpt.hidden_size)
    gpt = ChatTTSGPT(modules["gpt"], modules["embed"]).to(device=device, dtype=dtype).eval()
    gpt.source = LMSource(paths.gpt_dir, stock_head=False)
    return ChatTTSModels(
        config=cfg,
        gpt=gpt,
        dvae=modules["dvae"].to(device).eval(),
        decoder=modules["decoder"].to(device).eval(),
        vocos=modules["vocos"].to(device).eval(),
        tokenizer=tokenizer,
        spk_std=std,
        spk_mean=mean,
    )
