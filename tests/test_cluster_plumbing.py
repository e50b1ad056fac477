"""Issue 24: what a real multi-GPU cluster has and the test machine does not, set by the tests: a GPU's compute
capability (precision as labelled), runs that died before MLflow saw their params, NaN epochs on resume, flock that
fails as Lustre's does, a SQLite store written from several nodes, and the GPU command's refusal on a CPU machine.
The real-Slurm counterparts are in test_multinode.py (two-node fixture)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fcn.precision as p
from fcn.config import RunConfig
from tests.conftest import REPO


@pytest.fixture
def tf32_restored():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.parametrize(
    ("capability", "want"), [((7, 0), None), ((7, 5), None), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)]
)
def test_amp_auto_takes_bf16_only_where_the_gpu_has_it(monkeypatch, capability, want):
    """--amp auto on CUDA: bf16 from compute capability 8.0 (Ampere) up, else fp32, and the log line says why."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    cuda, c = torch.device("cuda", 0), RunConfig(width=1.0)
    assert p.amp_dtype(c, cuda) == want
    line = p.describe(c, cuda)
    major, minor = capability
    assert f"compute capability {major}.{minor}" in line
    assert line.startswith("bf16 autocast" if want else "fp32 (TF32 off)"), line
    assert p.amp_dtype(c.replace(amp="bf16"), cuda) == torch.bfloat16  # asked for: given


