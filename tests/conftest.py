"""Shared fixtures: tiny synthetic data sets built once per session, run configs that train in seconds.

Real services (Slurm, MLflow server) come from the plugins in tests/services/.
"""

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytest_plugins = ["tests.services.slurm", "tests.services.slurm_multi", "tests.services.mlflow_server"]

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# A local Ray's raylet may take more than Ray's default minute to register on a 2-core machine under load.
os.environ.setdefault("RAY_raylet_start_wait_time_s", "180")
REPO = Path(__file__).resolve().parents[1]


@pytest.hookimpl(wrapper=True)
def pytest_report_header(config):
    """pytest-timeout heads the output with its three settings; the per-test limit is the one worth a line (its
    `timeout func_only: False` line read like stray output in CI's log)."""
    results = yield  # one entry per plugin: a string or a list of strings, each possibly of several lines
    out = []
    for entry in results:
        lines = [ln for e in ([entry] if isinstance(entry, str) else entry) for ln in e.splitlines()]
        out.append([ln for ln in lines if not ln.startswith(("timeout method: ", "timeout func_only: "))])
    return out


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which turns the group marks into node ids
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (scripts/test.sh runs two workers), every test that uses a Slurm cluster runs on one worker:
    the clusters are machine-wide (a lock, /etc/slurm) and each worker would otherwise start its own and wait for the
    other's. The Slurm tests mostly wait on the scheduler, so the other worker's CPU-bound tests fill that time."""
    for item in items:
        if any(name.startswith("slurm_") for name in getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group("slurm"))  # one group: some tests use both clusters


@pytest.fixture(autouse=True)
def _burst_runs_alone(request):
    """A `burst` test (30 jobs started at once on 2 cores) holds a machine-wide lock exclusively; every other test
    holds it shared. So under two xdist workers the burst never overlaps a test that needs the CPU in time (a Ray
    head's start-up, a job that must still be running when it is requeued), and the other worker waits meanwhile."""
    import fcntl

    with open(Path(tempfile.gettempdir()) / "fcn-sweep-tests-burst.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX if request.node.get_closest_marker("burst") else fcntl.LOCK_SH)
        yield


# Small enough that one training run takes seconds on one core, big enough that AUC shows learning.
TINY = dict(synth_clips=320, clip_seconds=2.0, width=0.125, batch_size=16, epochs=3, patience=3, threads=1)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """Built-in synthetic MTAT and MSD sets and their stores, made once for the whole session."""
    from fcn.config import RunConfig
    from fcn.preprocess import ensure_feature_store

    d = tmp_path_factory.mktemp("data")
    for ds in ("mtat", "msd"):
        ensure_feature_store(RunConfig(dataset=ds, data_dir=str(d), **TINY), workers=1, progress=False)
    return d


@pytest.fixture
def tiny(data_dir, tmp_path):
    """A factory of tiny run configs writing into this test's own out_dir (and SQLite MLflow store)."""
    from fcn.config import RunConfig

    def make(**kw):
        values = dict(TINY, data_dir=str(data_dir), out_dir=str(tmp_path / "runs"))
        values.update(kw)
        return RunConfig(**values)

    return make


def config_flags(config) -> list[str]:
    """The command-line flags that reproduce `config` (for subprocess tests of the CLIs)."""
    flags = []
    for k, v in config.to_dict().items():
        if v != "" and k != "parent_run_id":
            flags += ["--" + k.replace("_", "-"), str(v).lower() if isinstance(v, bool) else str(v)]
    return flags


def run_py(*args, env=None, timeout=600, check=False, cwd=REPO):
    e = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=e, check=check, cwd=cwd
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
