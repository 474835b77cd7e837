#!/usr/bin/env bash
# llama.cpp side environment for tests/test_backend_llama_cpp.py: $FAST_TTS_CI_ENVS/llama-cpp with llama-cpp-python,
# gguf and fast-tts's dependencies, but not fast-tts itself (the tests run the checkout's code there through
# PYTHONPATH, so a reused environment never runs stale code).
# PyPI has only llama-cpp-python's sdist: it compiles llama.cpp (cmake + a C++ compiler, about 6 minutes on 2 cores).
# The wheel is built once, portable (-DGGML_NATIVE=OFF: no -march=native, so a cached wheel runs on any x86-64 with
# AVX2) and without OpenMP (-DGGML_OPENMP=OFF: ggml's own thread pool; see the README's llama.cpp notes), and kept in
# $FAST_TTS_CI_ENVS/wheels/llama-cpp-no-openmp; a changed pyproject only reinstalls from it.
# Idempotent: a stamp named after this script's and the extras' hash says the environment is complete.
set -euo pipefail
cd "$(dirname "$0")/../.."
start=$SECONDS
LLAMA_CPP_VERSION=0.3.36
envs="${FAST_TTS_CI_ENVS:-$HOME/.cache/fast-tts/ci-envs}"
env_dir="$envs/llama-cpp"
wheels="$envs/wheels/llama-cpp-no-openmp"
stamp="$env_dir/.ready-$( (cat "$0"; sed -n '/^\[project.optional-dependencies\]/,$p' pyproject.toml) | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
    echo "llama-cpp env: ready at $env_dir ($((SECONDS - start)) s)"
    exit 0
fi
if ! ls "$wheels"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl >/dev/null 2>&1; then
    if ! command -v cmake >/dev/null || ! command -v g++ >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake g++ ninja-build </dev/null
    fi
    builder="$envs/.wheel-builder"
    rm -rf "$builder"
    python3 -m venv "$builder"
    mkdir -p "$wheels"
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_OPENMP=OFF" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
        "$builder/bin/pip" wheel -q --no-deps --no-cache-dir -w "$wheels" "llama-cpp-python==$LLAMA_CPP_VERSION" </dev/null
    rm -rf "$builder"
fi
rm -rf "$env_dir"
python3 -m venv "$env_dir"
pip="$env_dir/bin/pip"
"$pip" install -q torch==2.13.0 </dev/null  # first, so nothing can pull a CUDA torch
"$pip" install -q --find-links "$wheels" "llama-cpp-python==$LLAMA_CPP_VERSION" </dev/null
"$pip" install -q --find-links "$wheels" ".[torch,llama-cpp]" pytest pytest-asyncio pytest-timeout </dev/null
"$pip" uninstall -q -y fast-tts
"$env_dir/bin/python" -c "import llama_cpp, gguf, torch; assert torch.__version__ == '2.13.0+cpu', torch.__version__
assert b'OPENMP = 1' not in llama_cpp.llama_print_system_info(), 'llama.cpp was built with OpenMP'"
touch "$stamp"
echo "llama-cpp env: built at $env_dir ($((SECONDS - start)) s)"
