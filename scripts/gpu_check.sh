#!/usr/bin/env bash
# The GPU machine's measurements, in one command (a few minutes on one GPU): setup, then `python -m bench --gpu-check`
# (bench --gpu-smoke, fcn.train on CUDA in bf16 and in fp32 with their test ROC-AUC difference, the paper-scale step),
# written into results/benchmarks.md. On a machine without a GPU: one line, exit 2, before the setup.
#   bash scripts/gpu_check.sh                   (FCN_TORCH_CUDA=cu126 for a driver older than CUDA 13 needs)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
  echo "scripts/gpu_check.sh needs an NVIDIA GPU: nvidia-smi lists none on $(hostname)" >&2
  exit 2
fi
bash scripts/setup.sh
exec .venv/bin/python -m bench --gpu-check
