"""harness.search: the recipe search on Ray Tune with ASHA, on validation only; killed and resumed; its winner fed to
the grid with --configs-from."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fcn.config import RunConfig
from fcn.errors import UserError
from harness.search import default_space, expand_trials, parse_space
from tests.conftest import REPO, TINY, run_py


def test_space_parsing_and_trial_expansion():
    space = parse_space(["lr=1e-3,3e-3", "dropout=0..0.5", "batch-size=8,16"])
    assert space == {
        "lr": ("choice", (1e-3, 3e-3)),
        "dropout": ("uniform", 0.0, 0.5),
        "batch_size": ("choice", (8, 16)),
    }
    assert parse_space(["lr=1e-4..1e-2"])["lr"] == ("log", 1e-4, 1e-2)
    for bad in (["width=1,2"], ["lr"], ["lr=a,b"], ["lr=1e-2..1e-4"], ["batch_size=8..16"]):
        with pytest.raises(UserError):
            parse_space(bad)
    base = RunConfig()
    grid = expand_trials(default_space(base), 0, 0)
    assert len(grid) == 8 and len({json.dumps(t, sort_keys=True) for t in grid}) == 8
    assert {"lr": base.lr, "dropout": base.dropout} in grid  # the preset's recipe is always among the defaults
    sampled = expand_trials(space, 5, seed=3)
    assert sampled == expand_trials(space, 5, seed=3) != expand_trials(space, 5, seed=4)  # trial n is stable
    assert all(0 <= t["dropout"] <= 0.5 and t["lr"] in (1e-3, 3e-3) and t["batch_size"] in (8, 16) for t in sampled)
    with pytest.raises(UserError):
        expand_trials(space, 0, 0)  # a range needs a budget


def _store_without_test_split(src, dst):
    """A copy of the tiny MTAT store with no test clips at all: a search that opened the test split could not run."""
    import h5py

    from fcn.frontends import FrontEndParams
    from fcn.store import write_store

    with h5py.File(src, "r") as h:
        keep = np.flatnonzero(h["split"].asstr()[:] != "test")
        inputs = json.loads(h.attrs["inputs"])
        write_store(
            dst,
            dataset=h.attrs["dataset"],
            tags=json.loads(h.attrs["tags"]),
            params=FrontEndParams.from_dict(json.loads(h.attrs["frontend"])),
            inputs=inputs,
            clip_ids=list(h["clip_id"].asstr()[keep]),
            paths=list(h["path"].asstr()[keep]),
            splits=list(h["split"].asstr()[keep]),
            labels=h["labels"][keep],
            feature_chunks=[{k: h[k][keep] for k in inputs}],
        )
    return dst


def _flags(data_dir, tmp_path, *extra):
    flags = [
        "--datasets",
        "mtat",
        "--inputs",
        "mel",
        "--depths",
        "3",
        "--data-dir",
        str(data_dir),
        "--out-dir",
        str(tmp_path / "runs"),
        "--quiet",
    ]
    for k, v in TINY.items():
        flags += ["--" + k.replace("_", "-"), str(v)]
    return flags + list(extra)


def test_search_prunes_on_validation_only_resumes_after_a_kill_and_feeds_the_grid(data_dir, tmp_path):
    from fcn import tracking
    from fcn.run_store import store_path

    cell = RunConfig(dataset="mtat", depth=3, data_dir=str(data_dir), **TINY)
    notest = _store_without_test_split(store_path(cell), tmp_path / "notest.h5")
    # the yardstick: a normal run on this store fails at once, for want of a test split
    from fcn.train import train

    with pytest.raises(UserError, match="test split"):
        train(cell.replace(store=str(notest), out_dir=str(tmp_path / "plain")))

    search = [
        sys.executable,
        "-m",
        "harness.search",
        *_flags(
            data_dir, tmp_path, "--store", str(notest), "--grace-period", "1", "--results", str(tmp_path / "results")
        ),
    ]
    proc = subprocess.Popen(
        search,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    trials_dir = tmp_path / "runs" / "fcn-sweep-search"
    deadline = time.time() + 400
    while len(list(trials_dir.glob("*/trial.json"))) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, f"the search ended before it could be killed: {proc.stderr.read()[-3000:]}"
    os.killpg(proc.pid, signal.SIGKILL)  # the search and its Ray cluster
    proc.wait()
    proc.stderr.close()
    before = {p.parent.name: p.stat().st_mtime_ns for p in trials_dir.glob("*/trial.json")}
    assert len(before) >= 2

    again = subprocess.run(search, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = {p.parent.name: json.loads(p.read_text()) for p in trials_dir.glob("*/trial.json")}
    assert len(trials) == 8 and "mtat-mel-fcn3-s0-base" not in trials  # the preset is among the 8: no extra trial
    for name, mtime in before.items():  # done before the kill: not trained again
        assert (trials_dir / name / "trial.json").stat().st_mtime_ns == mtime
        assert (trials_dir / name / "train.log").read_text().count(" parameters, ") == 1
    pruned = [t for t in trials.values() if t["pruned"]]
    assert pruned and all(t["stopped"] == f"pruned at epoch {t['epochs_run']}" for t in pruned)
    preset = next(
        t
        for t in trials.values()
        if t["recipe"] == {"lr": cell.lr, "dropout": cell.dropout, "batch_size": cell.batch_size}
    )
    assert not preset["pruned"]  # the yardstick runs in full

    # every trial is a child run of the cell's search run, says why it stopped, and has no test metric
    c = tracking.client(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    exp = c.get_experiment_by_name("fcn-sweep-search")
    runs = c.search_runs([exp.experiment_id], max_results=100)
    parent = [r for r in runs if r.data.tags.get("search_cell") == "mtat-mel-fcn3-s0"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert sorted(r.info.run_name for r in children) == sorted(trials)
    for r in children:
        t = trials[r.info.run_name]
        assert r.data.tags["stopped"] == t["stopped"] and r.info.status == ("KILLED" if t["pruned"] else "FINISHED")
        assert not any(k.startswith("test_") for k in r.data.metrics)
        assert len(c.get_metric_history(r.info.run_id, "valid_roc_auc")) == t["epochs_run"]

    winner = max((t for t in trials.values() if not t["pruned"]), key=lambda t: t["best_valid_roc_auc"])
    recipe = json.loads((tmp_path / "results" / "search-recipes" / "mtat-mel-fcn3-s0.json").read_text())
    assert {k: recipe[k] for k in ("lr", "dropout", "batch_size")} == winner["recipe"]
    report = (tmp_path / "results" / "search-mtat-mel-fcn3-s0.md").read_text()
    assert "test split was never opened" in report and (tmp_path / "results" / "search-mtat-mel-fcn3-s0.png").exists()

    # the grid with the found recipe (on the full store): same training as the winning trial, so as good on validation
    grid = run_py(
        "-m",
        "harness.grid",
        *_flags(data_dir, tmp_path, "--configs-from", str(tmp_path / "results" / "search-recipes"), "--no-tables"),
    )
    assert grid.returncode == 0, grid.stderr[-3000:]
    cell_run = [
        r
        for r in c.search_runs([c.get_experiment_by_name("fcn-sweep").experiment_id])
        if r.data.tags.get("cell_key") == "mtat-mel-fcn3-s0"
    ][0]
    assert float(cell_run.data.params["lr"]) == winner["recipe"]["lr"]
    assert float(cell_run.data.params["dropout"]) == winner["recipe"]["dropout"]
    assert cell_run.data.params["recipe"].startswith(("searched", "the preset's"))
    best = cell_run.data.metrics["best_valid_roc_auc"]
    assert best == pytest.approx(winner["best_valid_roc_auc"], abs=0.01)
    assert best >= preset["best_valid_roc_auc"] - 0.01