def test_amp_off_on_cuda_is_full_fp32(monkeypatch, tf32_restored):
    """--amp off on CUDA turns TF32 off for matmuls and cuDNN convolutions (torch leaves cuDNN's on by default); bf16
    runs and CPU runs leave both switches as they were."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    cuda = torch.device("cuda", 0)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    p.apply_precision(RunConfig(amp="auto"), cuda)
    p.apply_precision(RunConfig(amp="off"), torch.device("cpu"))
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    p.apply_precision(RunConfig(amp="off"), cuda)
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert p.describe(RunConfig(amp="off"), cuda) == "fp32 (TF32 off) (amp off)"


def test_requeued_run_gets_its_params_and_no_epoch_twice(tmp_path):
    """A run whose first attempt died after creating the MLflow run but before its queued params were written gets
    them on the next attempt (only those it lacks: a changed resume=True field keeps its first value); epochs whose
    validation ROC-AUC was NaN are not logged again on every resume."""
    from fcn import tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = tracker.Tracker(uri, "exp", str(tmp_path))
    run = first.c.create_run(first.exp_id, run_name="k", tags={"cell_key": "k"})  # the attempt dies here
    run_id = run.info.run_id
    first.c.log_param(run_id, "device", "cuda")  # one param did land, with a value the requeue differs in
    nan = float("nan")
    history = [
        {"epoch": 1, "train_loss": 0.7, "valid_loss": 0.69, "valid_roc_auc": nan, "epoch_time_s": 1.0},
        {"epoch": 2, "train_loss": 0.6, "valid_loss": 0.68, "valid_roc_auc": 0.61, "epoch_time_s": 1.0},
    ]
    for _attempt in range(3):  # the requeued attempts: each continues the run and re-syncs what MLflow lacks
        t = tracker.Tracker(uri, "exp", str(tmp_path))
        assert t.start("k", {"depth": 4, "device": "cpu", "lr": 0.001}, {}, run_id=run_id) == run_id
        tracker.log_missing_epochs(t, history)
        t.finish("FAILED")
    got = first.c.get_run(run_id).data.params
    assert got == {"depth": "4", "device": "cuda", "lr": "0.001"}, got
    steps = [m.step for m in first.c.get_metric_history(run_id, "train_loss")]
    assert sorted(steps) == [1, 2], steps  # main: [1, 1, 1, 2] (epoch 1 again on every resume)


# --- filesystems whose flock does not lock across nodes --------------------------------------------------------------


def test_flock_that_fails_as_lustres_does_is_one_line_with_a_way_out(tmp_path, monkeypatch):
    """Lustre without `-o flock` answers flock with ENOSYS (set by the test hook FCN_TEST_FLOCK_ENOSYS, no mount
    needed): the cell lock, a store build's lock and the MLflow store's set-up lock stop at once with one line naming
    FCN_LOCK_DIR (main: the cell lock read ENOSYS as "being trained by another process", after its wait); with
    FCN_LOCK_DIR on a filesystem whose flock works, the locks are taken there and still exclude each other."""
    from fcn import cell, mlflow_db, run_store
    from fcn.errors import UserError

    rdir, other = tmp_path / "lustre" / "cell", tmp_path / "lustre" / "cell2"
    rdir.mkdir(parents=True)
    other.mkdir()
    monkeypatch.setenv("FCN_TEST_FLOCK_ENOSYS", str(tmp_path / "lustre"))
    monkeypatch.delenv("FCN_LOCK_DIR", raising=False)
    for take in (
        lambda: cell.acquire_lock(rdir, wait_s=30),
        lambda: run_store.lock(tmp_path / "lustre" / "store.h5.lock").__enter__(),
        lambda: mlflow_db._store_lock(tmp_path / "lustre" / "mlflow.db", wait_s=30).__enter__(),
    ):
        with pytest.raises(UserError, match="flock is not supported there \\(ENOSYS\\).*FCN_LOCK_DIR") as e:
            take()
        assert "\n" not in str(e.value)
    monkeypatch.setenv("FCN_LOCK_DIR", str(tmp_path / "locks"))  # the way out
    held = cell.acquire_lock(rdir, wait_s=0)
    try:
        with pytest.raises(UserError, match="being trained by another process"):
            cell.acquire_lock(rdir, wait_s=0)
        assert cell.lock_held(rdir) and not cell.lock_held(other)
        cell.acquire_lock(other, wait_s=0).close()  # another cell's lock is another file
    finally:
        held.close()
    with run_store.lock(tmp_path / "lustre" / "store.h5.lock"):
        pass
    assert len(list((tmp_path / "locks").iterdir())) == 3  # each guarded path its own stand-in


def test_flock_that_locks_one_node_only_is_refused():
    """Lustre's `-o localflock` and NFS's `local_lock=flock` take flock on the node only: refused, as above."""
    from fcn import locks

    mountinfo = (
        "22 1 0:20 / / rw,relatime - ext4 /dev/sda1 rw\n"
        "40 22 0:40 / /lus rw,relatime - lustre 10.0.0.1@o2ib:/fs rw,localflock\n"
        "41 22 0:41 / /nfs/home rw,relatime - nfs4 srv:/home rw,vers=4.2,local_lock=flock\n"
        "42 22 0:42 / /lus/ok rw,relatime - lustre 10.0.0.1@o2ib:/fs2 rw,flock\n"
    )
    assert "localflock" in locks.node_local(Path("/lus/runs/x"), mountinfo)
    assert "local_lock=flock" in locks.node_local(Path("/nfs/home/u/runs"), mountinfo)
    assert locks.node_local(Path("/lus/ok/runs"), mountinfo) == ""
    assert locks.node_local(Path("/scratch/runs"), mountinfo) == ""


# --- no run silently lost from MLflow --------------------------------------------------------------------------------


def test_sqlite_store_written_from_two_hosts_is_refused(tmp_path, monkeypatch):
    """A second host writing one SQLite store (so: over a shared filesystem) is refused in one line before it
    trains, unless it is the same Slurm job moved by a requeue; the real two-node counterpart is in
    test_multinode.py."""
    import socket

    from fcn import tracker
    from fcn.errors import UserError

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    host = {"name": "node1"}
    monkeypatch.setattr(socket, "gethostname", lambda: host["name"])
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    tracker.Tracker(uri, "exp", str(tmp_path)).close()
    tracker.Tracker(uri, "exp", str(tmp_path)).close()  # the same host again: fine
    host["name"] = "node2"
    with pytest.raises(UserError, match="several hosts"):  # one job's writers on two nodes at once (Ray trials)
        tracker.Tracker(uri, "exp", str(tmp_path))
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    tracker.Tracker(uri, "exp", str(tmp_path)).close()  # job 7 requeued onto node2: fine
    monkeypatch.setenv("SLURM_JOB_ID", "8")
    with pytest.raises(UserError, match=r"written by jobs on several hosts \(node1, node2\).*tracking server") as e:
        tracker.Tracker(uri, "exp", str(tmp_path))
    assert "\n" not in str(e.value)


def test_tracker_that_gave_up_says_how_many_records_it_lacks(tmp_path, capsys):
    """After MLflow failed for good the Tracker skips its calls; at the end it says how many records are missing
    and how to sync them (main: one warning at the first failure, then silence)."""
    from fcn import tracker

    t = tracker.Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "exp", str(tmp_path))
    t.start("mtat-mel-fcn4-s0", {"depth": 4}, {})
    t.flush()

    def down(*a, **kw):
        raise ConnectionError("server gone")

    t.c.log_batch = down
    for epoch in (1, 2, 3):
        t.metrics({"train_loss": 0.5}, step=epoch)
    t.close()
    err = capsys.readouterr().err
    assert "training goes on" in err
    assert "3 MLflow record(s) of mtat-mel-fcn4-s0 could not be written" in err and "rerun the same command" in err


# --- the checkpoint off the critical path ----------------------------------------------------------------------------


def test_checkpoint_writer_returns_before_the_files_are_written(tmp_path, monkeypatch):
    """checkpoint.Writer: submit() returns once the state is copied (while the write is held back here), the files
    hold the state as it was at submit even though training changes the tensors after, `then` runs only once they
    are on disk, and a failed write is raised, as its one line, by the next wait()."""
    import threading

    from fcn import checkpoint
    from fcn.errors import UserError

    gate, real_save, order = threading.Event(), checkpoint.save, []

    def held_save(state, path):
        assert gate.wait(60)
        real_save(state, path)
        order.append("saved")

    monkeypatch.setattr(checkpoint, "save", held_save)
    model = torch.nn.Linear(3, 2)
    w = checkpoint.Writer()
    w.submit([({"model": model.state_dict()}, tmp_path / "last.pt")], then=lambda: order.append("then"))
    assert order == [] and not (tmp_path / "last.pt").exists()  # the caller trains on while the write waits
    before = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)  # the next step changes the live tensors
    gate.set()
    w.wait()
    assert order == ["saved", "then"]
    assert torch.equal(checkpoint.read(tmp_path / "last.pt")["model"]["weight"], before)

    def full_disk(state, path):
        raise UserError(f"cannot write checkpoint {path} (No space left on device); the previous checkpoint is intact")

    monkeypatch.setattr(checkpoint, "save", full_disk)
    w.submit([({"model": model.state_dict()}, tmp_path / "last.pt")], then=lambda: order.append("then"))
    with pytest.raises(UserError, match="No space left"):
        w.wait()
    assert order == ["saved", "then"]  # no log line or MLflow metrics for an epoch whose files are not there


# --- the GPU machine's command, and what it says on a CPU machine -----------------------------------------------

NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}  # torch sees no GPU even on a GPU machine: the refusals are real there too


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*args], cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=300
    )


def test_gpu_check_says_in_one_line_that_it_needs_a_gpu(tmp_path):
    """`python -m bench --gpu-check` and scripts/gpu_check.sh (which runs the setup first, so it checks before)
    without a GPU: one plain line, exit 2, nothing written."""
    p = _cli(sys.executable, "-m", "bench", "--gpu-check", env=NO_GPU)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().startswith("python -m bench --gpu-check needs a CUDA GPU") and p.stderr.count("\n") == 1
    if shutil.which("nvidia-smi") is None:
        p = _cli("bash", "scripts/gpu_check.sh")
        assert p.returncode == 2 and p.stdout == "", p.stderr
        assert p.stderr.strip().startswith("scripts/gpu_check.sh needs an NVIDIA GPU") and p.stderr.count("\n") == 1


def test_gpu_check_section_replaces_its_own_part_of_benchmarks_md(tmp_path):
    """What a GPU run writes: both AUCs, their difference, the paper-scale step rows, the smoke table; a second run
    replaces its section and leaves the rest of the file alone."""
    from bench import gpu_check

    smoke = "step FCN-4 mel bf16  ok  12.0 ms, 1,333 clips/s, 3.1 GiB\nstep FCN-4 mel fp32  ok  40.0 ms\nall passed"
    m = lambda auc: {"test_roc_auc": auc, "train_time_s": 30.0}  # noqa: E731
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\nother sections\n")
    gpu_check.write(gpu_check.section(smoke, m(0.9301), m(0.9312), 300), out)
    gpu_check.write(gpu_check.section(smoke, m(0.9300), m(0.9310), 290), out)
    text = out.read_text()
    assert text.startswith("# Benchmarks\n\nother sections\n") and text.count(gpu_check.BEGIN) == 1
    assert "bf16 − fp32 test ROC-AUC: -0.0010" in text and "step FCN-4 mel fp32" in text and "290 s" in text
    failed = gpu_check.section(smoke, {"error": "CUDA out of memory"}, m(0.93), 10)
    assert "FAILED: CUDA out of memory" in failed and "bf16 − fp32" not in failed


def test_preprocess_on_the_gpu_is_opt_in_and_refused_without_one(tmp_path):
    """`fcn.preprocess --device cuda` computes the front ends on the GPU; stores stay CPU-built otherwise (auto
    included); without a GPU, --device cuda is one line, exit 2, before any data is read."""
    from fcn.preprocess import build_device

    assert build_device("auto") == "cpu" and build_device("cpu") == "cpu"
    p = _cli(sys.executable, "-m", "fcn.preprocess", "--device", "cuda", "--data-dir", str(tmp_path), env=NO_GPU)
    assert p.returncode == 2, p.stderr
    assert "--device cuda computes the front ends on a GPU" in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert not any(tmp_path.iterdir())  # nothing generated or built


def test_slurm_sweep_over_several_nodes_with_sqlite_and_no_wait_is_refused(tmp_path):
    """`harness.grid --cluster slurm --no-wait` on a partition of several nodes with the default SQLite store: one
    line (the sweep cannot run a server for jobs that outlive it). sinfo is a stand-in here, beside the real
    two-node run in test_multinode.py (test_grid_on_slurm_with_two_nodes_per_cell), where the sweep gets a server."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sinfo").write_text("#!/bin/sh\necho '2 gpu*'\n")
    (bin_dir / "sinfo").chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "MLFLOW_TRACKING_URI": ""}
    p = _cli(
        sys.executable,
        "-m",
        "harness.grid",
        "--cluster",
        "slurm",
        "--no-wait",
        "--out-dir",
        str(tmp_path / "runs"),
        "--data-dir",
        str(tmp_path / "data"),
        env=env,
    )
    assert p.returncode == 2, p.stderr
    assert "may run on 2 nodes" in p.stderr and "--tracking-uri" in p.stderr and p.stderr.count("\n") == 1, p.stderr
