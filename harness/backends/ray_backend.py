"""Run cells as Ray Tune trials (a grid_search over the cells), on a local Ray or an existing cluster's address.

Each trial is `harness.job.run_cell`; a cell with more than one GPU runs torchrun inside its trial, so DDP inside a
trial is the same code path as anywhere.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from fcn.cell import harness_dir
from fcn.config import RunConfig
from fcn.errors import UserError
from fcn.flags import option
from harness import launch
from harness.job import FAILED, Outcome, run_cell


@dataclass(frozen=True)
class RayOptions:
    """Where cells run on Ray: the cluster, and what each cell's trial asks of it."""

    ray_address: str = option(
        "", "existing Ray cluster ('auto' or host:port); empty = a local Ray started for this command"
    )
    cpus_per_trial: float = option(1.0, "CPUs per cell (per trial)")
    gpus_per_trial: float = option(
        0.0, "GPUs per cell (per trial); a grid's cell with more than 1 runs torchrun (DDP) inside its trial"
    )


def check(opts: RayOptions, cells: list[RunConfig]) -> None:
    if opts.cpus_per_trial <= 0 or opts.gpus_per_trial < 0:
        raise UserError("--cpus-per-trial must be positive and --gpus-per-trial at least 0")
    if opts.gpus_per_trial > 1 and opts.gpus_per_trial != int(opts.gpus_per_trial):
        raise UserError(f"--gpus-per-trial {opts.gpus_per_trial}: above 1, a whole number (one process per GPU)")


def where(opts: RayOptions) -> str:
    return f"Ray ({opts.ray_address or 'local'})"


PREFIX = "cell:"


def _trial(space: dict) -> None:
    """A Ray Tune trial: one cell's job; its Outcome goes back as the trial's one report."""
    from ray import tune  # optional and heavy (harness/launch.py); the trial's Ray actor has it

    o = run_cell(RunConfig.from_dict(space["config"]), gpus=int(space.get("gpus", 0)))
    # the cell's metrics prefixed: Ray adds numbers of its own to every report (pid, timestamp, ...)
    tune.report(
        {
            **{PREFIX + k: v for k, v in o.metrics.items()},
            "state": o.state,
            "error": o.error,
            "run_dir": o.run_dir,
            "wall_s": o.wall_s,
        }
    )


def _outcome(r) -> Outcome:
    """A trial's Outcome: its report, or (its process died: no report) Ray's error."""
    key = RunConfig.from_dict(r.config["config"]).key
    m = dict(r.metrics or {})
    if r.error or "state" not in m:
        return Outcome(key, FAILED, error=str(r.error or "the trial reported nothing").strip().splitlines()[0])
    metrics = {k[len(PREFIX) :]: v for k, v in m.items() if k.startswith(PREFIX)}
    return Outcome(
        key, m["state"], metrics, error=m.get("error", ""), run_dir=m.get("run_dir", ""), wall_s=m.get("wall_s")
    )


def run(configs: list[RunConfig], opts: RayOptions, *, progress: bool = True) -> list[Outcome]:
    from ray import tune  # optional and heavy (harness/launch.py)

    t0 = time.time()
    threads = configs[0].threads or max(1, int(opts.cpus_per_trial))
    configs = [c.replace(threads=threads) for c in configs]
    with launch.ray_session(opts.ray_address):  # a Ray this grid started ends with it (no processes left behind)
        trainable = tune.with_resources(_trial, {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial})
        space = {"config": tune.grid_search([c.to_dict() for c in configs]), "gpus": opts.gpus_per_trial}
        storage = harness_dir(configs[0].out_dir, configs[0].experiment) / "ray"
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            # reuse_actors: one actor process trains trial after trial, so torch, torch._dynamo and MLflow are
            # imported once per actor, not once per cell (measured: 0.9 s → 0.08 s of overhead per trivial trial,
            # docs/MEASURED.md; a cell's imports cost seconds more). Every cell asks for the same resources, which
            # reuse requires.
            tune_config=tune.TuneConfig(
                trial_name_creator=lambda t: RunConfig.from_dict(t.config["config"]).key,
                trial_dirname_creator=lambda t: RunConfig.from_dict(t.config["config"]).key,
                reuse_actors=True,
            ),
            # max_failures: a trial whose process died (not a cell that failed: that is an Outcome) is tried once more
            run_config=tune.RunConfig(
                name=f"grid-{int(t0)}",
                storage_path=str(storage),
                verbose=1 if progress else 0,
                failure_config=tune.FailureConfig(max_failures=1),
            ),
        )
        return [_outcome(r) for r in tuner.fit()]
