"""slurm/: the generated per-cell sbatch scripts and ray_cluster.sh.

Syntax and sync with the grid (`python -m harness.sbatch --check`), then on a real single-node Slurm cluster with two
fake GPUs (tests/services/slurm.py): slurm/msd_fcn7.sh at a tiny scale runs 2 srun tasks under DDP to completion with
one MLflow run; an external `scontrol requeue` mid-run ends with one finished run that resumed from its checkpoint;
USR2 (what --signal=B:USR2@120 sends before the time limit) requeues the job through the script's trap, and a later
scancel still stops it; asking 2 GPUs for 1 task stops at once with a clear error; slurm/ray_cluster.sh brings up Ray
inside a job and runs a one-cell grid on it.
"""

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from fcn.config import RunConfig
from tests.conftest import REPO, TINY, run_py

SLURM = REPO / "slurm"
CELL_SCRIPTS = sorted(SLURM.glob("*_fcn*.sh"))


def test_every_script_parses():
    scripts = CELL_SCRIPTS + [SLURM / "ray_cluster.sh"]
    datasets = ("mtat", "msd", "jamendo")  # MTG-Jamendo's paper-style cells too
    assert [p.name for p in CELL_SCRIPTS] == sorted(f"{ds}_fcn{d}.sh" for ds in datasets for d in range(3, 8))
    for p in scripts:
        r = subprocess.run(["bash", "-n", str(p)], capture_output=True, text=True)
        assert r.returncode == 0, f"{p.name}: {r.stderr}"
        assert os.access(p, os.X_OK), f"{p.name} is not executable"
        text = p.read_text()
        for needle in (
            "#SBATCH --requeue",
            "#SBATCH --signal=B:USR2@",
            "scontrol requeue",
            "MASTER_PORT" if "fcn" in p.name else "--ray-address",
        ):
            assert needle in text, f"{p.name} lacks {needle!r}"


