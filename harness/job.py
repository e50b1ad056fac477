"""One cell's job, the same on every back end: train the cell, and say how it went as an Outcome.

The local pool's workers, the Ray trials and the Slurm (submitit) jobs all call `run_cell`; the back ends differ only
in how they start the processes that call it and how they collect the outcomes.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field

from fcn.cell import run_dir
from fcn.config import RunConfig
from fcn.errors import UserError
from fcn.train import train

FINISHED, FAILED, SUBMITTED = "finished", "failed", "submitted"
WORKER_LOG = "worker.log"  # in the run dir: what a cell printed on a back end that shares one terminal or none


@dataclass(frozen=True)
class Outcome:
    """How a cell went: finished (with its final metrics), failed (with one line saying why), or submitted (Slurm
    --no-wait: a job id, no result yet)."""

    key: str
    state: str
    metrics: dict = field(default_factory=dict)  # numbers only: test_roc_auc, test_pr_auc, train_time_s, ...
    error: str = ""
    run_dir: str = ""
    wall_s: float | None = None  # the cell's wall time where the back end measures it (local, Ray)
    job_id: str = ""  # Slurm

    @property
    def ok(self) -> bool:
        return self.state == FINISHED

    def line(self) -> str:
        """One progress line: the cell's AUC, or why it failed."""
        if self.state == FAILED:
            return f"{self.key}: FAILED: {self.error}"
        if self.state == SUBMITTED:
            return f"{self.key}: submitted as job {self.job_id}"
        took = f" ({self.wall_s:.0f} s)" if self.wall_s is not None else ""
        return f"{self.key}: test ROC-AUC {self.metrics.get('test_roc_auc', float('nan')):.4f}{took}"


def numbers(result: dict) -> dict:
    """The numeric metrics of a training result (what an Outcome and a Ray report carry)."""
    return {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def run_cell(config: RunConfig, *, gpus: int = 1, log: bool = True) -> Outcome:
    """Train one cell (DDP over `gpus` processes through torchrun when above 1) and return its Outcome; a failure is
    an Outcome too, never an exception, so one failed cell never stops a grid. `log`: this process's output for the
    cell goes to <run dir>/worker.log (parallel cells must not interleave on one terminal)."""
    rdir = run_dir(config)
    rdir.mkdir(parents=True, exist_ok=True)
    where = f" (see {rdir / WORKER_LOG})" if log else ""
    t0 = time.time()
    with _output_to(rdir / WORKER_LOG if log else None):
        try:
            result = _torchrun(config, gpus) if gpus > 1 else _train(config)
            return Outcome(config.key, FINISHED, numbers(result), run_dir=str(rdir), wall_s=time.time() - t0)
        except UserError as e:
            error = str(e)
        except Exception as e:  # noqa: BLE001 - one failed cell must not stop the grid
            traceback.print_exc()
            error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}{where}"
    return Outcome(config.key, FAILED, error=error, run_dir=str(rdir), wall_s=time.time() - t0)


@contextlib.contextmanager
def _output_to(path):
    if path is None:
        yield
        return
    with open(path, "a") as f, contextlib.redirect_stderr(f), contextlib.redirect_stdout(f):
        yield


def _train(config: RunConfig) -> dict:
    return train(config)


def _torchrun(config: RunConfig, gpus: int) -> dict:
    """The cell as `gpus` processes of `python -m fcn.train` under torchrun (a multi-GPU Ray trial): its config in a
    temp file, deleted when the run ends (one per multi-GPU cell would pile up in the node's /tmp); the result is the
    JSON line rank 0 prints last."""
    with tempfile.NamedTemporaryFile("w", prefix=f"fcn-{config.key}-", suffix=".json", delete=False) as f:
        json.dump(config.to_dict(), f)
    try:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={gpus}",
                "-m",
                "fcn.train",
                "--config",
                f.name,
            ],
            capture_output=True,
            text=True,
        )
    finally:
        os.unlink(f.name)
    sys.stderr.write(out.stderr)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"torchrun of {config.key} on {gpus} GPUs exited with {out.returncode}: {last}")
    return json.loads(out.stdout.strip().splitlines()[-1])
