"""ChatTTS normalizer: reference parity on the fixture, our wetext defaults, the homophone map and its build script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from fast_tts.errors import InvalidInputError
from fast_tts.models.chattts.homophones import DEFAULT_MAP_PATH, HomophoneMap
from fast_tts.models.chattts.normalizer import Normalizer, detect_language

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("FAST_TTS_CHATTTS_FIXTURES", ROOT.parent / "shared" / "fixtures" / "chattts"))
# (output key in the fixture, do_text_normalization, do_homophone_replacement)
COMBOS = (
    ("do_text_normalization_true", True, True),
    ("do_text_normalization_false", False, True),
    ("no_homophone_no_norm", False, False),
)


def _normalizer_case() -> dict:
    path = FIXTURES / "cases.json"
    if not path.exists():
        pytest.skip(f"no ChatTTS fixture at {FIXTURES} (set FAST_TTS_CHATTTS_FIXTURES)")
    cases = json.loads(path.read_text(encoding="utf-8"))["cases"]
    return next(c for c in cases if c["name"] == "normalizer")


@pytest.fixture(scope="session")
def reference_map(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference package's own homophone map, installed without dependencies into a temp folder (never copied)."""
    target = tmp_path_factory.mktemp("chattts_ref")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), "chattts==0.2.5"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.skip("pip install chattts==0.2.5 timed out (network unavailable?)")
    path = target / "ChatTTS" / "res" / "homophones_map.json"
    if done.returncode != 0 or not path.exists():
        pytest.skip(f"could not install chattts==0.2.5 (network unavailable?): {done.stderr[-300:]}")
    return path


def test_fixture_normalizer_case_with_reference_map(reference_map: Path) -> None:
    normalizer = Normalizer(reference_map, use_default_normalizers=False)
    for result in _normalizer_case()["outputs"]["results"]:
        for key, norm, homophones in COMBOS:
            got = normalizer(result["input"], do_text_normalization=norm, do_homophone_replacement=homophones)
            assert got == result[key], (result["input"], key)


def test_fixture_normalizer_case_without_homophones_any_map() -> None:
    normalizer = Normalizer(use_default_normalizers=False)
    for result in _normalizer_case()["outputs"]["results"]:
        assert normalizer(result["input"], False, False) == result["no_homophone_no_norm"]


def test_reference_mode_drops_digits_and_unreadable_punctuation() -> None:
    normalizer = Normalizer(use_default_normalizers=False)
    assert normalizer("我有3个苹果!", do_homophone_replacement=False) == "我有个苹果。"
    assert normalizer("Hello, world! 123 (ok)?", do_homophone_replacement=False) == "Hello, world.  ,ok,"
    # No invalid character: nothing is simplified or deleted.
    assert normalizer("Hello, world.", do_homophone_replacement=False) == "Hello, world."


def test_default_normalizers_speak_digits_zh_and_en() -> None:
    normalizer = Normalizer()
    zh = normalizer("我有3个苹果, 价格是12.5元!")
    assert "三" in zh and "十二点五" in zh and not any(c.isdigit() for c in zh)
    assert "，" in zh and zh.endswith("。")  # zh half-width punctuation became full-width, ! simplified to 。
    en = normalizer("I have 3 apples and 12 pears.")
    assert "three" in en and "twelve" in en and not any(c.isdigit() for c in en)


def test_default_normalizers_keep_tags() -> None:
    text = "[uv_break]我有3个苹果[laugh]，价格是12元[lbreak]"
    out = Normalizer()(text)
    assert out.startswith("[uv_break]") and "[laugh]" in out and out.endswith("[lbreak]")
    assert "三" in out and "十二" in out
    en = Normalizer()("[uv_break]I have 3 apples[laugh] today")
    assert en.startswith("[uv_break]") and "[laugh]" in en and "three" in en


def test_register_replaces_default_and_runs_between_tags() -> None:
    normalizer = Normalizer(use_default_normalizers=True)
    assert normalizer.register("en", str.upper)
    assert not normalizer.register("en", str.lower)  # a user fn is not overwritten
    assert normalizer("hello [uv_break] world") == "HELLO [uv_break] WORLD"
    normalizer.unregister("en")
    assert normalizer("hello 3 [uv_break] world") == "hello  [uv_break] world"
    # As in the reference: the fn sees the (possibly empty) text before every tag, and a non-empty tail.
    assert normalizer.register("en", lambda text: text + "X")
    assert normalizer("[laugh]hi[uv_break]") == "X[laugh]hiX[uv_break]"
    assert normalizer("[laugh][uv_break]hi") == "X[laugh]X[uv_break]hiX"


