"""What a cell is: its key, its files, its lock, and when it is finished. Every other module asks here.

A cell is one (dataset, input, depth, seed, training fraction) of the paper's grid, trained by `fcn.train.train`.
- key: `mtat-mel-fcn4-s0`; a run on part of the training split (RQ4) gets `-f<fraction>`: `mtat-mel-fcn4-s0-f0.25`;
  a run at a global batch other than the recipe's 16 gets `-b<batch>` (fcn/batching.py): `mtat-mel-fcn4-s0-b32`.
- run dir: `<out_dir>/<experiment>/<key>/` holding ckpt/last.pt, ckpt/best.pt, metrics.json, train.log, .lock;
  a search trial of a cell gets `<key>-t<n>/` beside it (harness/search.py).
- finished: its run dir holds metrics.json (written last by training: the truth on disk), or its MLflow run is
  FINISHED with metric test_roc_auc (the truth when the run dir is on another machine's scratch).
- defaults: out dir `runs`, the SQLite store `<out_dir>/mlflow.db`, artifacts in `<out_dir>/mlartifacts`, harness
  bookkeeping in `<out_dir>/<experiment>/.harness/`.

No torch, no mlflow: the harness imports this on a login node.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sys
import time
from pathlib import Path

from fcn import locks
from fcn.batching import RECIPE_BATCH
from fcn.errors import UserError

# Default experiment names: a single `python -m fcn.train` run, and a grid of cells (`python -m harness.grid`).
CELL_EXPERIMENT = "fcn"
GRID_EXPERIMENT = "fcn-sweep"

# MLflow tag that names the cell a run belongs to (one live run per cell; fcn/tracking.py).
CELL_TAG = "cell_key"

# The default out dir of every command: run directories, and the default local store beside them.
OUT_DIR = "runs"
# The default local store and its artifacts, beside the run directories (never ./mlruns of a job's working dir).
STORE_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
HARNESS_DIR = ".harness"  # per-experiment bookkeeping of the back ends (Slurm job ids, submitit folders, Ray)

# Files in a run dir.
METRICS = "metrics.json"
LOG = "train.log"
LOCK = ".lock"
LAST = "last.pt"
BEST = "best.pt"

_KEY_RE = re.compile(
    r"^(?P<dataset>[a-z0-9]+)-(?P<input>[a-z0-9]+)-fcn(?P<depth>\d+)-s(?P<seed>\d+)"
    r"(?:-f(?P<fraction>[0-9.e-]+))?(?:-b(?P<batch>\d+))?$"
)


def make_key(dataset: str, input: str, depth: int, seed: int, fraction: float = 1.0, batch: int = RECIPE_BATCH) -> str:
    """The cell key; the global batch is named only when it is not the recipe's, so the recipe's keys (all keys made
    before the batch became global) stay as they were, and a run at another global batch is another cell."""
    k = f"{dataset}-{input}-fcn{depth}-s{seed}"
    if float(fraction) != 1.0:
        k = f"{k}-f{float(fraction):g}"
    return k if int(batch) == RECIPE_BATCH else f"{k}-b{int(batch)}"


def parse_key(key: str) -> dict | None:
    """The cell identity of a key (`dataset, input, depth, seed, train_fraction`), or None for a non-cell name."""
    m = _KEY_RE.match(key)
    if not m:
        return None
    return dict(
        dataset=m["dataset"],
        input=m["input"],
        depth=int(m["depth"]),
        seed=int(m["seed"]),
        train_fraction=float(m["fraction"]) if m["fraction"] else 1.0,
        batch_size=int(m["batch"]) if m["batch"] else RECIPE_BATCH,
    )


def run_dir(config, trial: str = "") -> Path:
    """A cell's run dir; a search trial of it ("t3", harness/search.py) gets its own, `<key>-t3`, beside it."""
    return run_dir_at(config.out_dir, config.experiment, f"{config.key}-{trial}" if trial else config.key)


def run_dir_at(out_dir: str, experiment: str, key: str) -> Path:
    """The run dir of cell `key` of `experiment` under `out_dir` (without a config: fcn.predict --run KEY)."""
    return Path(out_dir) / experiment / key


def ckpt(rdir: Path, which: str = LAST) -> Path:
    return Path(rdir) / "ckpt" / which


