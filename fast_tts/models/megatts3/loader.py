"""Load the official MegaTTS3 checkpoint folder unchanged (ByteDance/MegaTTS3 layout).

```
root/diffusion_transformer/{config.yaml, model_only_last.ckpt}   state_dict['dit']
root/duration_lm/{config.yaml, model_only_last.ckpt}             state_dict['dur_model']
root/aligner_lm/model_only_last.ckpt                             state_dict['model']
root/wavvae/{config.yaml, decoder.ckpt | model_only_last.ckpt}   state_dict['model_gen'] (+ encoder if present)
root/g2p/                                                        Hugging Face Qwen2 folder
```
Checkpoints are read with `torch.load(weights_only=True, mmap=True)`; `module.` / `_orig_mod.` prefixes are stripped.
Missing files, missing or mis-shaped tensors raise `ModelLoadError` naming them; unexpected extra tensors are ignored
(the real DiT checkpoint carries 9 such keys, which the reference also ignores).
"""

from __future__ import annotations

import glob
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fast_tts.errors import ModelLoadError
from fast_tts.models.megatts3.aligner import Aligner
from fast_tts.models.megatts3.dit import DiT
from fast_tts.models.megatts3.duration import DurationConfig, DurationLM
from fast_tts.models.megatts3.wavvae import WaveVAEDecoder, WaveVAEEncoder, fold_weight_norm

log = logging.getLogger(__name__)

DIT_DIR, DUR_DIR, ALIGNER_DIR, VAE_DIR, G2P_DIR = "diffusion_transformer", "duration_lm", "aligner_lm", "wavvae", "g2p"
LAST_CKPT = "model_only_last.ckpt"
ENCODER_PREFIXES = ("encoder.", "proj_to_z.")  # the WavVAE encoder's tensors in `model_gen`


@dataclass
class MegaTTS3Models:
    """Every network of the pipeline plus the config values the pipeline reads."""

    dit: DiT
    duration: DurationLM
    aligner: Aligner
    wavvae: WaveVAEDecoder
    g2p: Any | None  # fast_tts.models.megatts3.g2p.G2P when loaded
    win_size: int = 960
    frames_multiple: int = 8
    vae_stride: int = 4
    hop_size: int = 240
    wavvae_encoder: WaveVAEEncoder | None = None  # present when the WaveVAE checkpoint carries the encoder
    root: str = ""


def read_yaml(path: Path) -> dict:
    """A config.yaml as a dict; ModelLoadError when missing or unreadable."""
    import yaml

    if not path.is_file():
        raise ModelLoadError(f"missing MegaTTS3 config file: {path}")
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} is not a YAML mapping")
    return data


def find_ckpt(folder: Path, name: str | None = None) -> Path:
    """`name`, else model_only_last.ckpt, else the newest model_ckpt_steps_*.ckpt (as the reference picks)."""
    if name is not None:
        path = folder / name
        if not path.is_file():
            raise ModelLoadError(f"missing MegaTTS3 checkpoint file: {path}")
        return path
    last = folder / LAST_CKPT
    if last.is_file():
        return last
    steps = sorted(glob.glob(str(folder / "model_ckpt_steps_*.ckpt")),
                   key=lambda p: int(re.findall(r"steps_(\d+)\.ckpt", p)[0]))
    if steps:
        return Path(steps[-1])
    raise ModelLoadError(f"missing MegaTTS3 checkpoint file: {last} (nor any model_ckpt_steps_*.ckpt in {folder})")


