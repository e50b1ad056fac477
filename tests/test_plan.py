"""`python -m harness.grid --cluster slurm --paper --plan`: per cell, before anything is submitted and with no cluster,
the store, memory per node, global and per-process batch, epoch time (measured or "not measured on this GPU"), time
limit and requeues; what cannot work is refused in one line with a non-zero exit."""

from __future__ import annotations

import pytest

from fcn.errors import UserError
from tests.conftest import run_py

PAPER = ["--cluster", "slurm", "--paper", "--data-root-mtat", "/none/mtat", "--data-root-msd", "/none/msd"]


def _plan(capsys, monkeypatch, tmp_path, *flags) -> str:
    from harness import grid

    monkeypatch.setenv("PATH", str(tmp_path))  # no sinfo, no sbatch: the plan must not need a cluster
    monkeypatch.chdir(tmp_path)
    assert grid.main([*PAPER, "--plan", *flags]) == 0
    out = capsys.readouterr().out
    assert "nothing submitted" in out and not list(tmp_path.glob("runs*"))  # wrote nothing, not even a store
    return out


def test_the_paper_grid_planned_on_4_gpus(capsys, monkeypatch, tmp_path):
    out = _plan(capsys, monkeypatch, tmp_path, "--gpus-per-node", "4", "--mem-gb", "128")
    blocks = out.split("\n")[1:]
    keys = [ln for ln in blocks if ln and not ln.startswith(" ")]
    assert len(keys) == 10 and "msd-mel-fcn7-s0" in keys and "mtat-mfcc-fcn4-s0" in keys
    msd = out[out.index("msd-mel-fcn7-s0") :]
    assert "201,680 train + 12,634 valid + 28,540 test clips" in msd
    assert "63.7 GB of mel features per node (held: mapped once per node" in msd  # 242,854 × 96 × 1366 × 2 bytes
    assert "global batch 16 = 4 × 4 clips per step" in msd and "missing, ≈" in msd
    assert out.count("not measured on this GPU") == 10 and out.count("limit 240 min per job") == 10


def test_memory_over_the_jobs_budget_is_streamed_and_a_throughput_gives_times(capsys, monkeypatch, tmp_path):
    flags = ("--gpus-per-node", "2", "--mem-gb", "64", "--time-min", "600", "--clips-per-s", "2600")
    out = _plan(capsys, monkeypatch, tmp_path, *flags)
    msd = out[out.index("msd-mel-fcn4-s0") :]
    assert "streamed from the store (over the 50% of --mem-gb 64" in msd.split("\n")[3]
    assert "global batch 16 = 2 × 8" in msd and "not measured" not in out
    assert "0 requeue(s) at the limit" in msd and "clips/s for this cell on 2 GPU(s)" in msd


def test_what_cannot_work_is_refused(capsys, monkeypatch, tmp_path):
    from harness import grid

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="under one clip per process"):
        grid.main([*PAPER, "--plan", "--gpus-per-node", "32"])
    with pytest.raises(UserError, match="more than submitit's 3: use --time-min"):
        grid.main([*PAPER, "--plan", "--gpus-per-node", "1", "--clips-per-s", "50", "--time-min", "60"])
    with pytest.raises(UserError, match="plans Slurm jobs"):
        grid.main(["--plan"])
    assert capsys.readouterr().out == ""  # a refusal prints no half plan


def test_the_refusal_is_one_line_and_exit_2_and_submission_is_refused_too(tmp_path):
    r = run_py("-m", "harness.grid", *PAPER, "--plan", "--gpus-per-node", "32", cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "a global batch of 16 clips over 32 processes is under one clip per process" in r.stderr
    # without --plan the Slurm back end refuses the same before sinfo or sbatch is asked
    r = run_py("-m", "harness.grid", *PAPER, "--gpus-per-node", "32", "--out-dir", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode == 2 and "under one clip per process" in r.stderr, r.stderr