def harness_dir(out_dir: str, experiment: str) -> Path:
    return Path(out_dir) / experiment / HARNESS_DIR


def store_uri(out_dir: str) -> str:
    """The default tracking URI: a SQLite store beside the run directories."""
    return f"sqlite:///{Path(out_dir).resolve() / STORE_FILE}"


def sqlite_db(uri: str) -> Path | None:
    """The database file of a `sqlite:///` tracking URI (the default store's kind), else None (a server)."""
    prefix = "sqlite:///"
    return Path(uri[len(prefix) :]) if uri.startswith(prefix) else None


def artifacts_uri(out_dir: str) -> str:
    return (Path(out_dir).resolve() / ARTIFACTS_DIR).as_uri()


def quiet_mlflow() -> None:
    """MLflow's telemetry off: nothing here may reach the network at run time (set before mlflow is imported)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


# --- finished -------------------------------------------------------------------------------------------------------


def finished_metrics(rdir: Path) -> dict | None:
    """The metrics of a cell finished on disk (metrics.json is written last, atomically), else None."""
    path = Path(rdir) / METRICS
    if not path.exists():
        return None
    return json.loads(path.read_text())


def run_is_finished(run) -> bool:
    """An MLflow run that holds a finished cell's result."""
    return run.info.status == "FINISHED" and "test_roc_auc" in run.data.metrics


def is_finished(rdir: Path, runs=()) -> bool:
    """The one rule: metrics.json in the run dir, or a FINISHED MLflow run of the cell with its test ROC-AUC."""
    return (Path(rdir) / METRICS).exists() or any(run_is_finished(r) for r in runs)


# --- the cell lock --------------------------------------------------------------------------------------------------


def lock_wait_s() -> float:
    """How long a trainer waits for a cell lock held by another process: env FCN_CELL_LOCK_WAIT_S if set, else 900 s
    in a requeued Slurm job (SLURM_RESTART_COUNT > 0: after a node is lost, the old copy of the job may still be
    running on it until its slurmd returns and kills it, docs/MEASURED.md; the new copy must outlast it, not fail),
    else 0: a second trainer started by hand stops at once."""
    env = os.environ.get("FCN_CELL_LOCK_WAIT_S", "")
    if env:
        try:
            return max(0.0, float(env))
        except ValueError:
            raise UserError(f"FCN_CELL_LOCK_WAIT_S={env!r}: give a number of seconds") from None
    return 900.0 if os.environ.get("SLURM_RESTART_COUNT", "0") not in ("", "0") else 0.0


def acquire_lock(rdir: Path, wait_s: float | None = None):
    """Take the cell's lock (an open file; closing it releases the lock). A second trainer of the same cell waits up
    to `wait_s` (lock_wait_s()) for it, then stops with one line. Whoever gets it reads the checkpoint only
    afterwards, so two live copies of one cell never train, checkpoint or log to MLflow at the same time."""
    rdir = Path(rdir)
    wait_s = lock_wait_s() if wait_s is None else wait_s
    path = locks.lock_path(rdir / LOCK)
    f = open(path, "a")
    deadline, said = time.monotonic() + wait_s, False
    while True:
        try:
            taken = locks.try_lock(f, rdir / LOCK)  # a filesystem without cross-node flock: one line, at once
        except BaseException:
            f.close()
            raise
        if taken:
            break
        if time.monotonic() >= deadline:
            f.close()
            raise UserError(
                f"{rdir.name} is being trained by another process right now (lock {rdir / LOCK})"
                + (f" and was still after waiting {wait_s:.0f} s" if wait_s else "")
                + "; wait for it, or stop it first"
            ) from None
        if not said:
            print(
                f"{rdir.name}: another process holds the cell lock {rdir / LOCK} (an older copy of this "
                f"job?); waiting up to {wait_s:.0f} s for it to end",
                file=sys.stderr,
                flush=True,
            )
            said = True
        time.sleep(1.0)
    if said:
        print(f"{rdir.name}: got the cell lock", file=sys.stderr, flush=True)
    return f


def lock_held(rdir: Path) -> bool:
    """True when a live training process holds the cell's lock (training keeps it while it trains)."""
    path = locks.lock_path(Path(rdir) / LOCK)
    if not path.exists():
        return False
    with open(path, "a") as f:
        if not locks.try_lock(f, Path(rdir) / LOCK):
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False
