"""Cell runs logged into MLflow the way training logs them (DESIGN.md's MLflow schema), with made-up predictions whose
quality is known: for tests/test_tables.py and tests/test_tables_fractions.py.

`signal` separates positives from negatives in the scores: the larger, the better the model.
"""

from __future__ import annotations

import tempfile
import zlib
from pathlib import Path

import numpy as np

from fcn.cell import parse_key
from fcn.metrics import per_tag

N_CLIPS, N_TAGS = 300, 50


def labels(seed: int, n_clips: int = N_CLIPS) -> tuple[np.ndarray, np.ndarray]:
    """(clip ids, y_true) of a test split in which every tag has positives and negatives."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n_clips, N_TAGS)) < 0.12).astype(np.uint8)
    y[0, :] = 1
    y[1, :] = 0
    return np.array([f"clip{i:04d}" for i in range(n_clips)]), y


def predictions(y: np.ndarray, signal: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(1000 + seed)
    return (signal * y + rng.normal(size=y.shape)).astype(np.float32)


def macro_auc(y: np.ndarray, score: np.ndarray) -> tuple[float, float]:
    roc, pr = per_tag(y, score)
    return float(np.nanmean(roc)), float(np.nanmean(pr))


def log_cell(
    client,
    exp_id: str,
    key: str,
    clip_id,
    y,
    score,
    parent: str | None = None,
    status: str = "FINISHED",
    with_test: bool = True,
) -> str:
    """One cell run as fcn.train logs it: run name = key, tag cell_key, RunConfig params, the test metrics (the macro
    AUCs of `score`) and test_predictions.npz. Returns the run id."""
    cell = parse_key(key)
    tags = {"cell_key": key, "run_dir": f"/runs/exp/{key}"}
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = client.create_run(exp_id, run_name=key, tags=tags)
    rid = run.info.run_id
    params = {
        "dataset": cell["dataset"],
        "input": cell["input"],
        "depth": str(cell["depth"]),
        "seed": str(cell["seed"]),
        "train_fraction": str(cell["train_fraction"]),
        "width": "1.0",
        "batch_size": str(cell["batch_size"]),
        "global_batch": str(cell["batch_size"]),
        "lr": "0.001",
        "key": key,
        "data_root": f"/data/{cell['dataset']}",
        "clip_seconds": "29.12",
        "frontend_variant": "authors",
    }
    for k, v in params.items():
        client.log_param(rid, k, v)
    for epoch in range(2):
        client.log_metric(rid, "valid_roc_auc", 0.7 + 0.05 * epoch, step=epoch)
    if with_test:
        roc, pr = macro_auc(y, score)
        client.log_metric(rid, "test_roc_auc", roc)
        client.log_metric(rid, "test_pr_auc", pr)
        # Shuffle the clip order per run: the paired test must align by clip_id, not by row.
        perm = np.random.default_rng(zlib.crc32(key.encode())).permutation(len(clip_id))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "test_predictions.npz"
            np.savez(
                path,
                clip_id=clip_id[perm],
                y_true=y[perm],
                y_score=score[perm],
                tags=np.array([f"tag{i:02d}" for i in range(y.shape[1])]),
            )
            client.log_artifact(rid, str(path))
    client.set_terminated(rid, status=status)
    return rid
