"""Run upstream ChatTTS's own scripts unchanged, on the reference or on fast_tts, and record what `Chat` returned.

    # in the reference's environment (see chattts_reference.py), then in ours:
    python benchmarks/reference/chattts_upstream_scripts.py --impl reference --upstream UPSTREAM --checkpoint CKPT \
        --dims DIMS.json --spk-stat STR --out OUT/ref 'tests/#511.py'
    python benchmarks/reference/chattts_upstream_scripts.py --impl ours ... --out OUT/ours 'tests/#511.py'
    python benchmarks/reference/chattts_upstream_scripts.py --compare OUT/ref OUT/ours

UPSTREAM is a checkout of the 2noise/ChatTTS repository (read at run time, nothing of it is copied here). For
`--impl ours` the module `ChatTTS` is fast_tts (what `import fast_tts as ChatTTS` does), so each script runs as
written. The script runs in a scratch folder holding the checkpoint as `asset/` and upstream's `tools/`, with
$HF_HOME pointing at a cache whose 2Noise/ChatTTS snapshot is the checkpoint (source="huggingface" works
offline). For the reference, its config gets the checkpoint's sizes, spk_stat and file hashes (it cannot read
sizes from the files). On both sides the global torch generator is seeded right after `load`, since the two
loaders draw differently from it. Every `infer` result is saved to OUT (npz per call, strings as JSON), with the
exit status and the script's output, for `--compare`.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np

SEED_AFTER_LOAD = 1234


def _record(out: Path):
    calls = {"n": 0}

    def save(kind: str, value) -> None:
        i = calls["n"]
        calls["n"] += 1
        if kind == "text":
            (out / f"call{i:02d}.json").write_text(json.dumps(value, ensure_ascii=False))
        else:
            arrays = {f"a{j:03d}": np.asarray(v, dtype=np.float32) for j, v in enumerate(value)}
            np.savez(out / f"call{i:02d}_{kind}.npz", **arrays)

    return save


def _wrap_chat(chat_cls, out: Path, configure) -> None:
    """Seed after load, configure the reference, and record every infer result."""
    import torch

    save = _record(out)
    original_init, original_load, original_infer = chat_cls.__init__, chat_cls.load, chat_cls.infer

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        if configure is not None:
            configure(self)

    def load(self, *args, **kwargs):
        ok = original_load(self, *args, **kwargs)
        torch.manual_seed(SEED_AFTER_LOAD)
        return ok

    def infer(self, *args, **kwargs):
        result = original_infer(self, *args, **kwargs)
        if kwargs.get("stream") or (len(args) > 1 and args[1]):
            def chunks():
                got = []
                try:
                    for chunk in result:
                        got.append(np.asarray(chunk))
                        yield chunk
                finally:
                    save("stream", [np.concatenate(got, axis=-1).reshape(-1)] if got else [])
            return chunks()
        if isinstance(result, str) or (isinstance(result, list) and result and isinstance(result[0], str)):
            save("text", result)
        else:
            save("wav", list(result))
        return result

    chat_cls.__init__, chat_cls.load, chat_cls.infer = init, load, infer


def run(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ckpt = Path(args.checkpoint).resolve()
    upstream = Path(args.upstream).resolve()
    work = Path(tempfile.mkdtemp(prefix="chattts_script_"))
    (work / "asset").symlink_to(ckpt / "asset")
    shutil.copytree(upstream / "tools", work / "tools")
    snap = work / "hf" / "hub" / "models--2Noise--ChatTTS" / "snapshots"
    snap.mkdir(parents=True)
    (snap / "fixture").symlink_to(ckpt)
    os.environ["HF_HOME"] = str(work / "hf")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.chdir(work)
    sys.path.insert(0, str(work))
    if args.impl == "ours":
        import fast_tts

        sys.modules["ChatTTS"] = fast_tts

        def levels_scale(chat) -> None:
            chat.config.residual_scale_base = "levels"  # encode audio prompts as vector_quantize_pytorch 1.32

        _wrap_chat(fast_tts.Chat, out, levels_scale if args.vq_levels else None)
    else:
        import ChatTTS

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from chattts_reference import configure as configure_reference

        dims = json.loads(Path(args.dims).read_text())
        _wrap_chat(ChatTTS.Chat, out, lambda chat: configure_reference(chat, ckpt, dims, args.spk_stat))
    sys.argv = [args.script, *args.script_args]
    status = 0
    try:
        runpy.run_path(str(upstream / args.script), run_name="__main__")
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        (out / "traceback.txt").write_text(traceback.format_exc())
        status = 99
    (out / "status.json").write_text(json.dumps({"script": args.script, "exit": status}))
    return 0


def compare(ref_dir: Path, ours_dir: Path) -> int:
    """Print, per recorded call, whether our result equals the reference's (strings exactly, wavs to 1e-5)."""
    status = {d: json.loads((d / "status.json").read_text()) for d in (ref_dir, ours_dir)}
    print(f"exit status: reference {status[ref_dir]['exit']}, ours {status[ours_dir]['exit']}")
    bad = 0
    names = sorted(p.name for p in ref_dir.glob("call*"))
    if names != sorted(p.name for p in ours_dir.glob("call*")):
        print(f"different calls: reference {names}, ours {sorted(p.name for p in ours_dir.glob('call*'))}")
        return 1
    for name in names:
        if name.endswith(".json"):
            a, b = (json.loads((d / name).read_text()) for d in (ref_dir, ours_dir))
            same = a == b
            print(f"{name}: text {'equal' if same else 'DIFFERENT'}" + ("" if same else f"\n  ref  {a}\n  ours {b}"))
        else:
            a, b = (np.load(d / name) for d in (ref_dir, ours_dir))
            same = sorted(a.files) == sorted(b.files)
            for key in sorted(a.files):
                x, y = a[key], b[key]
                n = min(len(x), len(y))
                bad_at = np.nonzero(np.abs(x[:n] - y[:n]) > 1e-4)[0]
                first = int(bad_at[0]) if len(bad_at) else n
                ok = len(x) == len(y) and first == n
                same &= ok
                # the reference decodes a short row padded to the batch's longest: its last frames (about 4400
                # samples, the decoders' reach) and the padding differ from ours by design
                print(f"{name}/{key}: {len(x)} vs {len(y)} samples, equal for the first {first}"
                      f"{'' if ok else ' (then different)'}")
        bad += not same
    return 1 if bad else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--impl", choices=["reference", "ours"])
    ap.add_argument("--upstream")
    ap.add_argument("--checkpoint")
    ap.add_argument("--dims")
    ap.add_argument("--spk-stat")
    ap.add_argument("--out")
    ap.add_argument("--vq-levels", action="store_true",
                    help="ours: DVAE residual scale of vector_quantize_pytorch 1.32, as the reference installs it")
    ap.add_argument("--compare", nargs=2, type=Path)
    ap.add_argument("script", nargs="?")
    ap.add_argument("script_args", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    sys.exit(compare(*args.compare) if args.compare else run(args))


if __name__ == "__main__":
    main()
