#!/usr/bin/env bash
# MLX side environment for tests/test_backend_mlx_lm.py: $FAST_TTS_CI_ENVS/mlx-lm with MLX's Linux CPU build
# (`mlx[cpu]`: plain `mlx` has no Linux CPU library), mlx-lm and fast-tts's dependencies, but not fast-tts itself (the
# tests run the checkout's code there through PYTHONPATH, so a reused environment never runs stale code).
# Idempotent: a stamp named after this script's and the extras' hash says the environment is complete.
set -euo pipefail
cd "$(dirname "$0")/../.."
start=$SECONDS
env_dir="${FAST_TTS_CI_ENVS:-$HOME/.cache/fast-tts/ci-envs}/mlx-lm"
stamp="$env_dir/.ready-$( (cat "$0"; sed -n '/^\[project.optional-dependencies\]/,$p' pyproject.toml) | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
    echo "mlx-lm env: ready at $env_dir ($((SECONDS - start)) s)"
    exit 0
fi
rm -rf "$env_dir"
python3 -m venv "$env_dir"
pip="$env_dir/bin/pip"
"$pip" install -q torch==2.13.0 </dev/null  # first, so nothing can pull a CUDA torch
"$pip" install -q ".[torch,mlx]" pytest pytest-asyncio pytest-timeout </dev/null
"$pip" uninstall -q -y fast-tts
"$env_dir/bin/python" -c "import mlx.core, mlx_lm, torch; assert torch.__version__ == '2.13.0+cpu', torch.__version__"
touch "$stamp"
echo "mlx-lm env: built at $env_dir ($((SECONDS - start)) s)"
