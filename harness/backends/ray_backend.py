"""Run cells as Ray Tune trials (a grid_search over the cells), on a local Ray or an existing cluster's address.

A cell with more than one GPU runs torchrun inside its trial, so DDP inside a trial is the same code path as anywhere.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from fcn.config import RunConfig


def _trial(space: dict) -> None:
    """A Ray Tune trial: train one cell and report its metrics."""
    from ray import tune

    config = RunConfig.from_dict(space["config"])
    gpus = int(space.get("gpus", 0))
    if gpus > 1:
        with tempfile.NamedTemporaryFile("w", prefix=f"fcn-{config.key}-", suffix=".json", delete=False) as f:
            json.dump(config.to_dict(), f)
        try:
            out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                  f"--nproc_per_node={gpus}", "-m", "fcn.train", "--config", f.name],
                                 check=True, capture_output=True, text=True)
        finally:
            os.unlink(f.name)  # one per multi-GPU cell: they would pile up in the node's /tmp
        result = json.loads(out.stdout.strip().splitlines()[-1])
    else:
        from fcn.train import train

        result = train(config)
    tune.report({k: v for k, v in result.items() if isinstance(v, (int, float))})


def run(configs: list[RunConfig], *, address: str = "", cpus_per_trial: float = 1, gpus_per_trial: float = 0,
        storage: str, progress: bool = True) -> list[dict]:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local cluster (FACTS.md)
    import ray
    from ray import tune

    t0 = time.time()
    started = not ray.is_initialized()
    if started:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    trainable = tune.with_resources(_trial, {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
    space = {"config": tune.grid_search([c.to_dict() for c in configs]), "gpus": gpus_per_trial}
    tuner = tune.Tuner(
        trainable, param_space=space,
        # reuse_actors: one actor process trains trial after trial, so torch, torch._dynamo and MLflow are imported
        # once per actor, not once per cell (FACTS.md: 0.9 s → 0.08 s of overhead per trivial trial; a cell's
        # imports cost seconds more). Every cell asks for the same resources, which reuse requires.
        tune_config=tune.TuneConfig(trial_name_creator=lambda t: RunConfig.from_dict(t.config["config"]).key,
                                    trial_dirname_creator=lambda t: RunConfig.from_dict(t.config["config"]).key,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=f"grid-{int(t0)}", storage_path=storage, verbose=1 if progress else 0,
                                  failure_config=tune.FailureConfig(max_failures=1)),
    )
    outcomes = []
    try:
        for r in tuner.fit():
            key = RunConfig.from_dict(r.config["config"]).key
            if r.error:
                outcomes.append({"key": key, "ok": False, "error": str(r.error).splitlines()[0]})
            else:
                outcomes.append({"key": key, "ok": True, "result": dict(r.metrics)})
    finally:
        if started:
            ray.shutdown()  # the Ray this grid started ends with it (no processes left behind)
    return outcomes
