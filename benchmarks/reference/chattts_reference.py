"""Time the reference `chattts` 0.2.5 on a checkpoint in the official layout; prints one JSON object.

Runs only in the reference's own environment (it needs torchaudio, which cannot live beside our torch):

    python3 -m venv ~/.cache/fast-tts/ci-envs/chattts-ref
    ~/.cache/fast-tts/ci-envs/chattts-ref/bin/pip install torch==2.9.1 'torchaudio==2.9.*'
    ~/.cache/fast-tts/ci-envs/chattts-ref/bin/pip install chattts==0.2.5 requests

Our benchmarks call it as a subprocess through $FAST_TTS_REFERENCE_PYTHON (default: that environment's python) so
both sides run on the same weights in the same benchmark run. Nothing here is imported by fast_tts.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path

import ChatTTS
import torch
from ChatTTS.config import config as ref_config


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def configure(chat: ChatTTS.Chat, root: Path, dims: dict, spk_stat: str) -> None:
    """Point the reference at our checkpoint: sizes from `dims`, our spk_stat, our files' hashes."""
    g, e, d, v = dims["gpt"], dims["embed"], dims["decoder"], dims["dvae"]
    chat.config.gpt = ref_config.GPT(**g)
    chat.config.embed = ref_config.Embed(**e)
    chat.config.decoder = ref_config.Decoder(**d)
    chat.config.dvae = ref_config.DVAE(
        encoder=ref_config.Decoder(**v["encoder"]),
        decoder=ref_config.Decoder(**v["decoder"]),
        vq=ref_config.VQ(**{**v["vq"], "levels": tuple(v["vq"]["levels"])}),
    )
    voc = dims["vocos"]
    backbone = dataclasses.replace(
        chat.config.vocos.backbone,
        init_args=dataclasses.replace(
            chat.config.vocos.backbone.init_args,
            dim=voc["dim"],
            intermediate_dim=voc["intermediate_dim"],
            num_layers=voc["num_layers"],
        ),
    )
    head = dataclasses.replace(
        chat.config.vocos.head, init_args=dataclasses.replace(chat.config.vocos.head.init_args, dim=voc["dim"])
    )
    chat.config.vocos = dataclasses.replace(chat.config.vocos, backbone=backbone, head=head)
    chat.config.spk_stat = spk_stat
    files = {
        "sha256_asset_Decoder_safetensors": "asset/Decoder.safetensors",
        "sha256_asset_DVAE_safetensors": "asset/DVAE.safetensors",
        "sha256_asset_Embed_safetensors": "asset/Embed.safetensors",
        "sha256_asset_Vocos_safetensors": "asset/Vocos.safetensors",
        "sha256_asset_gpt_config_json": "asset/gpt/config.json",
        "sha256_asset_gpt_model_safetensors": "asset/gpt/model.safetensors",
        "sha256_asset_tokenizer_special_tokens_map_json": "asset/tokenizer/special_tokens_map.json",
        "sha256_asset_tokenizer_tokenizer_config_json": "asset/tokenizer/tokenizer_config.json",
        "sha256_asset_tokenizer_tokenizer_json": "asset/tokenizer/tokenizer.json",
    }
    chat.sha256_map = {key: sha256_of(root / rel) for key, rel in files.items()}


def timed_codes(chat: ChatTTS.Chat, texts: list[str], tokens: int, seed: int) -> float:
    """Seconds for the reference GPT to generate exactly `tokens` code frames for every text (with hiddens)."""
    params = chat.InferCodeParams(
        min_new_token=tokens, max_new_token=tokens, manual_seed=seed, show_tqdm=False, spk_emb=None
    )
    start = time.perf_counter()
    result = next(chat._infer_code(texts, False, chat.device, True, params))
    elapsed = time.perf_counter() - start
    assert all(len(ids) == tokens for ids in result.ids), [len(i) for i in result.ids]
    return elapsed


