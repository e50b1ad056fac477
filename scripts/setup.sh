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
uv sync --frozen --quiet
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
