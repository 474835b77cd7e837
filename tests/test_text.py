"""Text frontend: wetext normalization, language detection, splitting invariants, tags, clean-up for TTS."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fast_tts.errors import InvalidInputError
from fast_tts.text import (
    TAG_RE,
    clean_for_tts,
    detect_language,
    get_normalizer,
    normalize,
    split_sentences,
    split_text,
    text_length,
)

ASCII_DIGIT = re.compile("[0-9]")


# ---------------------------------------------------------------- normalization


def test_normalize_en_speaks_numbers_and_money() -> None:
    out = normalize("I have 3 apples and $5.50", "en")
    assert not ASCII_DIGIT.search(out)
    assert out == "I have three apples and five dollars and fifty cents"
    assert normalize("It was $0.99, now £1.01.", "en") == "It was ninety nine cents, now one pound and one penny."


def test_normalize_en_exact() -> None:
    assert normalize("I have 3 apples") == "I have three apples"
    assert normalize("Up 25% at 10:30 pm", "en") == "Up twenty five percent at ten thirty PM"
    assert normalize("It weighs 12.5 kg.") == "It weighs twelve point five kilograms."


def test_normalize_zh_dates_times_percent_money() -> None:
    out = normalize("2024年3月5日 下午3点 温度25% 价格12.5元")
    assert out == "二零二四年三月五日 下午三点 温度百分之二十五 价格十二点五元"
    assert not ASCII_DIGIT.search(out)


def test_normalize_zh_units_and_robust_properties() -> None:
    out = normalize("他跑了100米，用时9.58秒，体重70kg，第1名，1/3的人。", "zh")
    assert not ASCII_DIGIT.search(out)
    for word in ("一百米", "九点五八秒", "七十千克", "第一名", "三分之一"):
        assert word in out
    assert out.endswith("。")


def test_normalize_keeps_control_tags() -> None:
    text = "[uv_break]我有3个苹果[laugh]，[speed_5]好的[break_3]"
    out = normalize(text)
    assert out == "[uv_break]我有三个苹果[laugh]，[speed_5]好的[break_3]"
    en = normalize("hello [uv_break] world 3 [laugh] times [speed_5]")
    assert en == "hello [uv_break] world three [laugh] times [speed_5]"
    assert TAG_RE.findall(normalize("[oral_2]3 [Stts] 4[break_6]", "en")) == ["[oral_2]", "[Stts]", "[break_6]"]


def test_normalize_mixed_reads_numbers_by_their_neighbour() -> None:
    out = normalize("I love 北京 and 3 apples, 还有5个梨。")
    assert "three apples" in out and "五个梨" in out and "北京" in out
    assert not ASCII_DIGIT.search(out)


def test_normalize_keeps_line_breaks_and_handles_odd_input() -> None:
    assert normalize("line one 3.\nline two 4.") == "line one three.\nline two four."
    assert normalize("") == ""
    assert normalize("１２％", "zh") == "百分之十二"  # full-width digits are read like ASCII ones
    assert normalize("a  b   3", "en") == "a b three"  # runs of spaces (the English FST rejects them)
    # CJK forced through "en": CJK runs still go to the Chinese FST instead of failing
    assert normalize("我有3个", "en") == "我有three个"


def test_normalize_undoes_wetext_escapes_and_reads_grouped_numbers() -> None:
    assert normalize('He said "hi" 3 times', "en") == 'He said "hi" three times'  # wetext itself returns \\"hi\\"
    assert normalize('他说"你好"3次') == '他说"你好"三次'
    assert normalize("1,000 ", "zh") == "一千 "
    assert normalize("It costs $2,000", "en") == "It costs two thousand dollars"
    assert normalize("1,000 people paid $1,500.25", "en") == (
        "one thousand people paid one thousand five hundred dollars and twenty five cents"
    )  # wetext alone says "thousand people" and "thousand five hundred dollars"


_NORM_PIECES = (
    list("你好世界天气很")
    + ["hello", "world", "iPhone", "apples", "3.14", "2024", "10:30", "1,000", "$5", "25%"]
    + ["12.5kg", "3/4", "-7", "No.1", "€", "°C", "&", "@"]
    + list("。！？；.!?;，,、：:")
    + [" "] * 6
    + ["\n", "“", "”", '"', "[uv_break]", "[laugh]", "[speed_5]"]
)


def _spaced_numbers(pieces: list[str]) -> str:
    """Join pieces, with a space after any piece that starts or ends with a digit (so numbers are not glued)."""
    return "".join(p + " " if p[0].isdigit() or p[-1].isdigit() else p for p in pieces)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from(_NORM_PIECES), max_size=30).map(_spaced_numbers),
    st.sampled_from([None, "zh", "en", "mixed"]),
)
def test_normalize_properties(text: str, lang: str | None) -> None:
    out = normalize(text, lang)
    assert TAG_RE.findall(out) == TAG_RE.findall(text)
    assert out.count("\n") == text.count("\n")
    assert not ASCII_DIGIT.search(TAG_RE.sub("", out)), (text, out)


def test_normalize_rejects_unknown_lang() -> None:
    with pytest.raises(InvalidInputError) as err:
        normalize("hi", "fr")
    assert err.value.field == "lang"


def test_normalize_thread_safe() -> None:
    texts = ["I have 3 apples and $5.50.", "2024年3月5日下午3点。", "Room 12 costs 40% less.", "温度25%，价格12.5元。"]
    texts = [f"{t} {i}" for i in range(6) for t in texts]

    def clear_memos() -> None:  # so both passes run the FSTs rather than read the memo
        for lang in ("zh", "en"):
            get_normalizer(lang)._memo.cache_clear()

    clear_memos()
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(normalize, texts))
    clear_memos()
    assert threaded == [normalize(t) for t in texts]
    assert not any(ASCII_DIGIT.search(t) for t in threaded)


# ---------------------------------------------------------------- language detection


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("你好世界，今天天气不错。", "zh"),
        ("Hello world, nice weather today.", "en"),
        ("我喜欢 machine learning 和 deep learning", "mixed"),
        ("I love 北京 very much", "mixed"),
        ("我买了一个新的iPhone手机", "zh"),  # one loan word does not make it mixed
        ("This is a long English sentence about 东", "en"),
        ("[uv_break][laugh]你好", "zh"),  # the letters inside tags do not count
        ("[uv_break] hello [laugh]", "en"),
        ("12345", "en"),
        ("", "en"),
    ],
)
def test_detect_language(text: str, lang: str) -> None:
    assert detect_language(text) == lang


# ---------------------------------------------------------------- length and sentences


def test_text_length_units() -> None:
    assert text_length("你好world 12.5[uv_break]") == 4
    assert text_length("It's 10:30, isn't it?") == 4
    assert text_length("[laugh][speed_5]，。") == 0


def test_split_sentences() -> None:
    text = "今天天气很好。我们走吧！好吗？Pi is 3.14. Really?\n新的一段[uv_break]"
    assert split_sentences(text) == [
        "今天天气很好。",
        "我们走吧！",
        "好吗？",
        "Pi is 3.14.",
        "Really?",
        "新的一段[uv_break]",
    ]
    assert split_sentences("。。。你好。[uv_break]") == ["。。。你好。[uv_break]"]
    assert split_sentences("Dr. Smith met Mr. Wu, e.g. at 3 p.m. Then left.") == [
        "Dr. Smith met Mr. Wu, e.g. at 3 p.m.",
        "Then left.",
    ]


# ---------------------------------------------------------------- splitting


def test_split_text_threshold_keeps_short_text_whole() -> None:
    text = "短句。另一句。" * 3
    assert split_text(text, length_threshold=text_length(text)) == [text]
    assert len(split_text(text, length_threshold=text_length(text) - 1, window_size=5)) > 1
    assert split_text("  ") == []


def test_split_text_cuts_at_sentence_ends_and_packs() -> None:
    text = "今天天气很好。我们去公园散步吧！你觉得怎么样？" * 3
    segments = split_text(text, length_threshold=10, window_size=20)
    assert segments == ["今天天气很好。我们去公园散步吧！你觉得怎么样？"] * 3


def test_split_text_long_sentence_cut_at_clauses_then_words() -> None:
    text = "这是一个非常长的句子，中间只有逗号，没有句号，" + "很长" * 20 + "。Short one."
    segments = split_text(text, length_threshold=10, window_size=16)
    assert segments[0] == "这是一个非常长的句子，中间只有逗号，"
    assert all(text_length(s) <= 16 for s in segments)
    assert segments[-1] == "Short one."
    assert "".join(segments).replace(" ", "") == text.replace(" ", "")


def test_split_text_custom_length_fn_and_validation() -> None:
    text = "one two three. four five six. seven eight nine."
    assert split_text(text, length_threshold=10, window_size=30, length_fn=len) == [
        "one two three. four five six.",
        "seven eight nine.",
    ]
    with pytest.raises(InvalidInputError):
        split_text(text, window_size=0)
    with pytest.raises(InvalidInputError):
        split_text(text, length_threshold=-1)


_PIECES = (
    list("你好世界天气很")
    + ["hello", "world", "iPhone", "3.14", "2024", "10:30", "1,000"]
    + list("。！？；.!?;，,、：:…")
    + [" ", "  ", "\n", "\n\n", "《", "》", "“", "”", '"', "("]
    + ["[uv_break]", "[laugh]", "[speed_5]", "[break_3]"]
)


def _assert_in_order_modulo_cut_whitespace(text: str, segments: list[str]) -> None:
    pos = 0
    for seg in segments:
        found = text.find(seg, pos)
        assert found >= 0, (text, segments)
        assert text[pos:found].strip() == "", (text, segments)  # only whitespace between segments
        pos = found + len(seg)
    assert text[pos:].strip() == ""


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(_PIECES), max_size=120).map("".join),
    st.integers(0, 40),
    st.integers(1, 25),
)
def test_split_text_invariants(text: str, threshold: int, window: int) -> None:
    segments = split_text(text, length_threshold=threshold, window_size=window)
    _assert_in_order_modulo_cut_whitespace(text, segments)
    assert re.sub(r"\s", "", "".join(segments)) == re.sub(r"\s", "", text)
    assert [t for s in segments for t in TAG_RE.findall(s)] == TAG_RE.findall(text)  # tags never cut
    assert all(s == s.strip() and s for s in segments)
    if not text.strip():
        assert segments == []
    elif text_length(text) <= threshold:
        assert segments == [text.strip()]
    else:
        assert all(text_length(s) <= window for s in segments)
        if text_length(text) > 0:
            assert all(text_length(s) > 0 for s in segments)  # punctuation/tag-only pieces were merged


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=80).map("".join), st.integers(1, 60))
def test_split_text_invariants_custom_length(text: str, window: int) -> None:
    segments = split_text(text, length_threshold=0, window_size=window, length_fn=len)
    _assert_in_order_modulo_cut_whitespace(text, segments)
    assert [t for s in segments for t in TAG_RE.findall(s)] == TAG_RE.findall(text)
    for seg in segments:  # over the window only when it cannot be cut: a single spoken unit with its marks
        assert len(seg) <= window or text_length(seg) <= 1, (seg, window)


# ---------------------------------------------------------------- clean-up


def test_clean_for_tts() -> None:
    assert clean_for_tts("《红楼梦》是「经典」\n第二行") == "红楼梦是经典，第二行"
    assert clean_for_tts("第一章\n\n正文开始。\n下一段") == "第一章，正文开始。下一段"
    assert clean_for_tts("Title\nBody text.\nMore") == "Title, Body text. More"
    assert clean_for_tts("他说——好吧……[uv_break]走吧") == "他说，好吧。[uv_break]走吧"
    assert clean_for_tts("Wait... what—no [laugh]") == "Wait... what, no [laugh]"
