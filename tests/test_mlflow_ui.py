"""The MLflow UI really shows our runs: a real server, real cell runs, headless Chromium.

MLflow 3.17's runs table shows only Run Name / Created / Dataset / Duration / Source / Models by default: no metric
or param columns. `harness.ui.install_runs_view` stores a saved view (experiment tag `mlflow.sharedViewState.<key>`)
that `#/experiments/<id>/runs?viewStateShareKey=<key>` opens with our params and AUC columns; that is the URL that
`python -m harness.ui --experiment NAME` prints, so this test checks what a user sees.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.ui import install_runs_view, runs_fragment
from tests.services.browser import chromium_binary, dump_dom, screenshot

REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = REPO / "test-artifacts" / "mlflow_runs.png"
CELLS = {
    "mtat-mel-fcn4-s0": (0.8912, 0.4456),
    "mtat-stft-fcn4-s0": (0.8461, 0.3871),
    "mtat-mfcc-fcn4-s0": (0.8623, 0.4012),
}


@pytest.fixture(scope="module")
def ui_experiment(mlflow_server):
    from mlflow import MlflowClient

    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    exp_id = client.create_experiment("ui-test")
    run_ids = {}
    for key, (roc, pr) in CELLS.items():
        dataset, inp, fcn, s = key.split("-")
        run = client.create_run(exp_id, run_name=key, tags={"cell_key": key})
        for k, v in {"dataset": dataset, "input": inp, "depth": fcn[3:], "seed": s[1:], "key": key}.items():
            client.log_param(run.info.run_id, k, v)
        client.log_metric(run.info.run_id, "test_roc_auc", roc)
        client.log_metric(run.info.run_id, "test_pr_auc", pr)
        client.set_terminated(run.info.run_id)
        run_ids[key] = run.info.run_id
    return client, exp_id, run_ids


@pytest.mark.slow
def test_runs_table_shows_cells_and_auc(mlflow_server, ui_experiment):
    chromium_binary()  # skip (or fail in CI) before doing any work without a browser
    client, exp_id, _ = ui_experiment
    url = f"{mlflow_server.uri}/{install_runs_view(client, exp_id)}"
    dom = dump_dom(url)
    for key, (roc, pr) in CELLS.items():
        assert key in dom, f"run {key} not in the runs table at {url}"
        assert f"{roc}" in dom and f"{pr}" in dom, f"AUC of {key} not shown at {url}"
    assert "metrics.`test_roc_auc`" in dom  # the metric column itself, not a stray number
    png = screenshot(url, SCREENSHOT)
    assert png.stat().st_size > 20_000  # a blank page is a few KB


@pytest.mark.slow
def test_default_runs_table_and_run_page(mlflow_server, ui_experiment):
    """Without the saved view the run names still show; a run's own page shows its AUC."""
    chromium_binary()
    _, exp_id, run_ids = ui_experiment
    dom = dump_dom(f"{mlflow_server.uri}/{runs_fragment(exp_id, view_key=None)}")
    assert all(key in dom for key in CELLS)
    key = "mtat-mel-fcn4-s0"
    page = dump_dom(f"{mlflow_server.uri}/#/experiments/{exp_id}/runs/{run_ids[key]}")
    assert key in page and "test_roc_auc" in page and str(CELLS[key][0]) in page


def test_ui_command_dry_run(tmp_path):
    """`python -m harness.ui` resolves the default store under --out-dir, binds 127.0.0.1 and prints the runs URL."""
    from mlflow import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    exp_id = MlflowClient(tracking_uri=store).create_experiment(
        "sweep", artifact_location=str(tmp_path / "mlartifacts")
    )
    cmd = [
        sys.executable,
        "-m",
        "harness.ui",
        "--out-dir",
        str(tmp_path),
        "--experiment",
        "sweep",
        "--port",
        "5123",
        "--dry-run",
    ]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"http://127.0.0.1:5123/#/experiments/{exp_id}/runs?viewStateShareKey=fcn-sweep" in out.stdout
    assert f"--backend-store-uri {store}" in out.stdout and "--host 127.0.0.1" in out.stdout
    tags = MlflowClient(tracking_uri=store).get_experiment(exp_id).tags
    assert "mlflow.sharedViewState.fcn-sweep" in tags

    missing = subprocess.run(
        [sys.executable, "-m", "harness.ui", "--out-dir", str(tmp_path / "nothing"), "--dry-run"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and "no tracking store" in missing.stderr
