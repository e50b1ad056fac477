"""The `slurm_cluster` fixture itself: a real single-node Slurm 22.05 cluster with accounting and two fake GPUs."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.services.slurm import patience

pytestmark = pytest.mark.slow  # starts daemons (~5 s once per session)


def _wait_for(cond, timeout: float, what: str, poll: float = 0.2):
    """Poll cond until it returns something true, and return that; `timeout` is for an idle machine (patience())."""
    timeout = patience(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_trivial_job_runs_venv_python_and_sacct_reports_it(slurm_cluster, tmp_path):
    out = tmp_path / "out.txt"
    jobid = slurm_cluster.sbatch("-o", str(out), "--wrap", f"{sys.executable} -c 'import sys; print(sys.executable)'")
    assert slurm_cluster.wait_job(jobid, timeout=60) == "COMPLETED"
    assert out.read_text().strip() == sys.executable
    assert slurm_cluster.wait_sacct(jobid, timeout=30) == "COMPLETED"
    rows = slurm_cluster.run("sacct", "-n", "-P", "-j", str(jobid), "-o", "JobID,State,ExitCode").stdout.split()
    assert f"{jobid}|COMPLETED|0:0" in rows


def test_two_tasks_get_ranks_0_and_1(slurm_cluster, tmp_path):
    out = tmp_path / "out.txt"
    code = "import os; print(os.environ['SLURM_PROCID'], os.environ['SLURM_LOCALID'], os.environ['SLURM_NTASKS'])"
    jobid = slurm_cluster.sbatch(
        "--ntasks=2", "--nodes=1", "-o", str(out), "--wrap", f'srun {sys.executable} -c "{code}"'
    )
    assert slurm_cluster.wait_job(jobid, timeout=60) == "COMPLETED", out.read_text()
    assert sorted(out.read_text().split("\n")[:2]) == ["0 0 2", "1 1 2"]


def test_two_fake_gpus_are_allocated_and_three_are_rejected(slurm_cluster, tmp_path):
    assert slurm_cluster.gpus_per_node == 2
    out = tmp_path / "out.txt"
    jobid = slurm_cluster.sbatch(
        "--gpus-per-node=2",
        "-o",
        str(out),
        "--wrap",
        "echo CVD=$CUDA_VISIBLE_DEVICES; srun --ntasks=1 printenv CUDA_VISIBLE_DEVICES",
    )
    assert slurm_cluster.wait_job(jobid, timeout=60) == "COMPLETED", out.read_text()
    assert out.read_text().split() == ["CVD=0,1", "0,1"]
    with pytest.raises(subprocess.CalledProcessError) as err:
        slurm_cluster.sbatch("--gpus-per-node=3", "--wrap", "true")
    assert "Requested node configuration is not available" in err.value.stderr


def test_requeue_restarts_a_running_job(slurm_cluster, tmp_path):
    marker = tmp_path / "starts.txt"
    script = tmp_path / "job.sh"
    # First start: record it and sleep until requeued. Second start: record it and finish.
    script.write_text(f"""#!/bin/bash
echo "start restart_count=${{SLURM_RESTART_COUNT:-0}}" >> {marker}
if [ "$(wc -l < {marker})" -lt 2 ]; then sleep 300; fi
""")
    jobid = slurm_cluster.sbatch("-o", str(tmp_path / "out.txt"), str(script))
    _wait_for(lambda: marker.exists() and slurm_cluster.job_state(jobid) == "RUNNING", 60, "first start")
    slurm_cluster.requeue(jobid)
    assert slurm_cluster.wait_job(jobid, timeout=120) == "COMPLETED"
    assert marker.read_text().splitlines() == ["start restart_count=0", "start restart_count=1"]
    assert "Restarts=1" in slurm_cluster.run("scontrol", "show", "job", str(jobid)).stdout


def _rank_info():
    import os
    import sys

    import submitit

    env = submitit.JobEnvironment()
    return env.global_rank, env.local_rank, env.num_tasks, os.environ["SLURM_JOB_ID"], sys.executable


def test_submitit_runs_a_two_task_job(slurm_cluster, tmp_path):
    import cloudpickle
    import submitit

    # pickle _rank_info by value, so the job need not import this test module
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
        executor.update_parameters(slurm_partition=slurm_cluster.partition, tasks_per_node=2, nodes=1, timeout_min=2)
        job = executor.submit(_rank_info)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    results = job.results()
    assert [r[:3] for r in results] == [(0, 0, 2), (1, 1, 2)]
    assert {r[3] for r in results} == {str(job.job_id)}
    assert {r[4] for r in results} == {sys.executable}
    assert slurm_cluster.wait_sacct(job.job_id, timeout=30) == "COMPLETED"


def test_waits_stretch_with_the_load_between_one_and_five_times(monkeypatch):
    """patience(): the tests' Slurm and Ray waits are written for an idle machine and stretched on a loaded one."""
    import tests.services.slurm as slurm

    monkeypatch.setattr(slurm.os, "cpu_count", lambda: 2)
    for loads, stretch in (((0.5, 0.1, 0.0), 1.0), ((6.0, 2.0, 1.0), 3.0), ((1.0, 8.0, 9.0), 4.0), ((40.0, 9, 9), 5.0)):
        monkeypatch.setattr(slurm.os, "getloadavg", lambda loads=loads: loads)
        assert patience(60) == 60 * stretch, loads