def timed_infer(chat: ChatTTS.Chat, texts: list[str], tokens: int, repeat: int) -> dict:
    """Best wall (and its CPU) seconds of `infer` on the texts as one list: `tokens` frames each, decode included."""
    params = chat.InferCodeParams(min_new_token=tokens, max_new_token=tokens, manual_seed=5, show_tqdm=False)
    best: dict = {}
    for _ in range(repeat):
        start, cpu = time.perf_counter(), time.process_time()
        wavs = chat.infer(texts, skip_refine_text=True, split_text=False, params_infer_code=params,
                          do_text_normalization=False)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        assert len(wavs) == len(texts)
        if not best or wall < best["wall_s"]:
            best = {"wall_s": wall, "cpu_s": cpu, "audio_s": sum(len(w) for w in wavs) / 24000}
    return best


def serving(chat: ChatTTS.Chat, texts: list[str], tokens: int) -> dict:
    """All texts as one `infer` list (generation + decode), and the first chunk of a streamed single text."""
    params = chat.InferCodeParams(min_new_token=tokens, max_new_token=tokens, manual_seed=5, show_tqdm=False)
    start = time.perf_counter()
    wavs = chat.infer(texts, skip_refine_text=True, split_text=False, params_infer_code=params,
                      do_text_normalization=False)
    elapsed = time.perf_counter() - start
    assert len(wavs) == len(texts)
    result = {"list_texts": len(texts), "list_wall_s": elapsed, "list_frames_per_s": len(texts) * tokens / elapsed}
    start = time.perf_counter()
    stream = chat.infer(texts[0], stream=True, skip_refine_text=True, split_text=False, params_infer_code=params,
                        do_text_normalization=False)
    for chunk in stream:
        if chunk.size:
            result["stream_first_chunk_s"] = time.perf_counter() - start
            result["stream_first_chunk_samples"] = int(chunk.shape[-1])
            break
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--dims", required=True, type=Path, help="JSON with gpt/embed/decoder/dvae/vocos sizes")
    parser.add_argument("--spk-stat", required=True)
    parser.add_argument("--texts", required=True, type=Path, help="JSON list of texts")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--e2e-tokens", type=int, default=470, help="code frames of the end-to-end utterance")
    parser.add_argument("--infer-batches", default="", help="batch sizes for timed_infer (e.g. 1,8)")
    parser.add_argument("--infer-tokens", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--serving-tokens", type=int, default=0,
                        help="if > 0: also time infer() of all texts as one list and the first streamed chunk")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    chat = ChatTTS.Chat(logging.getLogger("reference"))
    configure(chat, args.checkpoint, json.loads(args.dims.read_text()), args.spk_stat)
    start = time.perf_counter()
    assert chat.load(source="custom", custom_path=str(args.checkpoint), device=torch.device("cpu"))
    out: dict = {"load_s": time.perf_counter() - start, "threads": args.threads, "torch": torch.__version__}
    texts = json.loads(args.texts.read_text())
    if args.infer_batches:
        timed_infer(chat, texts[:1], 4, 1)  # warm-up (the normalizer's JIT, first allocations)
        out["infer"] = {
            f"batch{b}": timed_infer(chat, [texts[i % len(texts)] for i in range(b)], args.infer_tokens, args.repeat)
            for b in (int(x) for x in args.infer_batches.split(","))
        }
    short = 8
    for batch in [int(b) for b in args.batches.split(",") if b]:
        rows = [texts[i % len(texts)] for i in range(batch)]
        timed_codes(chat, rows, short, 1)  # warm-up
        t_short = timed_codes(chat, rows, short, 1)
        t_long = timed_codes(chat, rows, args.tokens, 1)
        step = (t_long - t_short) / (args.tokens - short)
        out[f"batch{batch}"] = {
            "ms_per_step": step * 1000,
            "frames_per_s": batch / step,
            "total_s": t_long,
            "aggregate_frames_per_s_incl_prefill": batch * args.tokens / t_long,
        }
    if args.e2e_tokens:
        params = chat.InferCodeParams(
            min_new_token=args.e2e_tokens, max_new_token=args.e2e_tokens, manual_seed=3, show_tqdm=False
        )
        start = time.perf_counter()
        wavs = chat.infer(
            texts[0], skip_refine_text=True, split_text=False, params_infer_code=params, do_text_normalization=False
        )
        elapsed = time.perf_counter() - start
        seconds = len(wavs[0]) / 24000
        out["e2e"] = {"audio_s": seconds, "wall_s": elapsed, "rtf": elapsed / seconds}
    if args.serving_tokens:
        out["serving"] = serving(chat, texts, args.serving_tokens)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
