"""Language routing on text alone: script runs, where numbers and punctuation go, voice sets, the refusal message.

No model is loaded here; the engines that use this are tested in tests/test_zh_engine.py.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fast_tts.engine.routed import VoiceSet, check_readable, language_label, route_text
from fast_tts.errors import InvalidInputError
from fast_tts.text.runs import script_of, scripts_of_language, split_scripts

AUTO = VoiceSet((("en", "joe"), ("zh", "zf_xiaobei")))
ZH_ONLY = VoiceSet((("zh", "zf_xiaobei"),))
EN_ONLY = VoiceSet((("en", "joe"),))


def runs(text: str) -> list[tuple[str | None, str]]:
    return [(run.script, run.text) for run in split_scripts(text)]


def test_script_of_letters_and_non_letters() -> None:
    assert [script_of(c) for c in "你A가かカｶЖαअ"] == [
        "han", "latin", "hangul", "kana", "kana", "kana", "cyrillic", "greek", "devanagari"]
    assert [script_of(c) for c in "1１,，。%$ \n〇"] == [None] * 10
    assert script_of("Ａ") == "latin"  # full-width Latin is still Latin


def test_mixed_sentence_splits_by_script_and_keeps_every_character() -> None:
    assert runs("我用 iPhone 打电话。") == [("han", "我用 "), ("latin", "iPhone "), ("han", "打电话。")]
    assert runs("Hello，世界！") == [("latin", "Hello，"), ("han", "世界！")]


def test_a_number_goes_with_the_word_after_it_or_before_it_at_the_end() -> None:
    assert runs("我有3个苹果和5 apples.") == [("han", "我有3个苹果和"), ("latin", "5 apples.")]
    assert runs("I paid ¥100 for 3本书") == [("latin", "I paid ¥100 for "), ("han", "3本书")]
    assert runs("The price is 50元") == [("latin", "The price is "), ("han", "50元")]
    assert runs("我的号码是 42. OK") == [("han", "我的号码是 42. "), ("latin", "OK")]
    assert runs("今天是2024年3月5日，价格$5.50。") == [("han", "今天是2024年3月5日，价格$5.50。")]


def test_letterless_text_and_sentences() -> None:
    assert runs("") == []
    assert runs("123, 456!") == [(None, "123, 456!")]
    assert runs("你好。123。Hi.") == [("han", "你好。123。"), ("latin", "Hi.")]  # a digits-only sentence joins


def test_japanese_sentences_are_kana_throughout_and_tags_are_neutral() -> None:
    assert runs("東京へ行きます。北京很大。") == [("kana", "東京へ行きます。"), ("han", "北京很大。")]
    assert runs("[laugh] Hello") == [("latin", "[laugh] Hello")]
    assert runs("我[uv_break]想 you") == [("han", "我[uv_break]想 "), ("latin", "you")]
    assert runs("नमस्ते दुनिया") == [("devanagari", "नमस्ते दुनिया")]  # vowel signs stay with their letters


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("你好世界abcXYZ 123,.，。！?[]_ウкα")), max_size=40))
def test_runs_are_lossless_and_alternate(text: str) -> None:
    pieces = split_scripts(text)
    assert "".join(p.text for p in pieces) == text
    assert all(a.script != b.script for a, b in itertools.pairwise(pieces))
    assert all(p.text for p in pieces)


def test_languages_read_scripts() -> None:
    assert scripts_of_language("zh") == {"han"}
    assert scripts_of_language("en") == {"latin"} == scripts_of_language("de")
    assert "cyrillic" in scripts_of_language("ru") and "kana" in scripts_of_language("ja")
    assert scripts_of_language("zh_CN") == {"han"}
    assert language_label(["en", "zh"]) == "English and Chinese"


def test_the_default_set_routes_each_language_to_its_voice() -> None:
    routes = route_text("Hello there. 我有3个苹果，and 2 pears.", AUTO)
    assert [(r.language, r.voice, r.text) for r in routes] == [
        ("en", "joe", "Hello there. "), ("zh", "zf_xiaobei", "我有3个苹果，"), ("en", "joe", "and 2 pears.")]
    assert [(r.language, r.text) for r in route_text("123", AUTO)] == [("en", "123")]  # letterless: the first voice
    assert [(r.language, r.text) for r in route_text("123", ZH_ONLY)] == [("zh", "123")]


def test_a_single_voice_leaves_what_it_cannot_read_unrouted() -> None:
    routes = route_text("Hello 世界", EN_ONLY)
    assert [(r.language, r.script, r.text) for r in routes] == [("en", "latin", "Hello "), (None, "han", "世界")]
    routes = route_text("こんにちは、世界。Hi", AUTO)
    assert [(r.language, r.script) for r in routes] == [(None, "kana"), ("en", "latin")]


def test_check_readable_names_the_voice_the_text_and_a_remedy() -> None:
    check_readable("Hello, 42 apples.", "joe", ["en"])
    with pytest.raises(InvalidInputError) as err:
        check_readable("Hi. 你好，我们今天去公园散步，顺便买点水果。", "joe", ["en"])
    assert err.value.field == "input"
    message = str(err.value)
    assert message.startswith(
        "voice 'joe' speaks English and cannot read the Chinese text '你好，我们今天去公园散步，顺便买点水果。'")
    assert "fast-tts[zh]" in message or "voice 'auto'" in message
    with pytest.raises(InvalidInputError, match="cannot read the Cyrillic text 'Привет'"):
        check_readable("Привет", "joe", ["en"])
    with pytest.raises(InvalidInputError, match="the Chinese text '一二三四五六七八九十一二三四五六七八九十一二三四…'"):
        check_readable("一二三四五六七八九十" * 3, "joe", ["en"])
