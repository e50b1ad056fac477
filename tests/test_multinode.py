"""Across two Slurm nodes (tests/services/slurm_multi.py: each node its own host, with its own name and address in
its own network namespace, one shared filesystem): DDP across nodes through the cell scripts and through
`harness.grid --cluster slurm --nodes 2` (submitit), Ray across nodes through slurm/ray_cluster.sh, and a node lost
while a cell trains."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_grid import grid_flags
from tests.test_sbatch import SLURM, _log, _runs, _sbatch, _tiny_env

pytestmark = pytest.mark.slow
KEY = "msd-mel-fcn7-s0"


def test_two_nodes_are_two_hosts(slurm_multi, tmp_path):
    out = tmp_path / "out.txt"
    job = slurm_multi.sbatch("-N2", "-n2", "-o", str(out), "--wrap",
                             "srun -N2 -n2 bash -c 'echo $(hostname) $(hostname -I) $SLURM_PROCID'")
    assert slurm_multi.wait_job(job, timeout=60) == "COMPLETED", out.read_text() + slurm_multi.log_tails()
    rows = sorted(line.split() for line in out.read_text().splitlines() if line.strip())
    assert rows == [[n, slurm_multi.addrs[n], str(i)] for i, n in enumerate(slurm_multi.nodes)], out.read_text()
    assert slurm_multi.wait_sacct(job) == "COMPLETED"


def _history(uri: str, experiment: str, metric: str) -> list[float]:
    from fcn import tracking

    runs = _runs(uri, experiment)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED", [(r.info.run_name, r.info.status) for r in runs]
    hist = tracking.client(uri).get_metric_history(runs[0].info.run_id, metric)
    return [m.value for m in sorted(hist, key=lambda m: m.step)]


def test_cell_script_ddp_across_two_nodes_matches_two_tasks_on_one(slurm_multi, data_dir, tmp_path):
    """rank 0 on fcnode1 and rank 1 on fcnode2 (gloo over the bridge, MASTER_ADDR = fcnode1 = its own address) give
    the per-epoch losses of the same cell as 2 tasks on one node. Both are the same computation: the same seed gives
    the same initial weights, DistributedSampler the same shards, each rank 1 thread, and the all-reduce of 2 ranks
    adds the same two numbers (a + b == b + a exactly); only the transport differs. So the tolerance is 1e-6
    relative (float32 rounding headroom), not a statistical one: measured, the values were identical."""
    jobs = {}
    for name, opts in (("two_nodes", ("--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=1")),
                       ("one_node", ("--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=2"))):
        env = _tiny_env(data_dir, tmp_path / name)
        jobs[name] = _sbatch(slurm_multi, SLURM / "msd_fcn7.sh", tmp_path / f"{name}.out", "--time=10", "--mem=1G",
                             "--cpus-per-task=1", *opts, env=env)
    for name, job in jobs.items():
        state = slurm_multi.wait_job(job, timeout=300)
        assert state == "COMPLETED", _log(tmp_path / f"{name}.out")[-4000:] + slurm_multi.log_tails()
    text = _log(tmp_path / "two_nodes.out")
    n1, n2 = slurm_multi.nodes
    assert f"rank 0/2 on host {n1}" in text and f"rank 1/2 on host {n2}" in text, text[-3000:]
    assert f"2 node(s) × 1 task(s)" in text and f"master {n1}:" in text
    one = _log(tmp_path / "one_node.out")
    hosts = {ln.split(" on host ")[1].split()[0] for ln in one.splitlines() if " on host " in ln}
    assert len(hosts) == 1, one[-3000:]
    for name in jobs:
        m = json.loads((tmp_path / name / "fcn-sweep" / KEY / "metrics.json").read_text())
        assert m["world_size"] == 2
    for metric in ("train_loss", "valid_loss", "valid_roc_auc"):
        a = _history(f"sqlite:///{tmp_path / 'two_nodes' / 'mlflow.db'}", "fcn-sweep", metric)
        b = _history(f"sqlite:///{tmp_path / 'one_node' / 'mlflow.db'}", "fcn-sweep", metric)
        assert len(a) == len(b) == 3
        assert a == pytest.approx(b, rel=1e-6, abs=1e-7), (metric, a, b)


def test_grid_on_slurm_with_two_nodes_per_cell(slurm_multi, data_dir, tmp_path, monkeypatch):
    """`harness.grid --cluster slurm --nodes 2`: submitit's job has one task per node; the cell trains under DDP with
    one rank on each host and finishes once."""
    flags = grid_flags(data_dir, tmp_path, "--cluster", "slurm", "--partition", slurm_multi.partition, "--nodes", "2",
                       "--datasets", "msd", "--inputs", "mel", "--depths", "3", "--time-min", "10")
    env = {**os.environ, **slurm_multi.env, "PYTHONUNBUFFERED": "1"}
    p = subprocess.run([sys.executable, "-m", "harness.grid", *flags], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=400)
    assert p.returncode == 0, p.stderr[-4000:] + slurm_multi.log_tails()
    assert "1/1 cells finished" in p.stderr, p.stderr[-3000:]
    cell = tmp_path / "runs" / "fcn-sweep" / "msd-mel-fcn3-s0"
    assert json.loads((cell / "metrics.json").read_text())["world_size"] == 2
    logs = "".join(f.read_text(errors="replace")
                   for f in (tmp_path / "runs" / "fcn-sweep" / ".harness" / "submitit").rglob("*_log.err"))
    n1, n2 = slurm_multi.nodes
    assert f"rank 0/2 on host {n1}" in logs and f"rank 1/2 on host {n2}" in logs, logs[-3000:]
    runs = [r for r in _runs(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}", "fcn-sweep") if "cell_key" in r.data.tags]
    assert [(r.info.run_name, r.info.status) for r in runs] == [("msd-mel-fcn3-s0", "FINISHED")]
