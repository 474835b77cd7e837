"""`fast-tts` command line, run as a real subprocess: error cases, a real speak run, streaming to stdout; README/CI."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile

from fast_tts.audio import read_audio

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    """The test's environment: the child runs the installed fast-tts, as the `fast-tts` script would."""
    return dict(os.environ, HF_HUB_OFFLINE="1")


def run_cli(*args: str, cwd: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run `python -m fast_tts.cli ARGS` (the same `main` as the `fast-tts` entry point)."""
    return subprocess.run(
        [sys.executable, "-m", "fast_tts.cli", *args],
        cwd=cwd, env=_env(), input=stdin, capture_output=True, timeout=120,
    )


ERROR_CASES = {
    "empty text": (["speak", "", "-o", "a.wav"], "input text is empty"),
    "whitespace text": (["speak", "  \n ", "-o", "a.wav"], "input text is empty"),
    "no text": (["speak", "-o", "a.wav"], "no text given"),
    "text and file": (["speak", "hi", "-i", "t.txt"], "not both"),
    "missing input file": (["speak", "-i", "missing.txt", "-o", "a.wav"], "input file not found"),
    "unknown format": (["speak", "Hello.", "--format", "xyz"], "unsupported audio format 'xyz'"),
    "unknown suffix": (["speak", "Hello.", "-o", "a.xyz"], "cannot tell the audio format"),
    "missing folder": (["speak", "Hello.", "-o", "no/such/dir/a.wav"], "does not exist"),
    "output is a folder": (["speak", "Hello.", "-o", "."], "is a directory"),
    "bad speed value": (["speak", "Hello.", "--speed", "fast"], "invalid float value"),
    "speed out of range": (["speak", "Hello.", "--speed", "9", "-o", "a.wav"], "speed must be"),
    "unknown voice": (["speak", "Hello.", "--voice", "nobody", "-o", "a.wav"], "unknown voice 'nobody'"),
    "bad model path": (["voices", "--model", "no/such/model"], "model path does not exist"),
    "missing speakers dir": (["voices", "--speakers-dir", "no/such/dir"], "speakers folder not found"),
    "unknown command": (["dance"], "invalid choice"),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_bad_input_gives_one_line_and_exit_2(tmp_path: Path, case: str) -> None:
    args, expected = ERROR_CASES[case]
    result = run_cli(*args, cwd=tmp_path)
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert stderr.count("\n") == 1 and stderr.startswith("fast-tts: error: "), stderr
    assert expected in stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "a.wav").exists()


def test_speak_writes_a_wav_and_says_where(tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("Hello from fast t t s. This file came from a text file.", encoding="utf-8")
    result = run_cli("speak", "-i", "in.txt", "-o", "out.wav", "--seed", "1", "--speed", "1.2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    out = tmp_path / "out.wav"
    assert f"wrote {out}" in result.stdout.decode()
    audio, sr = soundfile.read(out, dtype="int16")
    assert sr == 22050 and 1.5 < len(audio) / sr < 8
    assert abs(audio).max() > 1000


def test_voices_lists_the_bundled_voice(tmp_path: Path) -> None:
    result = run_cli("voices", cwd=tmp_path)
    assert result.returncode == 0
    names = [line.split()[0] for line in result.stdout.decode().splitlines()]
    assert "joe" in names and "en_US-joe-medium" in names  # the full listing: tests/test_zh_cli.py


def test_speakers_from_a_store(tmp_path: Path) -> None:
    import asyncio

    from fast_tts.engine.piper import AsyncPiperEngine

    async def make() -> None:
        engine = AsyncPiperEngine(speakers_dir=tmp_path / "store")
        await engine.add_speaker("brisk", voice="joe", speed=1.5)
        await engine.shutdown()

    asyncio.run(make())
    listed = run_cli("voices", "--speakers-dir", "store", cwd=tmp_path)
    lines = listed.stdout.decode().splitlines()
    assert lines[-1] == "brisk" and "joe" in [line.split()[0] for line in lines]  # built-ins (and languages) first
    spoken = run_cli("speak", "A stored speaker.", "--voice", "brisk", "--speakers-dir", "store", "-o", "b.wav",
                     cwd=tmp_path)
    assert spoken.returncode == 0, spoken.stderr.decode()
    assert soundfile.info(tmp_path / "b.wav").duration > 0.3


@pytest.mark.parametrize("fmt", ["wav", "mp3"])
def test_stream_to_stdout_is_one_decodable_file(tmp_path: Path, fmt: str) -> None:
    result = run_cli("speak", "Streaming to standard output. It works.", "--stream", "-o", "-",
                     "--format", fmt, cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b""
    audio, sr = read_audio(result.stdout)
    assert sr == 22050 and 1.5 < len(audio) / sr < 6


def test_stream_sends_first_bytes_before_synthesis_ends(tmp_path: Path) -> None:
    text = " ".join(f"This is sentence number {n} of a long streamed paragraph." for n in range(1, 25))
    proc = subprocess.Popen(
        [sys.executable, "-m", "fast_tts.cli", "speak", text, "--stream", "-o", "-", "--format", "pcm"],
        cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    first = proc.stdout.read1(4096)  # type: ignore[attr-defined]
    first_at = time.perf_counter()
    rest = proc.stdout.read()
    proc.wait(timeout=120)
    ended_at = time.perf_counter()
    assert proc.returncode == 0 and first
    assert ended_at - first_at > 0.5, "all audio arrived at once"
    assert (len(first) + len(rest)) / 2 / 22050 > 20


def _readme_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```(?:bash|sh|console)?\n(.*?)```", readme, re.S)
    assert block, "README.md has no fenced code block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_readme_quick_start_and_ci_agree() -> None:
    commands = _readme_commands()
    assert len(commands) == 2
    assert "fast-tts speak" in commands[0] and "torch" not in commands[0]
    assert "torch==2.13.0" in commands[1] and "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert ci[0].startswith("#!") and "set -euo pipefail" in ci
    body = [line for line in ci[1:] if line.strip() and not line.startswith("#") and line != "set -euo pipefail"]
    assert body[-1] == commands[1]


def test_stream_to_a_file_is_one_valid_file(tmp_path: Path) -> None:
    result = run_cli("speak", "One. Two.", "--stream", "-o", "s.flac", cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    info = soundfile.info(io.BytesIO((tmp_path / "s.flac").read_bytes()))
    assert info.samplerate == 22050 and info.duration > 0.3


def test_speak_works_without_torch(tmp_path: Path) -> None:
    """The base install (README's first command) has no torch: speaking must not import it."""
    script = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'transformers', 'fastapi'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from fast_tts.cli import main\n"
        "sys.exit(main(['speak', 'No torch needed.', '-o', 'nt.wav']))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=_env(), capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    assert soundfile.info(tmp_path / "nt.wav").duration > 0.5
