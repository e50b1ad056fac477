"""train(config) end to end: learning, MLflow logging, resume after SIGKILL, DDP with torchrun, and bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, config_flags, free_port, run_py


def _mlflow_runs(config):
    from fcn import tracking

    c = tracking.client(tracking.resolve_uri(config.tracking_uri, config.out_dir))
    exp = c.get_experiment_by_name(config.experiment)
    return c, tracking.cell_runs(c, exp.experiment_id, config.key)


def test_train_learns_logs_and_reruns_without_a_second_run(tiny):
    from fcn.cell import run_dir
    from fcn.train import train

    config = tiny(epochs=4, patience=4)
    m = train(config)
    assert m["test_roc_auc"] > 0.7, m  # the synthetic tags are learnable: far above chance (0.5)
    assert 0 < m["test_pr_auc"] <= 1 and m["world_size"] == 1
    rdir = run_dir(config)
    assert json.loads((rdir / "metrics.json").read_text())["test_roc_auc"] == m["test_roc_auc"]
    assert (rdir / "ckpt" / "best.pt").exists() and (rdir / "per_tag_auc.csv").read_text().count("\n") == 51
    c, runs = _mlflow_runs(config)
    assert len(runs) == 1
    run = c.get_run(runs[0].info.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == config.key
    assert run.data.params["depth"] == "4" and run.data.params["input"] == "mel"
    assert abs(run.data.metrics["test_roc_auc"] - m["test_roc_auc"]) < 1e-9
    assert len(c.get_metric_history(run.info.run_id, "valid_roc_auc")) == m["epochs_run"]
    arts = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "per_tag_auc.csv", "test_predictions.npz", "model"} <= arts
    # the same call again: nothing trained, no second run
    again = train(config)
    assert again["test_roc_auc"] == m["test_roc_auc"]
    assert len(_mlflow_runs(config)[1]) == 1


def test_sigkill_mid_run_then_rerun_gives_the_uninterrupted_result(tiny, tmp_path):
    reference = tiny(out_dir=str(tmp_path / "a"), epochs=5, patience=5)
    config = tiny(out_dir=str(tmp_path / "b"), epochs=5, patience=5)
    ref = run_py("-m", "fcn.train", *config_flags(reference), check=True)
    want = json.loads(ref.stdout.strip().splitlines()[-1])

    cmd = [sys.executable, "-m", "fcn.train", *config_flags(config)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = Path(config.out_dir) / config.experiment / config.key / "ckpt" / "last.pt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        log = Path(config.out_dir) / config.experiment / config.key / "train.log"
        if last.exists() and log.exists() and "epoch 2:" in log.read_text():
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training ended before it could be killed"
    proc.send_signal(signal.SIGKILL)  # mid-epoch 3
    proc.wait()
    assert not (last.parent.parent / "metrics.json").exists()

    out = run_py("-m", "fcn.train", *config_flags(config), check=True)
    assert "resuming after epoch 2" in out.stderr or "resuming after epoch 3" in out.stderr, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["test_roc_auc"] == pytest.approx(want["test_roc_auc"], abs=1e-6)
    assert got["test_pr_auc"] == pytest.approx(want["test_pr_auc"], abs=1e-6)
    assert got["best_epoch"] == want["best_epoch"]
    assert len(_mlflow_runs(config)[1]) == 1  # the resumed run continued the same MLflow run


def test_torchrun_two_processes(tiny):
    config = tiny(epochs=5, patience=5, experiment="ddp")  # half the steps per epoch of one process
    env = {"OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "fcn.train",
            *config_flags(config),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ, **env),
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
    assert len(lines) == 1, "only rank 0 prints the result"
    m = lines[0]
    assert m["world_size"] == 2 and m["test_roc_auc"] > 0.6
    # the test split was gathered from both ranks: every test clip scored exactly once
    z = np.load(Path(m["run_dir"]) / "test_predictions.npz")
    assert len(z["clip_id"]) == len(set(z["clip_id"])) and z["y_score"].shape[1] == 50
    assert len(_mlflow_runs(config)[1]) == 1


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--depth", "9"], "invalid choice: 9"),
        (["--input", "cqt"], "invalid choice: 'cqt'"),
        (["--store", "/nonexistent/store.h5"], "feature store /nonexistent/store.h5 does not exist"),
        (["--batch-size", "many"], "invalid int value"),
        (["--no-such-flag", "1"], "unrecognized arguments"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(tiny, flags, message):
    config = tiny()
    out = run_py("-m", "fcn.train", *config_flags(config), *flags)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr
    assert not (Path(config.out_dir) / config.experiment / config.key / "ckpt" / "last.pt").exists()


def test_store_with_other_frontend_parameters_is_refused(tiny):
    from fcn.run_store import store_path

    good = tiny()
    config = tiny(clip_seconds=3.0, store=str(store_path(good)))
    out = run_py("-m", "fcn.train", *config_flags(config))
    assert out.returncode == 2 and "built with other front-end parameters" in out.stderr
    assert "n_samples" in out.stderr and "Traceback" not in out.stderr
    assert not (Path(config.out_dir) / config.experiment / config.key / "metrics.json").exists()


def test_tracking_server_down_is_one_line(tiny):
    config = tiny(tracking_uri=f"http://127.0.0.1:{free_port()}")
    out = run_py("-m", "fcn.train", *config_flags(config))
    assert out.returncode == 2
    assert "is not reachable" in out.stderr and "Traceback" not in out.stderr


def test_no_best_epoch_falls_back_to_the_last_with_a_clear_line(tmp_path):
    """Validation labels with no positive clip: ROC-AUC is NaN every epoch, so no epoch is 'best'. The run says so
    in one line, tests the last epoch's weights and keeps them as best.pt (fcn.predict needs one)."""
    from fcn.cell import run_dir
    from fcn.config import RunConfig
    from fcn.frontends import INPUTS
    from fcn.store import write_store
    from fcn.train import train
    from tests.conftest import TINY

    config = RunConfig(
        **{**TINY, "epochs": 2, "patience": 2},
        store=str(tmp_path / "nan.h5"),
        out_dir=str(tmp_path / "runs"),
        data_dir=str(tmp_path),
    )
    p, rng = config.frontend, np.random.default_rng(0)
    splits = ["train"] * 32 + ["valid"] * 16 + ["test"] * 16
    labels = (rng.random((64, 50)) < 0.3).astype(np.uint8)
    labels[32:48] = 0  # validation: no positive clip for any tag
    feats = {k: rng.standard_normal((64, p.rows(k), p.n_frames)).astype(np.float16) for k in INPUTS}
    write_store(
        tmp_path / "nan.h5",
        dataset="mtat",
        tags=[f"t{i}" for i in range(50)],
        params=p,
        inputs=list(INPUTS),
        clip_ids=[f"c{i}" for i in range(64)],
        paths=[f"/c{i}" for i in range(64)],
        splits=splits,
        labels=labels,
        feature_chunks=[feats],
    )
    m = train(config)
    assert m["best_epoch"] == 2 and np.isnan(m["best_valid_roc_auc"]) and 0 <= m["test_roc_auc"] <= 1
    log = (run_dir(config) / "train.log").read_text()
    assert "validation ROC-AUC was undefined (NaN) in all 2 epochs" in log and "testing the last epoch's" in log
    from fcn import checkpoint

    assert checkpoint.load(run_dir(config) / "ckpt" / "best.pt")["fallback"] == "last epoch"
