"""MegaTTS3 CPU benchmark: per-stage times and end-to-end real-time factor on a random checkpoint of full size.

Stages (the reference CPU figures of ../shared/notes/megatts3-reference.md, 2 cores, in brackets):
G2P, Qwen2.5-0.5B shape, 120 greedy tokens [14.8 s]; aligner, 200 greedy steps [11.5 s]; duration LM [0.3 s];
DiT at `--steps` over prompt+target latents [76 s at 32 steps, 9.4 s at 4, for 336 latents = 13.4 s];
WaveVAE [51 s for the same 336 latents; we decode only the target plus 16 frames of context].

    python benchmarks/megatts3.py --threads 2 --steps 32 8 [--dtype float32 bfloat16] [--ckpt DIR]
        [--prompt-seconds 7 --target-seconds 6.4]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fast_tts.models.megatts3.dit import DiTInputs
from fast_tts.models.megatts3.g2p import G2P
from fast_tts.models.megatts3.loader import load_megatts3
from fast_tts.models.megatts3.pipeline import MegaTTS3Pipeline, bf16_autocast
from fast_tts.models.transformer import DecoderConfig

REFERENCE = {"g2p": 14.8, "aligner": 11.5, "duration": 0.3, "dit@32": 76.0, "dit@4": 9.4, "wavvae": 51.0}
QWEN25_05B = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896,
              "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
              "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "vocab_size": 152469,
              "max_position_embeddings": 32768, "tie_word_embeddings": True, "hidden_act": "silu"}


def timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


def g2p_seconds(tokens: int = 120, prompt: int = 30) -> float:
    """Greedy decoding of `tokens` tokens after a `prompt`-token prefill on a random Qwen2.5-0.5B-shaped model."""
    cfg = DecoderConfig.from_hf(QWEN25_05B)
    model = G2P(cfg, QWEN25_05B["vocab_size"], True, tokenizer=None, speech_start=151667)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.eval()
    cache = model.transformer.new_cache(1, prompt + tokens)
    ids = torch.randint(0, 150000, (1, prompt))
    t = time.perf_counter()
    with torch.inference_mode():
        pos = torch.arange(prompt)[None]
        tok = ids
        for _ in range(tokens):
            hidden = model.transformer(model.embed(tok[..., None]), pos, cache)
            tok = model.logits(hidden[:, -1])[:, 0].argmax(-1, keepdim=True)
            pos = pos[:, -1:] + 1
    return time.perf_counter() - t


def g2p_backend_seconds(dtype: str, tokens: int = 120, prompt: int = 30) -> float:
    """The same decode through the torch LM backend (prepacked oneDNN linears; `dtype` weights)."""
    import asyncio

    from fast_tts.backends import create_backend
    from fast_tts.sampling import SamplingParams

    cfg = DecoderConfig.from_hf(QWEN25_05B)
    model = G2P(cfg, QWEN25_05B["vocab_size"], True, tokenizer=None, speech_start=151667)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.eval()

    async def run() -> float:
        backend = create_backend("torch", model, max_batch=1, max_seq=prompt + tokens + 1, dtype=dtype)
        params = SamplingParams(temperature=0.0, min_new_tokens=tokens, max_new_tokens=tokens)
        ids = torch.randint(0, 150000, (prompt, 1))
        t = time.perf_counter()
        await backend.submit(ids, params).collect()
        elapsed = time.perf_counter() - t
        await backend.shutdown()
        return elapsed

    return asyncio.run(run())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", type=Path, help="checkpoint folder (built from the fixture rule when absent)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, nargs="+", default=[32, 8])
    ap.add_argument("--prompt-seconds", type=float, default=7.0)
    ap.add_argument("--target-seconds", type=float, default=6.4)
    ap.add_argument("--skip-g2p", action="store_true")
    ap.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"],
                    help="DiT/WaveVAE precision: float32, and/or bf16 autocast (the engine's torch_dtype='bfloat16')")
    ap.add_argument("--baseline", action="store_true",
                    help="also time the reference's way on this machine: aligner recomputing the prefix (and the "
                         "cross-attention K/V) every step, WaveVAE decoding prompt+target")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    ckpt = args.ckpt
    if ckpt is None or not (ckpt / "diffusion_transformer").is_dir():
        from megatts3_checkpoint import build_checkpoint

        ckpt = ckpt or Path(tempfile.mkdtemp(prefix="megatts3-bench-"))
        print(f"building a random checkpoint in {ckpt} ...", flush=True)
        build_checkpoint(ckpt)
    models, t_load = timed(load_megatts3, ckpt)
    pipe = MegaTTS3Pipeline(models)
    rows: list[tuple[str, float, float | None]] = [("load", t_load, 13.0)]

    rng = np.random.default_rng(0)
    n = int(args.prompt_seconds * 24000)
    t = np.arange(n) / 24000
    wav = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 660 * t)
           + 0.02 * rng.standard_normal(n)).astype(np.float32)
    latent = rng.standard_normal((1, n // 960 + 20, 32)).astype(np.float32)
    ref, t_pre = timed(pipe.preprocess, wav, latent)
    rows.append(("reference preprocess (engineered aligner: 16 tokens)", t_pre, None))

    from fast_tts.models.megatts3 import frontend

    _, mel = frontend.prompt_mel(frontend.pad_prompt(wav))
    _, t_al = timed(models.aligner.greedy, mel, 200, False)
    rows.append(("aligner, 200 greedy steps (KV cache)", t_al, REFERENCE["aligner"]))

    if args.baseline:
        def no_cache(steps: int = 200) -> None:
            with torch.inference_mode():
                feats = models.aligner.embed_audio(mel)
                tokens = torch.tensor([[798]])
                for _ in range(steps):
                    nxt = models.aligner.logits(tokens, feats)[:, -1].argmax(-1, keepdim=True)
                    tokens = torch.cat([tokens, nxt], 1)

        _, t_al_ref = timed(no_cache)
        rows.append(("  same machine, reference way (no KV cache)", t_al_ref, None))

    from megatts3_checkpoint import encoder_rule_state

    from fast_tts.models.megatts3.wavvae import WaveVAEEncoder, fold_weight_norm

    encoder = WaveVAEEncoder().eval()
    encoder.load_state_dict(fold_weight_norm(encoder_rule_state()))
    with torch.inference_mode():
        _, t_enc = timed(encoder, torch.from_numpy(frontend.pad_prompt(wav))[None])
    rows.append((f"WaveVAE encoder (full checkpoints only), {n / 24000:.1f} s wav", t_enc, None))
    del encoder

    if not args.skip_g2p:
        rows.append(("G2P, 120 tokens, Qwen2.5-0.5B shape (plain loop)", g2p_seconds(), REFERENCE["g2p"]))
        for dtype in ("float32", "bfloat16"):
            rows.append((f"G2P via the torch backend, {dtype}", g2p_backend_seconds(dtype), REFERENCE["g2p"]))

    ph = torch.tensor([[145, 101, 110, 131, 120, 163, 102, 148] * 4])
    tone = torch.full_like(ph, 3)
    _, t_dur = timed(models.duration.predict, ref.duration, ph, tone)
    rows.append((f"duration LM, {ph.shape[1]} phones", t_dur, REFERENCE["duration"]))

    n_ref = ref.latent.shape[1]
    n_tgt = round(args.target_seconds * 25)
    total = n_ref + n_tgt
    mel2ph_pred = torch.arange(1, ph.shape[1] + 1).repeat_interleave(-(-4 * n_tgt // ph.shape[1]))[None, :4 * n_tgt]
    from fast_tts.models.megatts3.dit import prepare_inputs

    inp: DiTInputs = prepare_inputs(ref.mel2ph, mel2ph_pred, ref.ph, ref.tone, ph, tone, ref.latent)
    audio_s = n_tgt / 25
    dit_s, vae_s = {}, {}
    for dtype in args.dtype:
        autocast = bf16_autocast(torch.device("cpu"), dtype == "bfloat16")
        for steps in args.steps:
            with torch.inference_mode(), autocast:
                x, dit_s[dtype, steps] = timed(models.dit.sample, inp, steps)
            ref_dit = REFERENCE["dit@32"] * steps / 32
            rows.append((f"DiT, {steps} steps, {total} latents, {dtype}", dit_s[dtype, steps], ref_dit))
        with torch.inference_mode(), autocast:
            _, vae_s[dtype] = timed(models.wavvae.decode_range, x.float(), n_ref)
        rows.append((f"WaveVAE, target {n_tgt} latents (+16 context), {dtype}", vae_s[dtype],
                     REFERENCE["wavvae"] * total / 336))
    if args.baseline:
        with torch.inference_mode():
            _, t_vae_ref = timed(models.wavvae, x)
        rows.append((f"  same machine, reference way (all {total} latents)", t_vae_ref, None))

    print(f"\nthreads={args.threads} prompt={n_ref / 25:.1f}s target={audio_s:.1f}s ({total} latents)")
    print(f"{'stage':55s} {'ours s':>8s} {'ref s':>8s} {'speedup':>8s}")
    for name, ours, theirs in rows:
        ref_txt = f"{theirs:8.1f}" if theirs else f"{'-':>8s}"
        sp = f"{theirs / ours:7.1f}x" if theirs else f"{'-':>8s}"
        print(f"{name:55s} {ours:8.2f} {ref_txt} {sp}")
    t_g2p = min((r[1] for r in rows if r[0].startswith("G2P")), default=0.0)
    for (dtype, steps), t_dit in dit_s.items():
        ours = t_pre + t_al + t_dur + t_g2p + vae_s[dtype] + t_dit  # conservative: both aligner runs
        theirs = REFERENCE["aligner"] + REFERENCE["g2p"] + REFERENCE["duration"] + REFERENCE["wavvae"] * total / 336 \
            + REFERENCE["dit@32"] * steps / 32 * total / 336
        print(f"end to end at {steps} steps, DiT/WaveVAE {dtype}: {ours:.1f} s for {audio_s:.1f} s of audio, "
              f"RTF {ours / audio_s:.2f} (reference ~{theirs:.0f} s, {theirs / ours:.1f}x)")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
