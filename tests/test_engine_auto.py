"""AutoEngine family detection and Piper voice discovery/naming (a folder of voices, one file, multi-speaker)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fast_tts.engine.auto import ENGINES, AutoEngine, bundled_languages, detect_family
from fast_tts.engine.piper import AsyncPiperEngine, PiperVoice
from fast_tts.errors import ModelLoadError, UnknownVoiceError
from fast_tts.models.piper import bundled_voice_paths, voice_files


def _voice(folder: Path, stem: str, **config_changes: object) -> Path:
    """A Piper voice in `folder`: the bundled ONNX (symlinked) with an edited copy of its config."""
    model, config = bundled_voice_paths()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{stem}.onnx"
    target.symlink_to(model)
    data = json.loads(config.read_text(encoding="utf-8"))
    data.update(config_changes)
    Path(f"{target}.json").write_text(json.dumps(data), encoding="utf-8")
    return target


def test_detect_family_from_layout(tmp_path: Path) -> None:
    assert detect_family(None) == "piper"
    assert detect_family(_voice(tmp_path / "p", "one")) == "piper"
    assert detect_family(tmp_path / "p") == "piper"
    (tmp_path / "c" / "asset" / "gpt").mkdir(parents=True)
    (tmp_path / "c" / "asset" / "gpt" / "config.json").write_text("{}")
    assert detect_family(tmp_path / "c") == "chattts"
    for part in ("diffusion_transformer", "wavvae", "g2p", "aligner_lm", "duration_lm"):
        (tmp_path / "m" / part).mkdir(parents=True)
    assert detect_family(tmp_path / "m") == "megatts3"
    assert set(ENGINES) >= {"piper", "chattts", "megatts3"}


def test_unknown_layouts_say_what_was_looked_for(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="looked for a Piper voice"):
        detect_family(tmp_path / "empty")
    with pytest.raises(ModelLoadError, match="does not exist"):
        AutoEngine(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ModelLoadError, match="Piper .onnx"):
        AutoEngine(tmp_path / "notes.txt")
    lonely = tmp_path / "lonely" / "x.onnx"
    lonely.parent.mkdir()
    lonely.write_bytes(b"")
    with pytest.raises(ModelLoadError):
        AutoEngine(lonely)  # no .onnx.json beside it


def test_voice_files_read_what_the_configs_say_without_loading_a_model(tmp_path: Path) -> None:
    _voice(tmp_path / "v", "b-voice", dataset="bee", speaker_id_map={"ann": 0, "bob": 1})
    _voice(tmp_path / "v", "a-voice", language={"family": "de"})
    files = voice_files(tmp_path / "v")
    assert [f.key for f in files] == ["a-voice", "b-voice"]
    assert (files[0].language, files[1].alias, files[1].speakers) == ("de", "bee", {"ann": 0, "bob": 1})
    assert files[0].sample_rate == 22050 and files[0].config == Path(f"{files[0].model}.json")
    (tmp_path / "v" / "a-voice.onnx.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ModelLoadError, match="not a Piper voice config"):
        voice_files(tmp_path / "v")


async def test_auto_engine_default_is_the_bundled_voice() -> None:
    engine = AutoEngine()
    if "zh" in bundled_languages():  # the default voice set routes by language (tests/test_routing.py)
        assert engine.family == "piper+kokoro" and engine.default_voice == "auto"
        assert engine.voice_routes("auto") == (("en", "joe"), ("zh", "zf_xiaobei"))
    else:
        assert isinstance(engine, AsyncPiperEngine)
        assert engine.family == "piper" and engine.default_voice == "joe"
    assert not engine.can_clone and engine.sample_rate == 22050
    await engine.shutdown()


async def test_folder_of_voices_names_and_loading(tmp_path: Path) -> None:
    _voice(tmp_path, "a-first-medium", dataset="joe")
    _voice(tmp_path, "b-second-medium", dataset="joe")  # the alias "joe" is now ambiguous: not offered
    _voice(tmp_path, "c-third-low", dataset="kim")
    engine = AutoEngine(tmp_path)
    assert isinstance(engine, AsyncPiperEngine)
    assert engine.list_speakers() == ["a-first-medium", "b-second-medium", "c-third-low", "kim"]
    assert engine.default_voice == "a-first-medium"
    first = await engine.speak_async("Two voices, one engine.", deterministic=True)
    other = await engine.speak_async("Two voices, one engine.", "kim", deterministic=True)
    assert np.array_equal(first, other)  # same ONNX underneath, loaded as a second runner
    with pytest.raises(UnknownVoiceError):
        await engine.speak_async("Hello.", "joe")
    await engine.shutdown()


async def test_multi_speaker_names(tmp_path: Path) -> None:
    _voice(tmp_path, "en_US-alpha-medium", dataset="solo")  # sorts first: the default, loaded at construction
    _voice(tmp_path, "en_US-duo-medium", dataset="duo", num_speakers=2, speaker_id_map={"ann": 0, "ben": 1})
    engine = AsyncPiperEngine(tmp_path)
    names = engine.list_speakers()
    for name in ("en_US-duo-medium:ann", "en_US-duo-medium:ben", "ann", "ben", "duo", "solo"):
        assert name in names
    assert (await engine._voice("ben")).data == PiperVoice("en_US-duo-medium", 1)
    assert (await engine._voice("duo")).data == PiperVoice("en_US-duo-medium", None)
    await engine.shutdown()


async def test_a_failing_request_does_not_harm_the_engine(tmp_path: Path) -> None:
    _voice(tmp_path, "a-good-medium", dataset="good")
    bad = _voice(tmp_path, "b-broken-medium", dataset="broken")
    bad.unlink()
    bad.write_bytes(b"this is not an onnx model")  # only discovered when the worker loads it
    engine = AsyncPiperEngine(tmp_path)
    reference = await engine.speak_async("Still here.", deterministic=True)
    with pytest.raises(ModelLoadError, match="b-broken-medium"):
        await engine.speak_async("Hello.", "broken")
    assert engine.stats()["failed"] == 1 and engine.stats()["active"] == 0
    assert np.array_equal(await engine.speak_async("Still here.", deterministic=True), reference)
    await engine.shutdown()
