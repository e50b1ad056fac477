"""Issue 17: one cell trained on 2, then 1, then 4 CPU processes (gloo, torchrun), crashing after epochs 1 and 2.

Each resume keeps the run's global batch (recorded in the checkpoint: 2 × 16 = 32, so 32 clips on one process and 8
on four) and says so in one line; the run ends on 4 processes with every epoch done once. The same runs show that the
training loop reads no tensor to the host per step (counted in fcn/train.py), and that a slow rank-0-only end (a dead
MLflow server retrying) never keeps the other ranks waiting in a barrier: they are done before rank 0's slow part."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, config_flags

WRAPPER = r"""
import json, os, sys, time
from pathlib import Path

import torch

from fcn import checkpoint, tracker, train as T
from fcn.errors import run_cli

STOP = int(os.environ.get("STOP_AFTER_EPOCH", "0"))
SLOW = float(os.environ.get("SLOW_FINAL_S", "0"))
OUT = Path(os.environ["PROBE_DIR"])
RANK = int(os.environ.get("RANK", "0"))
syncs = [0]


def count(name):  # host reads of a tensor made by fcn/train.py itself (Adam's own CPU .item()s don't count)
    real = getattr(torch.Tensor, name)

    def f(self, *a):
        if sys._getframe(1).f_code.co_filename.endswith(os.path.join("fcn", "train.py")):
            syncs[0] += 1
        return real(self, *a)
    setattr(torch.Tensor, name, f)


count("item")
count("__float__")
real_save = checkpoint.save


def save(state, path):
    real_save(state, path)
    if STOP and str(path).endswith("last.pt") and state["progress"]["epoch"] == STOP:
        os._exit(3)  # a crash right after epoch STOP's checkpoint


checkpoint.save = save
real_final = tracker.log_final


def log_final(*a):
    time.sleep(SLOW)  # stands in for MLflow retrying against a dead server
    real_final(*a)
    (OUT / "final-0").write_text(str(time.time()))


tracker.log_final = log_final
real_train = T.train


def train(config):
    r = real_train(config)
    (OUT / f"done-{RANK}").write_text(json.dumps({"t": time.time(), "syncs": syncs[0]}))
    return r


T.train = train
run_cli(T.main)
"""


def _run(nproc: int, flags: list[str], probe: Path, **env) -> subprocess.CompletedProcess:
    wrapper = probe / "wrapper.py"
    wrapper.write_text(WRAPPER)
    launcher = (
        [sys.executable]
        if nproc == 1
        else [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    )
    e = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PROBE_DIR=str(probe),
        PYTHONPATH=str(REPO),
        **{k: str(v) for k, v in env.items()},
    )
    return subprocess.run(
        [*launcher, str(wrapper), *flags], capture_output=True, text=True, cwd=REPO, env=e, timeout=600
    )


def test_resume_across_2_1_4_processes_keeps_the_global_batch(tiny, tmp_path):
    config = tiny(epochs=3, patience=3, experiment="regpu")
    flags = config_flags(config)
    rdir = Path(config.out_dir) / config.experiment / config.key
    probe = tmp_path / "probe"
    probe.mkdir()

    first = _run(2, flags, probe, STOP_AFTER_EPOCH=1)
    assert first.returncode != 0 and (rdir / "ckpt" / "last.pt").exists(), first.stderr[-3000:]
    assert not (rdir / "metrics.json").exists()

    second = _run(1, flags, probe, STOP_AFTER_EPOCH=2)
    log = (rdir / "train.log").read_text()
    assert second.returncode == 3, second.stderr[-3000:]
    assert (
        "resuming on 1 process(es), the checkpoint was made on 2: global batch 32 kept, 32 clips per process" in log
    ), log

    third = _run(4, flags, probe, SLOW_FINAL_S=8)
    assert third.returncode == 0, third.stderr[-3000:]
    log = (rdir / "train.log").read_text()
    assert (
        "resuming on 4 process(es), the checkpoint was made on 1: global batch 32 kept, 8 clips per process" in log
    ), log
    m = json.loads((rdir / "metrics.json").read_text())
    assert m["world_size"] == 4 and m["epochs_run"] == 3 and 0 <= m["test_roc_auc"] <= 1
    from fcn import checkpoint

    progress = checkpoint.load(rdir / "ckpt" / "last.pt")["progress"]
    assert [h["epoch"] for h in progress["history"]] == [1, 2, 3]  # every epoch once, across the three launches
    assert progress["global_batch"] == 32 and progress["world"] == 4
    done = {r: json.loads((probe / f"done-{r}").read_text()) for r in range(4)}
    final0 = float((probe / "final-0").read_text())
    for r in (1, 2, 3):  # the other ranks left before rank 0's slow MLflow end: no barrier after it
        assert done[r]["t"] < final0 - 5, (r, done[r]["t"], final0)
    # one epoch on 4 ranks (8 steps each, 64 clips / 8) plus the test split: a handful of reads, not one per step
    assert all(d["syncs"] <= 4 for d in done.values()), done
