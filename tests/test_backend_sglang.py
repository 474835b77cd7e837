"""The SGLang adapter without the engine (SGLang needs CUDA; it has never run on the build machines): how options and
SamplingParams map onto SGLang's, what it refuses, and the errors a user gets."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from fast_tts.backends.sglang_backend import check_sampling, check_source, engine_args, sglang_sampling
from fast_tts.errors import InvalidInputError, MissingDependencyError, ModelLoadError, UnsupportedOperationError
from fast_tts.models.lm import LMSource
from fast_tts.sampling import SamplingParams


def test_engine_arguments() -> None:
    args = engine_args(Path("/m/g2p"), max_batch=8, max_seq=4096, dtype="bfloat16", device="cuda",
                       mem_fraction_static=0.6, seed=3)
    assert args == {"model_path": "/m/g2p", "skip_tokenizer_init": True, "dtype": "bfloat16", "device": "cuda",
                    "max_running_requests": 8, "context_length": 4096, "random_seed": 3, "log_level": "error",
                    "mem_fraction_static": 0.6}
    assert engine_args(Path("/m"), dtype="auto", device="auto")["dtype"] == "auto"
    with pytest.raises(InvalidInputError, match="cuda"):
        engine_args(Path("/m"), device="cpu")
    with pytest.raises(InvalidInputError, match="dtype"):
        engine_args(Path("/m"), dtype="int4")
    with pytest.raises(InvalidInputError, match="mem_fraction_static"):
        engine_args(Path("/m"), mem_fraction_static=1.5)


def test_sampling_parameters() -> None:
    params = SamplingParams(temperature=0.9, top_k=50, top_p=0.95, repetition_penalty=1.1, seed=7,
                            max_new_tokens=300, stop_token_ids=[5])
    check_sampling(params)
    assert sglang_sampling(params, 200) == {
        "max_new_tokens": 200, "temperature": 0.9, "top_p": 0.95, "top_k": 50, "min_p": 0.0,
        "repetition_penalty": 1.1, "ignore_eos": True, "sampling_seed": 7}
    greedy = sglang_sampling(SamplingParams(temperature=0.0), 10)
    assert greedy["temperature"] == 0.0 and greedy["top_k"] == -1 and "sampling_seed" not in greedy


class _Noise:
    """A noise source (replayed random draws): something an engine that samples by itself cannot take."""

    def noise(self, step: int):
        raise AssertionError("never drawn")


@pytest.mark.parametrize("params, field", [
    (SamplingParams(return_hidden=True), "return_hidden"),
    (SamplingParams(seed=1, noise=_Noise()), "noise"),
    (SamplingParams(repetition_window=16), "repetition_window"),
    (SamplingParams(min_new_tokens=3, stop_token_ids=[1]), "min_new_tokens"),
    (SamplingParams(top_k=20, min_tokens_to_keep=3), "min_tokens_to_keep"),
])
def test_refused_sampling_fields(params: SamplingParams, field: str) -> None:
    with pytest.raises(UnsupportedOperationError, match=field):
        check_sampling(params)


def test_models_it_cannot_carry() -> None:
    with pytest.raises(ModelLoadError, match="no checkpoint folder"):
        check_source(None)
    with pytest.raises(UnsupportedOperationError, match="heads are not in the checkpoint"):
        check_source(LMSource(Path("/chattts/asset/gpt"), stock_head=False))
    assert check_source(LMSource(Path("/m/g2p"), stock_head=True)) == Path("/m/g2p")


@pytest.mark.skipif(importlib.util.find_spec("sglang") is not None, reason="sglang is installed")
def test_missing_package_names_the_extra() -> None:
    from fast_tts.backends import create_backend

    with pytest.raises(MissingDependencyError, match=r"pip install 'fast-tts\[sglang\]'"):
        create_backend("sglang", None)
