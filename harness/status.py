"""Where each cell of a grid stands: pending / running / interrupted / failed / finished, its AUC and its log.

    python -m harness.status                      # the default demo grid
    python -m harness.status --paper --experiment paper-mtat --tracking-uri http://mlflow:5000

Takes the same grid flags as `python -m harness.grid`, reads MLflow and the run directories, and changes nothing.
harness.grid and the Slurm back end ask `grid_states` too: a cell's state comes from its MLflow run and its run
directory, never from a cluster client's word (submitit can report a job failed although Slurm requeued it, and a
requeue from outside sends no signal: docs/MEASURED.md). Finished is fcn/cell.py's one rule.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass

from fcn import cell, tracking
from fcn.cell import CELL_TAG, finished_metrics, is_finished, lock_held, run_dir, run_is_finished
from fcn.config import RunConfig
from fcn.errors import run_cli
from harness.cells import add_grid_arguments, grid_from_args


@dataclass
class CellState:
    key: str
    state: str  # pending, running, interrupted, failed or finished
    test_roc_auc: float | None = None
    test_pr_auc: float | None = None
    epochs: int | None = None
    run_id: str | None = None
    log: str = ""
    synced: bool = True  # False: finished on disk, but its MLflow run missed the end (killed, server down)
    run_dir: str = ""


def runs_by_key(uri: str, experiment: str) -> dict[str, list]:
    """The experiment's cell runs grouped by key (one query for the whole grid)."""
    c = tracking.client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    out: dict[str, list] = {}
    token = None
    while True:
        page = c.search_runs(
            [exp.experiment_id], filter_string=f"tags.{CELL_TAG} != ''", max_results=1000, page_token=token
        )
        for r in page:
            out.setdefault(r.data.tags[CELL_TAG], []).append(r)
        token = page.token
        if not token:
            return out


def cell_state(config: RunConfig, runs: list) -> CellState:
    rdir = run_dir(config)
    at = dict(log=str((rdir / cell.LOG).resolve()), run_dir=str(rdir))
    done = [r for r in runs if run_is_finished(r)]
    if is_finished(rdir, runs):  # fcn/cell.py's one rule; the result from the run dir if it holds it, else MLflow
        r = finished_metrics(rdir)
        if r is not None:
            return CellState(
                config.key,
                "finished",
                r["test_roc_auc"],
                r["test_pr_auc"],
                r.get("epochs_run"),
                r.get("run_id"),
                synced=bool(done),
                **at,
            )
        met = done[0].data.metrics
        return CellState(
            config.key, "finished", met.get("test_roc_auc"), met.get("test_pr_auc"), None, done[0].info.run_id, **at
        )
    run = runs[-1] if runs else None
    run_id = run.info.run_id if run else None
    if lock_held(rdir):
        return CellState(config.key, "running", run_id=run_id, **at)
    if run is not None and run.info.status in ("FAILED", "KILLED"):
        return CellState(config.key, "failed", run_id=run_id, **at)
    if cell.ckpt(rdir, cell.LAST).exists() or run is not None:
        return CellState(config.key, "interrupted", run_id=run_id, **at)
    return CellState(config.key, "pending", **at)


def _store_missing(uri: str) -> bool:
    """A local SQLite store that does not exist yet: it holds no runs, and opening it would create it."""
    db = cell.sqlite_db(uri)
    return db is not None and not db.exists()


def grid_states(configs: list[RunConfig], uri: str) -> list[CellState]:
    """Every cell's state. Reads only: a missing local store is not created (harness.status, --dry-run)."""
    runs = runs_by_key(uri, configs[0].experiment) if configs and not _store_missing(uri) else {}
    return [cell_state(c, runs.get(c.key, [])) for c in configs]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m harness.status", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_grid_arguments(ap)
    args = ap.parse_args(argv)
    cells = grid_from_args(args)
    uri = cells[0].tracking_uri
    if not uri.startswith("sqlite:"):  # a local store is only read (check_reachable would create its folder)
        tracking.check_reachable(uri)
    states = grid_states(cells, uri)
    print(f"experiment {cells[0].experiment!r} in {uri}")
    print(f"{'cell':30s} {'state':12s} {'ROC-AUC':>8s} {'PR-AUC':>8s}  log")
    for s in states:
        roc = f"{s.test_roc_auc:.4f}" if s.test_roc_auc is not None else "—"
        pr = f"{s.test_pr_auc:.4f}" if s.test_pr_auc is not None else "—"
        print(f"{s.key:30s} {s.state:12s} {roc:>8s} {pr:>8s}  {s.log}")
    counts = Counter(s.state for s in states)
    print(", ".join(f"{n} {st}" for st, n in sorted(counts.items())), file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
