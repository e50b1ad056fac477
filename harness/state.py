"""Where each cell stands, from its MLflow run and its run directory — never from a cluster client's word.

submitit can report a job failed although Slurm requeued it, and a requeue from outside sends no signal (FACTS.md):
so a cell is finished iff its run directory holds metrics.json or its MLflow run is FINISHED with a test AUC.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fcn.config import RunConfig
from fcn.cell import finished_metrics, lock_held, run_dir, run_is_finished

STATES = ("pending", "running", "interrupted", "failed", "finished")


@dataclass
class CellState:
    key: str
    state: str
    test_roc_auc: float | None = None
    test_pr_auc: float | None = None
    epochs: int | None = None
    run_id: str | None = None
    log: str = ""
    synced: bool = True  # False: finished on disk, but its MLflow run missed the end (killed, server down)


def runs_by_key(uri: str, experiment: str) -> dict[str, list]:
    """The experiment's cell runs grouped by key (one query for the whole grid)."""
    from fcn import tracking

    c = tracking.client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    out: dict[str, list] = {}
    token = None
    while True:
        page = c.search_runs([exp.experiment_id], filter_string=f"tags.{tracking.CELL_TAG} != ''",
                             max_results=1000, page_token=token)
        for r in page:
            out.setdefault(r.data.tags[tracking.CELL_TAG], []).append(r)
        token = page.token
        if not token:
            return out


def cell_state(config: RunConfig, runs: list) -> CellState:

    rdir = run_dir(config)
    log = str((rdir / "train.log").resolve())
    r = finished_metrics(rdir)
    if r is not None:
        return CellState(config.key, "finished", r["test_roc_auc"], r["test_pr_auc"], r.get("epochs_run"),
                         r.get("run_id"), log, synced=any(run_is_finished(x) for x in runs))
    done = [r for r in runs if run_is_finished(r)]
    if done:
        met = done[0].data.metrics
        return CellState(config.key, "finished", met.get("test_roc_auc"), met.get("test_pr_auc"), None,
                         done[0].info.run_id, log)
    run = runs[-1] if runs else None
    run_id = run.info.run_id if run else None
    if lock_held(rdir):
        return CellState(config.key, "running", run_id=run_id, log=log)
    if run is not None and run.info.status in ("FAILED", "KILLED"):
        return CellState(config.key, "failed", run_id=run_id, log=log)
    if (rdir / "ckpt" / "last.pt").exists() or run is not None:
        return CellState(config.key, "interrupted", run_id=run_id, log=log)
    return CellState(config.key, "pending", log=log)


def _store_missing(uri: str) -> bool:
    """A local SQLite store that does not exist yet: it holds no runs, and opening it would create it."""
    return uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists()


def grid_states(configs: list[RunConfig], uri: str) -> list[CellState]:
    """Every cell's state. Reads only: a missing local store is not created (harness.status, --dry-run)."""
    runs = runs_by_key(uri, configs[0].experiment) if configs and not _store_missing(uri) else {}
    return [cell_state(c, runs.get(c.key, [])) for c in configs]
