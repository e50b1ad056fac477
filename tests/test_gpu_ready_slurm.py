"""Issue 17 on the real Slurm cluster of tests/services/slurm.py (two fake GPUs per node: Slurm allocates them and
sets CUDA_VISIBLE_DEVICES, torch sees no CUDA).

- srun --gpus-per-task=1: each task sees only its own GPU (CUDA_VISIBLE_DEVICES=0 / 1) and picks cuda:0 of it;
  srun -n1 --gpus-per-node=2: one process in a GPU allocation is not refused. Here torch.cuda is told the visible
  count by the probe (the count Slurm set), since no real CUDA exists on this machine.
- --device auto in a --gpus-per-node=2 job, with CUDA unusable (as with a driver older than torch's CUDA build): one
  line naming the mismatch, and no training on the CPU.
- A rank that raises ends the job in seconds, FAILED, both through submitit (harness/backends/slurm.py's srun flags)
  and through the generated sbatch script, while the other rank sits where a collective would hang.
"""

import os
import subprocess
import sys
import time

from tests.conftest import REPO, config_flags

PROBE = r"""
import os, sys

import torch
import torch.distributed as tdist

n = len([x for x in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if x.strip()])
torch.cuda.is_available = lambda: n > 0      # what a CUDA machine would say for the GPUs Slurm made visible
torch.cuda.device_count = lambda: n
torch.cuda.set_device = lambda d: None
tdist.init_process_group = lambda *a, **k: None  # the rendezvous itself is tested elsewhere

from fcn import dist
from fcn.errors import run_cli


def main():
    for device in sys.argv[1:]:
        print(f"rank {os.environ['SLURM_PROCID']} visible {os.environ.get('CUDA_VISIBLE_DEVICES')} "
              f"{device} -> {dist.setup(device).device}", flush=True)


run_cli(main)
"""


def _srun(cluster, *args, timeout=120):
    return subprocess.run(
        ["srun", "-p", cluster.partition, "--time=5", "--mem=500M", "--cpus-per-task=1", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        env={**os.environ, **cluster.env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )


def test_gpu_binding_and_single_process_on_real_slurm(slurm_cluster, tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    bound = _srun(slurm_cluster, "-n2", "--gpus-per-task=1", sys.executable, str(probe), "auto")
    assert bound.returncode == 0, bound.stdout + bound.stderr
    assert sorted(bound.stdout.split("\n")[:2]) == [
        "rank 0 visible 0 auto -> cuda:0",
        "rank 1 visible 1 auto -> cuda:0",
    ]
    single = _srun(slurm_cluster, "-n1", "--gpus-per-node=2", sys.executable, str(probe), "auto", "cpu")
    assert single.returncode == 0, single.stdout + single.stderr
    assert single.stdout.split("\n")[:2] == ["rank 0 visible 0,1 auto -> cuda:0", "rank 0 visible 0,1 cpu -> cpu"]


def test_device_auto_with_gpus_allocated_but_cuda_unusable_stops(slurm_cluster, tmp_path):
    from fcn.config import RunConfig

    config = RunConfig(experiment="nocuda", out_dir=str(tmp_path / "runs"), data_dir=str(tmp_path / "data"))
    assert config.device == "auto"  # what the sbatch scripts run with
    out = _srun(slurm_cluster, "-n1", "--gpus-per-node=2", sys.executable, "-m", "fcn.train", *config_flags(config))
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    lines = [ln for ln in out.stderr.splitlines() if "driver/build mismatch" in ln]
    assert len(lines) == 1 and "CUDA_VISIBLE_DEVICES/Slurm: 0,1" in lines[0] and "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()  # nothing trained on the CPU


def _rank1_raises() -> None:
    """A submitit job function: rank 1 fails, rank 0 waits where a collective would wait for it."""
    if os.environ.get("SLURM_PROCID") == "1":
        raise RuntimeError("rank 1 fails")
    time.sleep(300)


def test_a_rank_that_raises_ends_the_submitit_job_in_seconds(slurm_cluster, tmp_path, monkeypatch):
    from fcn.config import RunConfig
    from harness.backends.slurm import SlurmOptions, executor

    for k, v in slurm_cluster.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.chdir(REPO)
    opts = SlurmOptions(partition=slurm_cluster.partition, tasks_per_node=2, time_min=5)
    ex = executor(tmp_path / "submitit", opts, "raises", [RunConfig()])
    t0 = time.monotonic()
    job = ex.submit(_rank1_raises)
    state = slurm_cluster.wait_job(job.job_id, timeout=120)
    took = time.monotonic() - t0
    assert state == "FAILED" and took < 60, (state, took)


FAKE_PYTHON = """#!/bin/bash
[ "$*" = "-m fcn.dist job" ] && exec {python} "$@"
[ "$SLURM_PROCID" = 1 ] && {{ echo "rank 1 fails" >&2; exit 1; }}
exec sleep 300
"""


def test_a_rank_that_raises_ends_the_sbatch_script_job_in_seconds(slurm_cluster, tmp_path):
    fake, log = tmp_path / "python", tmp_path / "job.out"
    fake.write_text(FAKE_PYTHON.format(python=sys.executable))
    fake.chmod(0o755)
    t0 = time.monotonic()
    out = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "-p",
            slurm_cluster.partition,
            f"--output={log}",
            "--time=5",
            "--mem=1G",
            "--cpus-per-task=1",
            "--gpus-per-node=2",
            "--ntasks-per-node=2",
            str(REPO / "slurm" / "msd_fcn7.sh"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **slurm_cluster.env, "PYTHON": str(fake), "OUT_DIR": str(tmp_path)},
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    state = slurm_cluster.wait_job(int(out.stdout.strip().split(";")[0]), timeout=120)
    took = time.monotonic() - t0
    assert state == "FAILED" and took < 60, (state, took, log.read_text() if log.exists() else "")
