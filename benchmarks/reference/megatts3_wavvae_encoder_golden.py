"""Write tests/data/megatts3_wavvae_encoder.safetensors: outputs of the upstream MegaTTS3 WaveVAE encoder on rule
weights, the oracle for `WaveVAEEncoder` (the shared fixtures cover only the decoder).

    python benchmarks/reference/megatts3_wavvae_encoder_golden.py --megatts3 /path/to/MegaTTS3 [--out FILE]

`--megatts3` is a checkout of github.com/bytedance/MegaTTS3 (its `tts/modules/wavvae/` is imported from there; it
needs `einops`). Weights follow the shared fixture rule (tests/megatts3_checkpoint.py `rule_tensor`) over
the `model_gen` keys `encoder.*` and `proj_to_z.*`, seed `SEED`; inputs follow `encoder_input` below. Nothing here is
imported by fast_tts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from megatts3_checkpoint import encoder_input, rule_tensor

SEED = 0
LENGTHS = (31200, 700)  # 1.3 s (not a whole number of 960-sample frames) and a clip shorter than the deep paddings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megatts3", required=True, help="checkout of bytedance/MegaTTS3")
    golden = Path(__file__).resolve().parents[2] / "tests/data/megatts3_wavvae_encoder.safetensors"
    parser.add_argument("--out", default=str(golden))
    args = parser.parse_args()
    sys.path.insert(0, args.megatts3)
    from tts.modules.wavvae.decoder.diag_gaussian import DiagonalGaussianDistribution
    from tts.modules.wavvae.decoder.seanet_encoder import Encoder

    model = torch.nn.Module()
    model.encoder = Encoder(dowmsamples=[6, 5, 4, 4, 2])  # as WavVAE_V3 builds it
    model.proj_to_z = torch.nn.Linear(512, 64)
    state = {k: rule_tensor(k, tuple(v.shape), SEED) for k, v in model.state_dict().items()}
    model.load_state_dict(state, strict=True)
    model.eval()
    out = {}
    with torch.inference_mode():
        for n in LENGTHS:
            wav = encoder_input(n)
            x = model.proj_to_z(model.encoder(wav).permute(0, 2, 1)).permute(0, 2, 1)
            posterior = DiagonalGaussianDistribution(x)
            out[f"mean_{n}"] = posterior.mean.permute(0, 2, 1).contiguous()
            out[f"logvar_{n}"] = posterior.logvar.permute(0, 2, 1).contiguous()
    save_file(out, args.out, metadata={"source": "bytedance/MegaTTS3 tts/modules/wavvae", "seed": str(SEED),
                                       "torch": torch.__version__})
    print({k: tuple(v.shape) for k, v in out.items()}, "->", args.out)


if __name__ == "__main__":
    main()