def read_state(path: Path, wrapper: str) -> dict[str, torch.Tensor]:
    """`state_dict[wrapper]` of a checkpoint, prefixes stripped; weights_only loading (no pickle code runs)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises many types for corrupt or non-weights files
        raise ModelLoadError(f"cannot load checkpoint {path}: {exc}") from exc
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or wrapper not in sd:
        keys = sorted(sd)[:8] if isinstance(sd, dict) else type(ckpt).__name__
        raise ModelLoadError(f"{path}: state_dict has no {wrapper!r} entry (found {keys})")
    out = {}
    for key, value in sd[wrapper].items():
        key = key.replace("module.", "").replace("_orig_mod.", "")
        out[key] = value
    return out


def fill(module: nn.Module, state: dict[str, torch.Tensor], source: Path,
         ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Copy tensors into `module`; missing or mis-shaped tensors raise ModelLoadError naming them."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise ModelLoadError(f"{source}: {len(missing)} missing tensors, e.g. {missing[:5]}")
    bad = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in own.items() if state[k].shape != v.shape]
    if bad:
        raise ModelLoadError(f"{source}: tensors with the wrong shape: {bad[:5]}")
    extra = [k for k in state if k not in own and not k.startswith(ignore_prefixes)]
    if extra:
        log.info("%s: ignoring %d unexpected tensors (e.g. %s)", source, len(extra), extra[:3])
    module.load_state_dict({k: state[k] for k in own}, strict=True, assign=True)


def load_megatts3(root: str | os.PathLike, *, load_g2p: bool = True, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32) -> MegaTTS3Models:
    """Build and fill every MegaTTS3 module from an official checkpoint folder."""
    root = Path(root)
    if not root.is_dir():
        raise ModelLoadError(f"MegaTTS3 checkpoint folder not found: {root}")
    for sub in (DIT_DIR, DUR_DIR, ALIGNER_DIR, VAE_DIR) + ((G2P_DIR,) if load_g2p else ()):
        if not (root / sub).is_dir():
            raise ModelLoadError(f"MegaTTS3 checkpoint folder {root} lacks the {sub}/ folder")

    dit_cfg = read_yaml(root / DIT_DIR / "config.yaml")
    dur_cfg = read_yaml(root / DUR_DIR / "config.yaml")
    vae_cfg = read_yaml(root / VAE_DIR / "config.yaml")
    win_size = dit_cfg.get("win_size")
    if win_size is None:
        log.warning("%s has no win_size; using 960", root / DIT_DIR / "config.yaml")
        win_size = 960

    with torch.device("meta"):  # no random init of ~800M parameters; tensors come from the checkpoints
        dit, aligner = DiT(), Aligner()
    path = find_ckpt(root / DIT_DIR)
    fill(dit, read_state(path, "dit"), path)

    try:
        dcfg = DurationConfig.from_yaml(dur_cfg)
    except ValueError as exc:
        raise ModelLoadError(f"{root / DUR_DIR / 'config.yaml'}: {exc}") from exc
    with torch.device("meta"):
        duration = DurationLM(dcfg)
    path = find_ckpt(root / DUR_DIR)
    fill(duration, read_state(path, "dur_model"), path)

    path = find_ckpt(root / ALIGNER_DIR)
    fill(aligner, read_state(path, "model"), path)

    melgan = vae_cfg.get("melgan_config") or {}
    with torch.device("meta"):
        wavvae = WaveVAEDecoder(use_tanh=bool(melgan.get("use_tanh", True)))
    full = root / VAE_DIR / LAST_CKPT
    path = full if full.is_file() else find_ckpt(root / VAE_DIR, "decoder.ckpt")
    state = read_state(path, "model_gen")
    encoder_part = {k: v for k, v in state.items() if k.startswith(ENCODER_PREFIXES)}
    fill(wavvae, fold_weight_norm({k: v for k, v in state.items() if k not in encoder_part}), path,
         ignore_prefixes=ENCODER_PREFIXES)
    encoder = None
    if any(k.startswith("encoder.") for k in encoder_part):  # a full WavVAE: a wav alone is enough to clone
        with torch.device("meta"):
            encoder = WaveVAEEncoder()
        fill(encoder, fold_weight_norm(encoder_part), path)
    vae_stride = int(vae_cfg.get("vae_stride", 4))
    hop_size = int(vae_cfg.get("hop_size", 4))
    if vae_stride * hop_size != 960:
        raise ModelLoadError(f"{root / VAE_DIR / 'config.yaml'}: vae_stride*hop_size = {vae_stride * hop_size}, "
                             "expected 960 (25 Hz latents at 24 kHz); set hop_size: 240")

    g2p = None
    if load_g2p:
        from fast_tts.models.megatts3.g2p import G2P

        g2p = G2P.from_folder(root / G2P_DIR)

    models = MegaTTS3Models(dit, duration, aligner, wavvae, g2p, win_size=int(win_size),
                            frames_multiple=int(dit_cfg.get("frames_multiple", 8)), vae_stride=vae_stride,
                            hop_size=hop_size, wavvae_encoder=encoder, root=str(root))
    for m in (dit, duration, aligner, wavvae, encoder, g2p):
        if m is None:
            continue
        m.to(device=device, dtype=dtype).eval()
        m.requires_grad_(False)
    aligner.pack_decoder_for_cpu()
    return models
