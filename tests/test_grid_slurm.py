"""harness.grid --cluster slurm on a real single-node Slurm cluster (slurmctld, slurmd, slurmdbd + MariaDB, munge),
with a real MLflow tracking server: jobs go through sbatch, results land in MLflow, and a `scontrol requeue` of a
running job (which sends no signal: the job restarts from its start) still ends with every cell finished once."""

import json
import subprocess
import sys
import time

from fcn.config import RunConfig
from fcn.preprocess import ensure_feature_store
from tests.conftest import REPO, TINY, run_py
from tests.test_grid import grid_flags


def _runs(uri, experiment="fcn-sweep"):
    from fcn import tracking

    c = tracking.client(uri)
    exp = c.get_experiment_by_name(experiment)
    return [r for r in c.search_runs([exp.experiment_id], max_results=1000) if "cell_key" in r.data.tags]


def test_slurm_grid_with_external_requeue(slurm_cluster, mlflow_server, data_dir, tmp_path):
    flags = grid_flags(
        data_dir,
        tmp_path,
        "--cluster",
        "slurm",
        "--partition",
        slurm_cluster.partition,
        "--datasets",
        "jamendo,msd",  # MTG-Jamendo through Slurm too (MTAT runs on the local back end, tests/test_grid.py)
        "--inputs",
        "mel",
        "--depths",
        "3",
        "--epochs",
        "40",
        "--patience",
        "40",
        "--time-min",
        "10",
        "--tracking-uri",
        mlflow_server.uri,
    )
    # the synthetic MTG-Jamendo and its store first (once per session; the local grid test may have made them): the
    # deadline below is for the cells, not for generating 320 tracks on a busy machine
    ensure_feature_store(RunConfig(dataset="jamendo", data_dir=str(data_dir), **TINY), workers=1, progress=False)
    # a requeue sends SIGTERM (which submitit ignores) and SIGKILL KillWait later, so the cell must still be training
    # then for the requeue to interrupt it. Epochs take 0.3 s (CI) to 1 s (a loaded machine): with KillWait=2 s the
    # kill lands by epoch ~8 of 40. KillWait=10 s was once too long: CI finished all 30 epochs before the kill.
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.grid", *flags],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    runs_dir = tmp_path / "runs" / "fcn-sweep"
    jobs_file = runs_dir / ".harness" / "slurm_jobs.json"
    victim = runs_dir / "msd-mel-fcn3-s0"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (victim / "ckpt" / "last.pt").exists() and jobs_file.exists():
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    assert not (victim / "metrics.json").exists(), "the cell finished before it could be requeued"
    job = json.loads(jobs_file.read_text())["msd-mel-fcn3-s0"]
    slurm_cluster.requeue(job)

    stdout, stderr = proc.communicate(timeout=420)
    assert proc.returncode == 0, stderr[-4000:] + slurm_cluster.log_tails()
    assert "2/2 cells finished" in stderr
    runs = _runs(mlflow_server.uri)
    assert sorted(r.info.run_name for r in runs) == ["jamendo-mel-fcn3-s0", "msd-mel-fcn3-s0"]  # once each
    assert all(r.info.status == "FINISHED" and "test_roc_auc" in r.data.metrics for r in runs)
    shown = slurm_cluster.run("scontrol", "show", "job", str(job)).stdout
    assert "Restarts=1" in shown, "the requeue did not restart the job (did the cell finish before the kill?)"
    assert "resuming after epoch" in (victim / "train.log").read_text()  # the requeued job resumed, not restarted
    # the job really ran through Slurm's accounting
    assert slurm_cluster.wait_sacct(job, timeout=60) == "COMPLETED"

    # rerunning the finished grid submits nothing and creates no run
    again = run_py("-m", "harness.grid", *flags, timeout=300)
    assert again.returncode == 0 and "(2 finished, 0 to run)" in again.stderr
    assert len(_runs(mlflow_server.uri)) == 2


def test_slurm_flags_are_checked_before_submitting(slurm_cluster, data_dir, tmp_path):
    too_many = run_py(
        "-m",
        "harness.grid",
        *grid_flags(
            data_dir, tmp_path, "--cluster", "slurm", "--partition", slurm_cluster.partition, "--gpus-per-node", "8"
        ),
    )
    assert too_many.returncode == 2 and "at most 2 GPU(s)" in too_many.stderr, too_many.stderr[-2000:]
    no_part = run_py(
        "-m", "harness.grid", *grid_flags(data_dir, tmp_path, "--cluster", "slurm", "--partition", "nosuchpartition")
    )
    assert no_part.returncode == 2 and "nosuchpartition" in no_part.stderr and "Traceback" not in no_part.stderr
    assert not (tmp_path / "runs" / "fcn-sweep" / ".harness").exists()