def test_register_rejects_bad_functions() -> None:
    normalizer = Normalizer(use_default_normalizers=False)

    def broken(text: str) -> str:
        raise RuntimeError("boom")

    assert not normalizer.register("zh", broken)
    assert not normalizer.register("zh", lambda text: 3)
    assert "zh" not in normalizer.normalizers
    assert normalizer.register("zh", lambda text: text.replace("3", "三"))
    assert normalizer("我有3个", do_homophone_replacement=False) == "我有三个"


def test_explicit_lang_overrides_detection() -> None:
    normalizer = Normalizer(use_default_normalizers=False)
    # Detected as en (2 words > 1 CJK char): commas stay half-width; forced zh: they become full-width.
    assert normalizer("ok, go 好", do_homophone_replacement=False) == "ok, go 好"
    assert normalizer("ok, go 好", do_homophone_replacement=False, lang="zh") == "ok， go 好"


def test_detect_language() -> None:
    assert detect_language("你好 world") == "zh"
    assert detect_language("你 hello world") == "en"
    assert detect_language("你好 a b") == "en"  # a tie goes to en
    assert detect_language("123") == "en"


def test_malformed_brackets_lose_no_text() -> None:
    normalizer = Normalizer(use_default_normalizers=False)
    assert normalizer("你好[abc", do_homophone_replacement=False) == "你好abc"
    assert normalizer("a]b[x]c", do_homophone_replacement=False) == "ab[x]c"
    assert normalizer("", do_homophone_replacement=False) == ""
    assert Normalizer()("") == ""


def test_shipped_map_maps_traditional_to_simplified() -> None:
    table = HomophoneMap.load()
    assert len(table) > 10000
    assert table("這個問題為什麼這麼難？後來呢") == "这个问题为什么这么难？后来呢"
    assert table("頭髮裡") == "头发里"
    pairs = json.loads(DEFAULT_MAP_PATH.read_text(encoding="utf-8"))
    assert all(len(k) == len(v) == 1 and k != v for k, v in pairs.items())
    assert "你" not in pairs and "好" not in pairs  # common simplified characters are left alone


def test_homophone_map_per_utf16_unit_single_pass(tmp_path: Path) -> None:
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"甲": "乙", "乙": "丙"}, ensure_ascii=False), encoding="utf-8")
    table = HomophoneMap.load(path)
    assert table("甲乙") == "乙丙"  # no chaining
    assert table("𠀀甲😀") == "𠀀乙😀"  # characters outside the BMP pass through
    normalizer = Normalizer(path, use_default_normalizers=False)
    assert normalizer("甲乙", do_homophone_replacement=False) == "甲乙"
    assert normalizer("甲乙") == "乙丙"


@pytest.mark.parametrize(
    "content", ['{"甲": "乙丙"}', '{"😀": "甲"}', '["甲"]', "not json", '{"甲": 1}']
)
def test_bad_map_files_raise(tmp_path: Path, content: str) -> None:
    path = tmp_path / "map.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InvalidInputError):
        HomophoneMap.load(path)
    with pytest.raises(InvalidInputError):
        HomophoneMap.load(tmp_path / "missing.json")
    with pytest.raises(InvalidInputError):
        HomophoneMap.load(tmp_path)  # a folder
    with pytest.raises(InvalidInputError):
        Normalizer(use_default_normalizers=False)(None)  # type: ignore[arg-type]


def test_build_script_against_fixture_tokenizer(tmp_path: Path) -> None:
    for module in ("opencc", "pypinyin", "jieba"):
        pytest.importorskip(module)
    from pypinyin import Style, pinyin

    tokenizer = FIXTURES / "tokenizer" / "tokenizer.json"
    if not tokenizer.exists():
        pytest.skip(f"no fixture tokenizer at {tokenizer}")
    out = tmp_path / "map.json"
    subprocess.run(
        [sys.executable, str(ROOT / "tools" / "build_homophones.py"), "--vocab", str(tokenizer), "--out", str(out)],
        check=True,
        timeout=120,
    )
    vocab = set(json.loads(tokenizer.read_text(encoding="utf-8"))["model"]["vocab"])
    pairs = json.loads(out.read_text(encoding="utf-8"))
    assert pairs and all(v in vocab for v in pairs.values())

    def main_reading(char: str) -> str:
        """pypinyin's first reading; compatibility ideographs are read through their NFKC form."""
        found = pinyin(char, style=Style.TONE3, heteronym=True, errors="ignore")
        return (found or pinyin(unicodedata.normalize("NFKC", char), style=Style.TONE3, heteronym=True))[0][0]

    for key, value in pairs.items():
        readings = pinyin(value, style=Style.TONE3, heteronym=True)[0]
        assert main_reading(key) in readings, (key, value)
    # Our map loads into the normalizer and maps a character missing from the vocabulary to one it has.
    missing = next(k for k in pairs if k not in vocab)
    normalizer = Normalizer(out, use_default_normalizers=False)
    assert normalizer(missing) == pairs[missing]
