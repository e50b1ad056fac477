#!/usr/bin/env bash
# Set up and run the whole test suite (real Slurm, MLflow, Ray and Chromium included).
#   bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then
  bash .ci/install_system.sh   # Slurm + munge + MariaDB, Chromium, jemalloc (Debian packages)
else
  echo "test: not root, so Debian packages are not installed; service tests skip where they are missing"
fi
bash scripts/setup.sh
export MLFLOW_DISABLE_TELEMETRY=true RAY_AUTH_MODE=disabled
# the rules before the tests (seconds): lint + format (pyproject [tool.ruff]) and the layers (pyproject
# [tool.importlinter]; tests/test_layers.py checks them too, and that the check catches a broken one)
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
.venv/bin/lint-imports --no-cache >/dev/null || .venv/bin/lint-imports --no-cache
# One process by default. FCN_TEST_WORKERS=2 runs two pytest-xdist workers (every Slurm test grouped on one of them,
# tests/conftest.py); that is faster but not yet reliable: one run lost the single-node cluster's lock to the other
# worker (7 setup errors), so CI stays serial until that is understood.
workers=()
[ "${FCN_TEST_WORKERS:-0}" -gt 0 ] && workers=(-n "$FCN_TEST_WORKERS" --dist loadgroup)
exec .venv/bin/python -m pytest "${workers[@]}" "$@"
