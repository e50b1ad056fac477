"""Issue 24: what a real multi-GPU cluster has and the test machine does not, set by the tests: a GPU's compute
capability (precision as labelled), runs that died before MLflow saw their params, NaN epochs on resume, flock that
fails as Lustre's does, a SQLite store written from several nodes, and the GPU command's refusal on a CPU machine.
The real-Slurm counterparts are in test_multinode.py (two-node fixture)."""

import pytest
import torch

import fcn.precision as p
from fcn.config import RunConfig


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
