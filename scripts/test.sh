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
# One process by default, on purpose. FCN_TEST_WORKERS=2 runs two pytest-xdist workers, every Slurm test grouped on one
# of them (tests/conftest.py), so the Slurm group stays serial: in a full serial run on the shared 2-core machine
# (2026-12-06, load 13-26) the Slurm tests took >= 1190 of its 2032 s (the burst 307, the two-node Ray 203, the
# single-node requeue grid 157, the node crash 137, ...), so two workers cannot end before that group does, and most of
# it is CPU-bound training that the other worker's CPU-bound tests would only slow down (and with them every wait).
# The "7 setup errors" of the one parallel run: no test reaches a cluster but through a slurm_* fixture, and those are
# all on one worker, so it was the machine-wide lock's wait (FCN_SLURM_LOCK_TIMEOUT, 600 s by default) running out
# while another session (on this shared machine) held the cluster, not the two workers racing each other.
workers=()
[ "${FCN_TEST_WORKERS:-0}" -gt 0 ] && workers=(-n "$FCN_TEST_WORKERS" --dist loadgroup)
exec .venv/bin/python -m pytest "${workers[@]}" "$@"
