"""The backend registry (names, missing packages, unknown names) and `backend=` through AutoEngine and the CLI."""

from __future__ import annotations

import importlib.util

import pytest

from fast_tts.backends import BACKENDS, REGISTRY, backend_name, create_backend
from fast_tts.errors import InvalidInputError, MissingDependencyError


def test_names_and_aliases() -> None:
    assert BACKENDS[0] == "torch" and {"llama-cpp", "mlx-lm", "sglang"} <= set(BACKENDS)
    assert backend_name("LLAMA_CPP") == "llama-cpp" and backend_name("mlx_lm") == "mlx-lm"
    with pytest.raises(InvalidInputError) as err:
        create_backend("nope", None)
    assert err.value.field == "backend"
    assert all(name in str(err.value) for name in BACKENDS)


@pytest.mark.parametrize("name", [n for n in BACKENDS if n != "torch"])
def test_a_missing_engine_names_the_pip_command(name: str) -> None:
    spec = REGISTRY[name]
    if all(importlib.util.find_spec(m) is not None for m in spec.modules):
        pytest.skip(f"{name} is installed here; its own test module covers it")
    with pytest.raises(MissingDependencyError) as err:
        create_backend(name, None)
    assert spec.install in str(err.value) and spec.install.startswith("pip install 'fast-tts[")


def test_auto_engine_checks_the_backend_before_loading() -> None:
    from fast_tts.engine.auto import AutoEngine

    with pytest.raises(InvalidInputError, match="choose one of"):
        AutoEngine(None, backend="tensorrt")
    with pytest.raises(InvalidInputError, match="no language model"):
        AutoEngine(None, backend="llama-cpp")  # the bundled Piper voice


def test_cli_backend_flag_reports_one_line(capsys) -> None:
    from fast_tts.cli import main

    assert main(["speak", "hello", "--backend", "tensorrt", "-o", "-"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown backend 'tensorrt'" in err[0] and "llama-cpp" in err[0]


def test_serve_accepts_a_backend_flag() -> None:
    from fast_tts.cli import build_parser

    args = build_parser(with_serve_args=True).parse_args(["serve", "--backend", "llama-cpp"])
    assert args.backend == "llama-cpp"
