#!/usr/bin/env bash
# Set up the project: Python packages locked in uv.lock into .venv (and, as root, the Debian packages the tests use).
#   bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v uv >/dev/null 2>&1; then
  python3 -m pip install --quiet uv || python3 -m pip install --quiet --user uv
  export PATH="$HOME/.local/bin:$PATH"
fi
# --frozen: install exactly what uv.lock pins (reproducibility is this field's most reported problem).
# --compile-bytecode: uv, unlike pip, installs no .pyc files, and where PYTHONDONTWRITEBYTECODE is set (CI here) no
# process ever writes them: every Python process then compiled torch's and mlflow's sources again on import, ~8 s
# of CPU each against ~3 s from .pyc, in every cell, job, worker and test. Once here: ~40 s of CPU, and ~1 s when
# the .venv is already compiled.
uv sync --frozen --quiet --compile-bytecode
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
