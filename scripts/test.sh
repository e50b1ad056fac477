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
# Two workers (pytest-xdist): every Slurm test in one group (tests/conftest.py), the rest shared out by load.
exec .venv/bin/python -m pytest -n "${FCN_TEST_WORKERS:-2}" --dist loadgroup "$@"
