"""fcn/cell.py: a cell's key round-trips (fraction included), and one rule says when a cell is finished."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest


def _run(status: str, metrics: dict):
    return SimpleNamespace(info=SimpleNamespace(status=status), data=SimpleNamespace(metrics=metrics))


@pytest.mark.parametrize("fraction", [1.0, 0.25, 0.5, 0.125])
@pytest.mark.parametrize("batch", [16, 32, 8])
def test_key_round_trips_with_the_training_fraction_and_global_batch(fraction, batch):
    from fcn import cell
    from fcn.config import RunConfig

    c = RunConfig(dataset="msd", input="stft", depth=7, seed=12, train_fraction=fraction, batch_size=batch)
    assert cell.parse_key(c.key) == dict(
        dataset="msd", input="stft", depth=7, seed=12, train_fraction=fraction, batch_size=batch
    )
    # a full-data cell at the recipe's global batch keeps the paper grid's plain key (every key made before)
    assert c.key.endswith("-s12") == (fraction == 1.0 and batch == 16)
    assert c.key.endswith(f"-b{batch}") == (batch != 16)  # another global batch is another cell, never a seed
    assert cell.parse_key("sweep-fcn") is None and cell.parse_key(c.key + "-t3") is None  # not cells


def test_one_finished_rule_for_disk_and_mlflow(tmp_path):
    from fcn import cell

    assert not cell.is_finished(tmp_path) and cell.finished_metrics(tmp_path) is None
    assert not cell.is_finished(tmp_path, [_run("FINISHED", {"valid_roc_auc": 0.8})])  # a search trial, no test
    assert not cell.is_finished(tmp_path, [_run("RUNNING", {"test_roc_auc": 0.8})])
    assert cell.is_finished(tmp_path, [_run("FAILED", {}), _run("FINISHED", {"test_roc_auc": 0.8})])
    (tmp_path / cell.METRICS).write_text(json.dumps({"test_roc_auc": 0.9}))
    assert cell.is_finished(tmp_path) and cell.finished_metrics(tmp_path) == {"test_roc_auc": 0.9}


def test_paths_come_from_the_config(tmp_path):
    from fcn import cell
    from fcn.config import RunConfig

    c = RunConfig(out_dir=str(tmp_path), experiment="e")
    assert cell.run_dir(c) == tmp_path / "e" / "mtat-mel-fcn4-s0"
    assert cell.run_dir(c, "t3").name == "mtat-mel-fcn4-s0-t3"
    assert cell.ckpt(cell.run_dir(c)).name == "last.pt" and cell.harness_dir(str(tmp_path), "e").name == ".harness"
    assert cell.store_uri(str(tmp_path)) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
