"""Shared helpers of the MegaTTS3 tests: where the parity fixtures live and how to read them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

SHARED_PARTS = ("diffusion_transformer", "duration_lm", "wavvae", "g2p")
_BUILT: dict[str, Path] = {}  # one build per test process, whichever module asks first

REPO = Path(__file__).resolve().parents[1]


def fixture_dir() -> Path:
    """FAST_TTS_MEGATTS3_FIXTURES, default ../shared/fixtures/megatts3 from the repo root."""
    return Path(os.environ.get("FAST_TTS_MEGATTS3_FIXTURES", REPO.parent / "shared" / "fixtures" / "megatts3"))


def cases() -> dict:
    """cases.json of the fixture set (skips the test when the set is absent)."""
    path = fixture_dir() / "cases.json"
    if not path.is_file():
        pytest.skip(f"MegaTTS3 fixtures not found at {path}")
    return json.loads(path.read_text(encoding="utf-8"))


def tensors(case: str) -> dict:
    """The stored tensors of one case."""
    from safetensors.torch import load_file

    return load_file(str(fixture_dir() / cases()["cases"][case]["file"]))


@pytest.fixture(scope="session")
def mega_root(tmp_path_factory) -> Path:
    """Rule weights (seed from cases.json) in the official layout with the plain aligner, built once per session."""
    from megatts3_checkpoint import build_checkpoint

    if "plain" not in _BUILT:
        seed = int(cases()["seed"])
        _BUILT["plain"] = build_checkpoint(tmp_path_factory.mktemp("megatts3") / "plain", seed=seed, aligner_seq=None)
    return _BUILT["plain"]


def aligner_variant(root: Path, aligner_seq: list[int]) -> Path:
    """A sibling of `root` sharing every part by symlink except the aligner, engineered to emit `aligner_seq`."""
    from megatts3_checkpoint import write_aligner

    out = root.parent / ("aligned_" + "_".join(map(str, aligner_seq)))[:80]
    if not out.exists():
        out.mkdir()
        for sub in SHARED_PARTS:
            os.symlink(root / sub, out / sub)
        write_aligner(out, int(cases()["seed"]), aligner_seq)
    return out


ENCODER_GOLDEN = REPO / "tests" / "data" / "megatts3_wavvae_encoder.safetensors"  # see its generator's docstring


def encoder_golden() -> tuple[dict, int]:
    """The upstream WaveVAE encoder's outputs (benchmarks/reference/megatts3_wavvae_encoder_golden.py) and the
    seed of their rule weights."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(ENCODER_GOLDEN), "pt") as fh:
        seed = int(fh.metadata()["seed"])
    return load_file(str(ENCODER_GOLDEN)), seed


def encoder_variant(root: Path) -> Path:
    """A sibling of `root` whose wavvae/ is a full WavVAE (model_only_last.ckpt: the decoder by the fixture rule,
    the encoder by the golden's seed) and whose aligner is engineered to the default stream; the other parts are
    shared by symlink."""
    from megatts3_checkpoint import DEFAULT_ALIGNER_SEQ, write_aligner, write_full_wavvae

    out = root.parent / "with_encoder"
    if not out.exists():
        out.mkdir()
        for sub in SHARED_PARTS:
            if sub != "wavvae":
                os.symlink(root / sub, out / sub)
        seed = int(cases()["seed"])
        write_full_wavvae(out / "wavvae", seed, encoder_golden()[1])
        write_aligner(out, seed, DEFAULT_ALIGNER_SEQ)
    return out