def test_check_passes_and_catches_an_edit(tmp_path, capsys):
    from harness import sbatch

    committed = run_py("-m", "harness.sbatch", "--check", timeout=300)
    assert committed.returncode == 0, "slurm/ is out of sync; run `python -m harness.sbatch`\n" + committed.stderr

    out = tmp_path / "slurm"
    assert sbatch.main(["--out", str(out)]) == 0  # generating from scratch gives the committed files
    for p in CELL_SCRIPTS + [SLURM / "ray_cluster.sh"]:
        assert (out / p.name).read_text() == p.read_text(), p.name
    assert sbatch.main(["--check", "--out", str(out)]) == 0
    edited = out / "mtat_fcn4.sh"
    edited.write_text(edited.read_text().replace("--time=", "--time=1", 1))
    (out / "msd_fcn6.sh").unlink()
    capsys.readouterr()
    assert sbatch.main(["--check", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{edited} (differs)" in err and f"{out / 'msd_fcn6.sh'} (missing)" in err
    assert "msd_fcn7.sh" not in err


def test_headers_say_what_and_how_long():
    msd7 = (SLURM / "msd_fcn7.sh").read_text()
    assert "0.845 as published" in msd7 and "third-party reading [U]" in msd7 and "ESTIMATE" in msd7
    msd4 = (SLURM / "msd_fcn4.sh").read_text()
    assert "0.808 as published" in msd4 and "0.852 in the first author's re-run" in msd4
    mtat4 = (SLURM / "mtat_fcn4.sh").read_text()
    assert "INPUT=mel: 0.894" in mtat4 and "INPUT=stft: 0.846" in mtat4 and "INPUT=mfcc: 0.862" in mtat4
    assert "≈2,600 FCN-4 clips/s" in mtat4 and "--gpus-per-node=4 --ntasks-per-node=4" in mtat4
    assert "INPUT=${INPUT:-mel}" in mtat4
    assert "--preset paper --dataset mtat --depth 4" in mtat4
    jam5 = (SLURM / "jamendo_fcn5.sh").read_text()  # a reference, not a reproduction: Won et al.'s FCN
    assert "0.8255, PR-AUC 0.2801 [C]" in jam5 and "not in the paper" in jam5.lower()
    assert "--preset paper --dataset jamendo --depth 5" in jam5 and "32,136 training + 10,888 validation" in jam5
    assert "'melspecs'" in jam5 and "INPUT=mel only" in jam5


# --- on a real Slurm cluster ------------------------------------------------------------------------------------------


def _sbatch(cluster, script: Path, log: Path, *opts: str, env: dict[str, str]) -> int:
    """Submit `script` from the repository root with sbatch CLI overrides of its header and extra environment."""
    out = subprocess.run(
        ["sbatch", "--parsable", "-p", cluster.partition, f"--output={log}", *opts, str(script)],
        cwd=REPO,
        env={**os.environ, **cluster.env, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip().split(";")[0])


def _tiny_env(data_dir, out_dir: Path, **fcn) -> dict[str, str]:
    """The cell script's variables for a tiny run: every field the paper preset sets is overridden in FCN_ARGS."""
    # --device cpu: the fake GPUs are allocated but unusable, and --device auto rightly stops on that (fcn/dist.py).
    # TINY's global batch of 16: 8 clips on each of 2 ranks (a last batch of one is skipped by both, fcn/batching.py).
    # The fields that name the feature store at their defaults, those of the stores data_dir already holds: the paper
    # preset's own front end (the authors' log-mel, 2016 Δ/ΔΔ) would have the session's first cell job build two more
    # (in a full run the 30-job burst's, while the other 29 wait on the store lock)
    store = {k: getattr(RunConfig(), k) for k in ("frontend_variant", "deltas", "split") if k not in fcn}
    args = dict(TINY, data_dir=str(data_dir), num_workers=0, device="cpu", **store, **fcn)
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in args.items())
    return {
        "FCN_ARGS": flags,
        "OUT_DIR": str(out_dir),
        "MLFLOW_TRACKING_URI": "",
        "DATA_ROOT": "",
        "INPUT": "mel",
        "PYTHON": ".venv/bin/python",
    }


# demo-scale header overrides; 2 tasks on the 2 fake GPUs (torch sees no CUDA and trains on CPU with gloo)
SMALL = ("--time=10", "--mem=2G", "--cpus-per-task=1", "--gpus-per-node=2", "--ntasks-per-node=2")


def _runs(uri: str, experiment: str):
    from fcn import tracking

    c = tracking.client(uri)
    exp = c.get_experiment_by_name(experiment)
    return [] if exp is None else c.search_runs([exp.experiment_id], max_results=100)


def _log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else "(no log)"


@pytest.mark.slow
def test_cell_script_runs_two_task_ddp_to_completion(slurm_cluster, data_dir, tmp_path):
    out_dir, log = tmp_path / "runs", tmp_path / "job.out"
    job = _sbatch(slurm_cluster, SLURM / "msd_fcn7.sh", log, *SMALL, env=_tiny_env(data_dir, out_dir))
    state = slurm_cluster.wait_job(job, timeout=240)
    text = _log(log)
    assert state == "COMPLETED", text[-4000:]
    assert "2 task(s), 2 GPU(s) per node" in text and "master " in text
    metrics = json.loads((out_dir / "fcn-sweep" / "msd-mel-fcn7-s0" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and 0 <= metrics["test_roc_auc"] <= 1
    assert metrics["config"]["depth"] == 7 and metrics["config"]["dataset"] == "msd"
    assert sum(line.startswith('{"key": "msd-mel-fcn7-s0"') for line in text.splitlines()) == 1  # rank 0 only
    runs = _runs(f"sqlite:///{out_dir / 'mlflow.db'}", "fcn-sweep")  # the default store under OUT_DIR
    assert [r.info.run_name for r in runs] == ["msd-mel-fcn7-s0"]
    assert runs[0].info.status == "FINISHED" and "test_roc_auc" in runs[0].data.metrics


@pytest.mark.slow
def test_cell_script_requeued_mid_run_resumes_into_the_same_mlflow_run(slurm_cluster, data_dir, tmp_path):
    out_dir, log = tmp_path / "runs", tmp_path / "job.out"
    experiment = f"sbatch-requeue-{uuid.uuid4().hex[:8]}"
    uri = f"sqlite:///{tmp_path / 'elsewhere' / 'mlflow.db'}"  # MLFLOW_TRACKING_URI given, not the default store
    (tmp_path / "elsewhere").mkdir()
    env = _tiny_env(data_dir, out_dir, epochs=6, patience=6)
    env.update(MLFLOW_TRACKING_URI=uri, EXPERIMENT=experiment)
    job = _sbatch(slurm_cluster, SLURM / "msd_fcn7.sh", log, *SMALL, env=env)
    cell = out_dir / experiment / "msd-mel-fcn7-s0"
    deadline = time.monotonic() + 180
    while not (cell / "ckpt" / "last.pt").exists():
        state = slurm_cluster.job_state(job)
        assert time.monotonic() < deadline and state in ("PENDING", "RUNNING", "CONFIGURING"), (
            f"no checkpoint (job {state})\n" + _log(log)[-4000:]
        )
        time.sleep(0.2)
    assert not (cell / "metrics.json").exists(), "the cell finished before it could be requeued"
    slurm_cluster.requeue(job)

    state = slurm_cluster.wait_job(job, timeout=240)
    text = _log(log)
    assert state == "COMPLETED", text[-4000:]
    assert "(restart 1)" in text  # --open-mode=append keeps both runs of the job in one log
    assert "got TERM while the job is" in text  # the requeue's own TERM is not turned into a second requeue
    assert "resuming after epoch" in (cell / "train.log").read_text()
    assert json.loads((cell / "metrics.json").read_text())["world_size"] == 2
    assert not (out_dir / "mlflow.db").exists()
    runs = _runs(uri, experiment)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and "test_roc_auc" in runs[0].data.metrics
    assert "Restarts=1" in slurm_cluster.run("scontrol", "show", "job", str(job)).stdout


FAKE_PYTHON = """#!/bin/bash
# stands in for the interpreter: records how srun started it, then waits to be killed (the script's own question
# to fcn.dist goes to the real one)
[ "$*" = "-m fcn.dist job" ] && exec .venv/bin/python "$@"
echo "start=${SLURM_RESTART_COUNT:-0} rank=$SLURM_PROCID/$SLURM_NTASKS master=$MASTER_ADDR:$MASTER_PORT args=$*" >> "$MARKS"
exec sleep 300
"""  # noqa: E501 - bash, as it is written to the fake interpreter


@pytest.mark.slow
def test_usr2_before_the_time_limit_requeues_and_scancel_stops(slurm_cluster, tmp_path):
    """The script's own path (no training: a stand-in interpreter): USR2 → `scontrol requeue` → the job starts again;
    a later scancel (TERM) stops it for good instead of being turned into another requeue."""
    fake, marks, log = tmp_path / "python", tmp_path / "marks.txt", tmp_path / "job.out"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    env = {
        "PYTHON": str(fake),
        "MARKS": str(marks),
        "OUT_DIR": str(tmp_path / "runs"),
        "INPUT": "stft",
        "FCN_ARGS": "--seed 3 --data-dir '/tmp/a dir'",
    }
    job = _sbatch(slurm_cluster, SLURM / "msd_fcn7.sh", log, *SMALL, env=env)

    def starts(n: int, timeout: float = 90) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            lines = marks.read_text().splitlines() if marks.exists() else []
            if sum(ln.startswith(f"start={n - 1} ") for ln in lines) == 2:
                return lines
            assert time.monotonic() < deadline, f"no start {n} (job {slurm_cluster.job_state(job)})\n" + _log(log)
            time.sleep(0.2)

    first = starts(1)
    from fcn.dist import master_port

    port = master_port(job)
    assert sorted(ln.split(" args=")[0] for ln in first) == [
        f"start=0 rank={r}/2 master={slurm_cluster.node}:{port}" for r in (0, 1)
    ]
    assert first[0].split(" args=")[1] == (
        "-m fcn.train --preset paper --dataset msd --depth 7 --input stft --data-root  "
        f"--out-dir {tmp_path / 'runs'} --experiment fcn-sweep --seed 3 --data-dir /tmp/a dir"
    )
    slurm_cluster.run("scancel", "--signal=USR2", "--batch", str(job))  # what --signal=B:USR2@120 sends
    starts(2)
    assert "got USR2: requeueing job" in _log(log)
    slurm_cluster.run("scancel", str(job))
    assert slurm_cluster.wait_job(job, timeout=60) == "CANCELLED"
    time.sleep(3)
    assert slurm_cluster.job_state(job) == "CANCELLED"
    assert "Restarts=1" in slurm_cluster.run("scontrol", "show", "job", str(job)).stdout
    assert "got TERM while the job is" in _log(log)


@pytest.mark.slow
def test_gpus_and_tasks_per_node_mismatch_stops_at_once(slurm_cluster, data_dir, tmp_path):
    log = tmp_path / "job.out"
    job = _sbatch(
        slurm_cluster,
        SLURM / "msd_fcn7.sh",
        log,
        "--time=5",
        "--mem=1G",
        "--cpus-per-task=1",
        "--gpus-per-node=2",
        "--ntasks-per-node=1",
        env=_tiny_env(data_dir, tmp_path / "runs"),
    )
    assert slurm_cluster.wait_job(job, timeout=60) == "FAILED"
    text = _log(log)
    assert "error: this job has 2 GPU(s) per node but 1 task(s) per node" in text, text
    assert "--ntasks-per-node=2" in text and "Traceback" not in text
    assert not (tmp_path / "runs" / "fcn-sweep").exists()  # nothing started


@pytest.mark.slow
def test_ray_cluster_script_runs_a_grid_inside_a_job(slurm_cluster, data_dir, tmp_path):
    if shutil.which("ray", path=str(REPO / ".venv" / "bin")) is None:
        pytest.skip("no ray in .venv")
    out_dir, log = tmp_path / "runs", tmp_path / "job.out"
    grid = [
        "--data-dir",
        str(data_dir),
        "--out-dir",
        str(out_dir),
        "--results",
        str(tmp_path / "results"),
        "--quiet",
        "--no-tables",
        "--datasets",
        "mtat",
        "--inputs",
        "mel",
        "--depths",
        "3",
    ]
    for k, v in dict(TINY, epochs=1, device="cpu").items():
        grid += ["--" + k.replace("_", "-"), str(v)]
    env = {"GRID_ARGS": " ".join(grid), "MLFLOW_TRACKING_URI": "", "RAY_WAIT_S": "90"}
    job = _sbatch(
        slurm_cluster,
        SLURM / "ray_cluster.sh",
        log,
        "--nodes=1",
        "--ntasks-per-node=1",
        "--cpus-per-task=2",
        "--gpus-per-node=2",
        "--mem=6G",
        "--time=10",
        env=env,
    )
    state = slurm_cluster.wait_job(job, timeout=240)
    text = _log(log)
    assert state == "COMPLETED", text[-6000:]
    assert "Ray cluster up: 1 node(s)" in text and "2 CPU(s), 2 GPU(s)" in text
    assert "1/1 cells finished" in text, text[-4000:]
    runs = [r for r in _runs(f"sqlite:///{out_dir / 'mlflow.db'}", "fcn-sweep") if "cell_key" in r.data.tags]
    assert [r.info.run_name for r in runs] == ["mtat-mel-fcn3-s0"] and runs[0].info.status == "FINISHED"
    assert not Path(f"/tmp/ray-{job}").exists()  # the head's temp dir went with the job


def test_the_scripts_ask_fcn_dist_for_the_job_rules(monkeypatch):
    """`python -m fcn.dist job`: one task per GPU checked, then the rendezvous and the job's shape, in one line."""
    from fcn import dist
    from fcn.errors import UserError

    monkeypatch.setenv("PATH", "/nonexistent")  # no scontrol: the Python hostlist expansion
    env = {
        "SLURM_JOB_ID": "7001",
        "SLURM_JOB_NODELIST": "gpu[03-04]",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NTASKS": "8",
        "SLURM_TASKS_PER_NODE": "4(x2)",
        "SLURM_GPUS_ON_NODE": "4",
    }
    assert dist.slurm_job(env) == f"gpu03 {dist.master_port(7001)} 2 4"
    assert dist.slurm_tasks_per_node({"SLURM_NTASKS": "6", "SLURM_NNODES": "3"}) == 2
    with pytest.raises(UserError, match=r"4 GPU\(s\) per node but 1 task\(s\) per node.*--ntasks-per-node=4"):
        dist.slurm_job(dict(env, SLURM_TASKS_PER_NODE="1(x2)"))
    assert dist.slurm_job({"SLURM_JOB_ID": "5"}).split()[2:] == ["1", "1"]  # CPU job: no GPU rule
    for p in CELL_SCRIPTS:
        text = p.read_text()
        assert '"$PYTHON" -m fcn.dist job' in text and 'SLURM_GPUS_ON_NODE" !=' not in text
