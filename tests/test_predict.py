"""fcn.predict: a trained run tags synthetic clips with their true tags ranked on top, by key, run id or path."""

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tests.conftest import run_py


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    from fcn.config import RunConfig
    from tests.conftest import TINY

    config = RunConfig(
        **dict(TINY, data_dir=str(data_dir), out_dir=str(tmp_path_factory.mktemp("runs")), epochs=8, patience=8)
    )
    from fcn.train import train

    return config, train(config)


def _test_clips(config, n=12):
    from fcn.data import mtat
    from fcn.run_store import synth_root

    tags, items, _ = mtat.read(synth_root(config), split="folder")
    test = [it for it in items if it.split == "test" and it.labels.sum() >= 1]
    return tags, test[:n]


def test_true_tags_rank_on_top(trained):
    config, _ = trained
    tags, clips = _test_clips(config)
    out = run_py(
        "-m",
        "fcn.predict",
        *[c.path for c in clips],
        "--run",
        config.key,
        "--out-dir",
        config.out_dir,
        "--top",
        "50",
        "--json",
        check=True,
    )
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["file"] for r in rows] == [c.path for c in clips] and all(r["run"] == config.key for r in rows)
    per_clip, top1 = [], []
    for r, c in zip(rows, clips):
        scores = np.array([r["tags"][t] for t in tags])
        truth = c.labels.astype(bool)
        per_clip.append(roc_auc_score(truth, scores))
        top1.append(truth[int(np.argmax(scores))])
    # a clip's true tags score above its other tags (chance: 0.5), and the top tag is usually a true one
    assert np.mean(per_clip) > 0.8, per_clip
    assert np.mean(top1) >= 0.5, top1


def test_by_mlflow_run_id_and_by_checkpoint_path(trained):
    config, metrics = trained
    _, clips = _test_clips(config, n=1)
    by_id = run_py(
        "-m",
        "fcn.predict",
        clips[0].path,
        "--run",
        metrics["run_id"],
        "--out-dir",
        config.out_dir,
        "--experiment",
        "no-such-experiment",
        "--top",
        "3",
        check=True,
    )  # forces the MLflow artifact path
    ckpt = f"{metrics['run_dir']}/ckpt/best.pt"
    by_path = run_py("-m", "fcn.predict", clips[0].path, "--run", ckpt, "--top", "3", check=True)
    assert by_id.stdout.split(":", 1)[1] == by_path.stdout.split(":", 1)[1]
    assert by_path.stdout.count(",") == 2  # three tags


def test_bad_file_and_unknown_run(trained, tmp_path):
    config, _ = trained
    bad = tmp_path / "not-audio.mp3"
    bad.write_text("hello")
    out = run_py("-m", "fcn.predict", str(bad), "--run", config.key, "--out-dir", config.out_dir)
    assert out.returncode == 1 and "not-audio.mp3" in out.stderr and "Traceback" not in out.stderr
    nope = run_py("-m", "fcn.predict", str(bad), "--run", "msd-mel-fcn9-s0", "--out-dir", config.out_dir)
    assert nope.returncode == 2 and "no finished run" in nope.stderr and "Traceback" not in nope.stderr
