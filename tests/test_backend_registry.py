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


def test_backend_options_from_text() -> None:
    from fast_tts.engine.auto import parse_backend_options

    got = parse_backend_options(["dtype=bfloat16", "max_batch=4", "pack_weights=false", "kv_dtype=null",
                                 "gguf-type=q8_0", "quantize=int4"])
    assert got == {"dtype": "bfloat16", "max_batch": 4, "pack_weights": False, "kv_dtype": None,
                   "gguf_type": "q8_0", "quantize": "int4"}
    for bad in ("dtype", "=bfloat16"):
        with pytest.raises(InvalidInputError, match="is not KEY=VALUE") as err:
            parse_backend_options([bad])
        assert err.value.field == "backend_options"


def test_an_unknown_backend_option_is_named_with_the_choices() -> None:
    with pytest.raises(InvalidInputError, match="backend 'torch' has no option 'nonsense'") as err:
        create_backend("torch", None, dtype="bfloat16", nonsense=1)
    assert err.value.field == "backend_options" and "quantize" in str(err.value)


def test_backend_options_are_refused_where_there_is_no_language_model() -> None:
    from fast_tts.engine.auto import AutoEngine

    with pytest.raises(InvalidInputError, match="no language model") as err:
        AutoEngine(None, backend_options={"dtype": "bfloat16"})
    assert err.value.field == "backend_options"


@pytest.mark.parametrize(("option", "message"), [("dtype", "is not KEY=VALUE"),
                                                 ("dtype=bfloat16", "no language model")])
def test_cli_backend_option_mistakes_report_one_line(option: str, message: str, capsys) -> None:
    from fast_tts.cli import main

    assert main(["speak", "hello", "--backend-option", option, "-o", "-"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_serve_refuses_a_malformed_backend_option_before_starting(caplog) -> None:
    from fast_tts.cli import build_parser
    from fast_tts.server.cli import run_serve

    args = build_parser(with_serve_args=True).parse_args(["serve", "--backend-option", "quantize"])
    assert run_serve(args) == 2
    assert "is not KEY=VALUE" in caplog.text
