"""`fast-tts` with Chinese text, as a real subprocess: the default voices speak it, a voice that cannot read it
fails with one line and exit 2 (no file left behind), and so does an install without the [zh] extra."""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile
from test_cli import run_cli
from zh_voice import require_zh, run_without_zh

CHINESE = "你好，今天是2024年3月5日。"


def one_line_error(stderr: bytes | str) -> str:
    text = stderr.decode() if isinstance(stderr, bytes) else stderr
    assert text.count("\n") == 1 and text.startswith("fast-tts: error: ") and "Traceback" not in text, text
    return text


def test_speak_chinese_and_mixed_text(tmp_path: Path) -> None:
    require_zh()
    result = run_cli("speak", CHINESE + " And some English.", "-o", "zh.wav", cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    audio, sr = soundfile.read(tmp_path / "zh.wav", dtype="int16")
    assert sr == 22050 and 3 < len(audio) / sr < 12 and abs(audio).max() > 1000


@pytest.mark.parametrize("stream", [False, True])
def test_a_voice_that_cannot_read_the_text_fails_cleanly(tmp_path: Path, stream: bool) -> None:
    require_zh()
    args = ["speak", CHINESE, "--voice", "joe", "-o", "a.wav", *(["--stream"] if stream else [])]
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    message = one_line_error(result.stderr)
    assert "voice 'joe' speaks English and cannot read the Chinese text" in message and "zf_xiaobei" in message
    assert not (tmp_path / "a.wav").exists()


def test_voices_lists_languages(tmp_path: Path) -> None:
    require_zh()
    result = run_cli("voices", cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    lines = [line.split() for line in result.stdout.decode().splitlines()]
    assert lines[0] == ["auto", "(default)", "en,", "zh", "(en:", "joe,", "zh:", "zf_xiaobei)"]
    assert all([name, lang] in lines for name, lang in [("joe", "en"), ("zf_xiaobei", "zh"), ("jm_kumo", "zh")])


def test_without_the_extra_chinese_is_refused_with_the_install_command(tmp_path: Path) -> None:
    code = f"""
import sys
from fast_tts.cli import main
sys.exit(main(["speak", {CHINESE!r}, "-o", {str(tmp_path / "a.wav")!r}]))
"""
    result = run_without_zh(code)
    assert result.returncode == 2
    message = one_line_error(result.stderr)
    assert message.strip().endswith("a Mandarin voice comes with pip install 'fast-tts[zh]'")
    assert not (tmp_path / "a.wav").exists()
    listing = run_without_zh("import sys\nfrom fast_tts.cli import main\nsys.exit(main(['voices']))")
    assert listing.returncode == 0 and listing.stdout.split() == ["en_US-joe-medium", "en", "joe", "(default)", "en"]
