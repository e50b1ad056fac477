"""harness.grid: pure expansion, and the local and Ray back ends end to end (Slurm: tests/test_grid_slurm.py)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fcn.config import DATASETS, RunConfig
from harness.cells import PAPER_CELLS, GridSpec, expand
from tests.conftest import REPO, TINY, free_port, run_py


def test_expand_is_pure_and_keys_are_stable():
    base = RunConfig()
    cells = expand(GridSpec(), base)
    assert len(cells) == 30 and len({c.key for c in cells}) == 30
    assert [c.key for c in cells] == [c.key for c in expand(GridSpec(), base)]
    assert "msd-mel-fcn7-s0" in {c.key for c in cells} and "mtat-mfcc-fcn3-s0" in {c.key for c in cells}
    paper = expand(GridSpec(paper=True), base)
    assert {(c.dataset, c.input, c.depth) for c in paper} == PAPER_CELLS and len(paper) == 10
    seeds = expand(GridSpec(seeds=(0, 1, 2), only=("mtat-*-fcn4-*",), exclude=("*-stft-*",)), base)
    assert [c.key for c in seeds] == [
        "mtat-mel-fcn4-s0",
        "mtat-mel-fcn4-s1",
        "mtat-mel-fcn4-s2",
        "mtat-mfcc-fcn4-s0",
        "mtat-mfcc-fcn4-s1",
        "mtat-mfcc-fcn4-s2",
    ]
    everything = expand(GridSpec(datasets=DATASETS), base)  # MTG-Jamendo: asked for by name, not in the default
    assert len(everything) == 45 and "jamendo-mel-fcn4-s0" in {c.key for c in everything}
    assert not [c for c in cells if c.dataset == "jamendo"]
    paper_style = expand(GridSpec(datasets=("mtat", "jamendo"), paper=True), base)
    assert sorted(c.key for c in paper_style if c.dataset == "jamendo") == [
        f"jamendo-mel-fcn{d}-s0" for d in range(3, 8)
    ]
    frac = expand(GridSpec(datasets=("msd",), inputs=("mel",), depths=(4,), fractions=(0.5, 1.0)), base)
    assert [c.key for c in frac] == ["msd-mel-fcn4-s0-f0.5", "msd-mel-fcn4-s0"]
    assert all(c.width == base.width for c in cells)  # everything but the axes comes from the base config


def test_paper_implies_the_paper_preset_unless_one_is_named(tmp_path):
    from harness.grid import build_parser, grid_from_args

    def cells(*flags):
        return grid_from_args(build_parser().parse_args(["--out-dir", str(tmp_path), *flags]))

    paper = cells("--paper")
    assert len(paper) == 10 and {(c.width, c.clip_seconds, c.epochs) for c in paper} == {(1.0, 29.12, 100)}
    assert {(c.width, c.clip_seconds) for c in cells("--paper", "--preset", "grid-demo")} == {(0.125, 3.0)}
    assert {(c.width, c.clip_seconds) for c in cells("--only", "mtat-mel-*")} == {(0.125, 3.0)}  # the demo default


def grid_flags(data_dir, tmp_path, *extra):
    flags = [
        "--data-dir",
        str(data_dir),
        "--out-dir",
        str(tmp_path / "runs"),
        "--results",
        str(tmp_path / "results"),
        "--quiet",
    ]
    for k, v in TINY.items():
        flags += ["--" + k.replace("_", "-"), str(v)]
    return flags + list(extra)


def _cell_runs(tmp_path, experiment="fcn-sweep"):
    from fcn import tracking

    c = tracking.client(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    exp = c.get_experiment_by_name(experiment)
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    cells = [r for r in runs if "cell_key" in r.data.tags]
    parents = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    return cells, parents


def test_local_grid_end_to_end_then_rerun_submits_nothing(data_dir, tmp_path):
    # MTG-Jamendo beside MTAT (MSD runs on Slurm, tests/test_grid_slurm.py): each back end sees the third data set
    data = ("--datasets", "mtat,jamendo", "--inputs", "mel,mfcc", "--depths", "3")
    flags = grid_flags(data_dir, tmp_path, *data, "--epochs", "2")
    out = run_py("-m", "harness.grid", *flags)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "4/4 cells finished" in out.stderr
    cells, parents = _cell_runs(tmp_path)
    assert sorted(r.info.run_name for r in cells) == [
        "jamendo-mel-fcn3-s0",
        "jamendo-mfcc-fcn3-s0",
        "mtat-mel-fcn3-s0",
        "mtat-mfcc-fcn3-s0",
    ]
    assert len(parents) == 1 and all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in cells)
    assert all(r.info.status == "FINISHED" for r in cells)
    assert (tmp_path / "results").is_dir()
    jam = (tmp_path / "results" / "jamendo_table.md").read_text()  # its table, beside Won et al.'s FCN, with PR-AUC
    assert "0.8255" in jam and "0.2801" in jam and "ours: FCN-3, mel" in jam and "ours: FCN-3, MFCC" in jam

    again = run_py("-m", "harness.grid", *flags)
    assert again.returncode == 0 and "(4 finished, 0 to run)" in again.stderr
    assert len(_cell_runs(tmp_path)[0]) == 4

    status = run_py(
        "-m",
        "harness.status",
        "--data-dir",
        str(data_dir),
        "--out-dir",
        str(tmp_path / "runs"),
        *data,
    )
    assert status.returncode == 0 and status.stdout.count("finished") == 4


def test_killing_the_harness_mid_grid_then_rerun_finishes_only_what_was_missing(data_dir, tmp_path):
    flags = grid_flags(
        data_dir,
        tmp_path,
        "--datasets",
        "mtat",
        "--inputs",
        "mel,stft,mfcc",
        "--depths",
        "3",
        "--parallel",
        "1",
        "--epochs",
        "2",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.grid", *flags],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    first = tmp_path / "runs" / "fcn-sweep" / "mtat-mel-fcn3-s0" / "metrics.json"
    deadline = time.time() + 300
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert first.exists() and proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)  # the harness only: its workers die with it (PR_SET_PDEATHSIG)
    proc.wait()
    time.sleep(1)
    out = run_py("-m", "harness.grid", *flags)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "(1 finished, 2 to run)" in out.stderr
    cells, _ = _cell_runs(tmp_path)
    assert sorted(r.info.run_name for r in cells) == ["mtat-mel-fcn3-s0", "mtat-mfcc-fcn3-s0", "mtat-stft-fcn3-s0"]
    assert all(r.info.status == "FINISHED" for r in cells)
    log = (first.parent / "train.log").read_text()
    assert log.count("parameters,") == 1  # the finished cell was not trained again


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--cluster", "pbs"], "invalid choice: 'pbs'"),
        (["--datasets", "gtzan"], "unknown value(s) gtzan"),
        (["--inputs", "cqt"], "unknown value(s) cqt"),
        (["--depths", "3,9"], "unknown value(s) 9"),
        (["--gpus-per-node", "2"], "need --cluster slurm"),
        (["--only", "nothing-*"], "the grid is empty"),
    ],
)
def test_bad_flags_end_with_one_line_and_nothing_submitted(data_dir, tmp_path, flags, message):
    out = run_py("-m", "harness.grid", *grid_flags(data_dir, tmp_path, *flags))
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "runs" / "fcn-sweep").exists()


def test_unreachable_tracking_server_submits_nothing(data_dir, tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    out = run_py("-m", "harness.grid", *grid_flags(data_dir, tmp_path, "--tracking-uri", uri))
    assert out.returncode == 2 and "is not reachable" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "runs" / "fcn-sweep").exists()


def test_ray_grid_end_to_end(data_dir, tmp_path):
    # three cells on two CPUs: the third runs in an actor a finished cell hands back (reuse_actors). MTG-Jamendo's
    # three inputs from its audio (MTAT runs on the local back end above, MSD on Slurm)
    flags = grid_flags(
        data_dir,
        tmp_path,
        "--cluster",
        "ray",
        "--datasets",
        "jamendo",
        "--inputs",
        "mel,stft,mfcc",
        "--depths",
        "4",
        "--epochs",
        "2",
        "--cpus-per-trial",
        "1",
    )
    out = run_py("-m", "harness.grid", *flags, env={"RAY_AUTH_MODE": "disabled"})
    assert out.returncode == 0, out.stderr[-4000:]
    assert "3/3 cells finished" in out.stderr
    cells, parents = _cell_runs(tmp_path)
    assert sorted(r.info.run_name for r in cells) == [
        "jamendo-mel-fcn4-s0",
        "jamendo-mfcc-fcn4-s0",
        "jamendo-stft-fcn4-s0",
    ]
    assert all(r.info.status == "FINISHED" and "test_roc_auc" in r.data.metrics for r in cells)
    # Ray fills in each trial's process id: fewer processes than cells means actors were reused
    results = list((tmp_path / "runs" / "fcn-sweep" / ".harness" / "ray").glob("grid-*/*/result.json"))
    pids = {json.loads(line)["pid"] for f in results for line in f.read_text().splitlines() if line.strip()}
    assert len(results) == 3 and len(pids) <= 2, pids


def test_back_end_flags_come_from_the_options_dataclasses():
    from dataclasses import fields

    from harness import backends
    from harness.backends.slurm import SIGNAL_DELAY_S, SlurmOptions
    from harness.grid import _backend, build_parser

    args = build_parser().parse_args(
        ["--cluster", "slurm", "--gpus-per-node", "2", "--sbatch", "constraint=a100", "--no-wait"]
    )
    _, opts = _backend(args)
    assert opts == SlurmOptions(gpus_per_node=2, extra={"constraint": "a100"}, wait=False)
    assert opts.signal_delay_s == SIGNAL_DELAY_S and opts.ntasks == 2
    for name in backends.BACKENDS:  # no flags given: every option at its dataclass default
        cls = backends.options_class(name)
        assert _backend(build_parser().parse_args(["--cluster", name]))[1] == cls()
        assert all(f.metadata["help"] for f in fields(cls))
    ray = build_parser().parse_args(["--cluster", "ray", "--ray-address", "auto", "--gpus-per-trial", "2"])
    assert _backend(ray)[1] == backends.options_class("ray")(ray_address="auto", gpus_per_trial=2.0)
