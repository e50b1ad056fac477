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
# FCN_TORCH_CUDA=cu126 (or cu128, cpu, ...): the same torch/torchaudio versions from PyTorch's own index, built for
# that CUDA, for GPU nodes whose driver is older than PyPI's CUDA 13 build needs (fcn.train then stops with one line
# naming both versions). Read on every run of this script, since `uv sync` above puts uv.lock's build back.
if [ -n "${FCN_TORCH_CUDA:-}" ]; then
  if ! [[ "$FCN_TORCH_CUDA" =~ ^(cu[0-9]{3}|cpu)$ ]]; then
    echo "setup: FCN_TORCH_CUDA=$FCN_TORCH_CUDA is not a PyTorch build name such as cu126, cu128 or cpu" >&2
    exit 2
  fi
  torch_pins=$(.venv/bin/python -c 'import importlib.metadata as m; print(" ".join(p + "==" + m.version(p).split("+")[0] for p in ("torch", "torchaudio")))')
  # shellcheck disable=SC2086  # two pins, split on purpose
  uv pip install --quiet --python .venv/bin/python --index "https://download.pytorch.org/whl/$FCN_TORCH_CUDA" \
    --reinstall-package torch --reinstall-package torchaudio --compile-bytecode $torch_pins
fi
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
