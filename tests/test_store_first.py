"""Stores before GPUs (fcn/run_store.py): a cell job on Slurm that finds no store of its real data stops at once with
one line naming the command that builds it (instead of decoding for hours on a GPU allocation while the other ranks
wait), unless told to build it there; that command builds exactly the store the cell looks for. The CPU job that
harness.grid submits first, and the cells' afterok on it: tests/test_multinode.py."""

from __future__ import annotations

import shlex

import pytest

from fcn.errors import UserError
from tests.conftest import TINY, run_py


@pytest.fixture
def real_layout(data_dir, tmp_path):
    """A config whose data root is the built-in MTAT set on disk (the real layout): its store does not exist yet."""
    from fcn.config import RunConfig
    from fcn.run_store import synth_root

    root = synth_root(RunConfig(dataset="mtat", data_dir=str(data_dir), **TINY))
    return RunConfig(
        **dict(TINY, epochs=1), dataset="mtat", data_root=str(root), data_dir=str(tmp_path / "d"), out_dir=str(tmp_path)
    )


def test_a_cell_job_without_its_store_names_the_command_and_that_command_builds_it(real_layout, monkeypatch):
    from fcn.run_store import build_command, check_buildable, is_current, may_build_here, store_path
    from fcn.train import train

    config = real_layout
    monkeypatch.setenv("SLURM_JOB_ID", "12")
    assert not may_build_here(config) and may_build_here(config.replace(build_store="here"))
    assert may_build_here(config, env={})  # outside Slurm: built on first use, as before
    assert may_build_here(config.replace(data_root=""))  # the built-in data: seconds, built anywhere
    with pytest.raises(UserError, match="does not exist and is not built in a Slurm job on real data") as e:
        train(config)
    line = str(e.value)
    assert "\n" not in line and build_command(config) in line and "--build-store here" in line
    assert not store_path(config).exists()  # nothing was built, no rank waited
    with pytest.raises(UserError, match="with --build-store never"):
        check_buildable(config.replace(build_store="never"), env={})

    args = shlex.split(build_command(config))
    assert args[:3] == ["python", "-m", "fcn.preprocess"]
    r = run_py(*args[1:], "--workers", "1", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert is_current(store_path(config))
    check_buildable(config)  # the store exists: the cell job goes on
