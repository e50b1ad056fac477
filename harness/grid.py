"""Run the paper's input × depth × dataset grid on a local machine, a Ray cluster or Slurm, tracked in MLflow.

    python -m harness.grid                                    # all 30 cells, demo scale, built-in data, this machine
    python -m harness.grid --cluster slurm --paper --gpus-per-node 4 --partition gpu \\
        --data-root-mtat /data/mtat --data-root-msd /data/msd --tracking-uri http://mlflow.example:5000
    python -m harness.grid --cluster ray --ray-address auto --gpus-per-trial 1
    python -m harness.grid --dry-run --only 'msd-*'           # what would run, and where
    python -m harness.grid --cluster slurm --paper --gpus-per-node 4 --mem-gb 128 --plan   # what each job needs

--paper keeps the paper's 10 cells and implies --preset paper (the paper's scale) unless a --preset is given.

Rerunning the same command skips finished cells, resumes interrupted ones from their checkpoints and retries failed
ones; a finished cell never gets a second MLflow run. `python -m harness.status` shows where each cell stands.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from fcn import flags, tracking
from fcn.cell import finished_metrics, run_dir, sqlite_db
from fcn.config import RunConfig
from fcn.errors import UserError, run_cli
from fcn.preprocess import ensure_feature_stores
from fcn.tracker import sync_finished
from harness import backends, tracking_server
from harness.cells import add_grid_arguments, grid_from_args
from harness.plan import print_plan
from harness.search import apply_recipes
from harness.status import grid_states
from harness.tables import write_tables
from harness.ui import install_runs_view


def _find_parent(uri: str, experiment: str):
    """(client, experiment id, the sweep's parent run or None); the experiment id is None if it doesn't exist."""
    c = tracking.client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return c, None, None
    runs = c.search_runs([exp.experiment_id], filter_string="tags.sweep = 'parent'", max_results=1)
    return c, exp.experiment_id, (runs[0] if runs else None)


def _parent_run(uri: str, cells: list[RunConfig]) -> str:
    """The sweep's parent run: one per experiment, found again on every rerun."""
    c, exp_id, parent = _find_parent(uri, cells[0].experiment)
    if parent is not None:
        c.update_run(parent.info.run_id, status="RUNNING")
        return parent.info.run_id
    if exp_id is None:
        exp_id = tracking.experiment_id(c, cells[0].experiment, tracking.artifact_root(uri, cells[0].out_dir))
    install_runs_view(c, exp_id)  # the UI's runs table then shows dataset/input/depth/seed and the AUCs
    run = c.create_run(exp_id, run_name=f"sweep-{cells[0].experiment}", tags={"sweep": "parent"})
    c.log_param(run.info.run_id, "cells", ",".join(x.key for x in cells)[:6000])
    return run.info.run_id


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m harness.grid", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--cluster", choices=backends.BACKENDS, default="local", help="where cells run (default: local)")
    ap.add_argument("--dry-run", action="store_true", help="print the cells, their state and where they would run")
    ap.add_argument(
        "--plan",
        action="store_true",
        help="--cluster slurm: print what each cell's job needs (store, memory per node, global and per-process "
        "batch, epoch time, time limit and requeues) and refuse what cannot work; submits nothing, needs no cluster",
    )
    ap.add_argument(
        "--clips-per-s",
        type=float,
        default=0.0,
        metavar="N",
        help="with --plan: FCN-4 mel training clips/s of one GPU as measured there (python -m bench --gpu-smoke); "
        "without it epoch times are 'not measured on this GPU'",
    )
    ap.add_argument("--results", default="results", help="where tables and figures are written (default: results)")
    ap.add_argument("--no-tables", action="store_true", help="don't write tables at the end")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument(
        "--configs-from",
        default="",
        metavar="DIR",
        help="each cell with a DIR/<key>.json (python -m harness.search) takes its recipe from it",
    )
    titles = {
        "local": "--cluster local",
        "ray": "--cluster ray",
        "slurm": "--cluster slurm (one job per cell, DDP over tasks = GPUs)",
    }
    for name in backends.BACKENDS:
        flags.add_arguments(ap.add_argument_group(titles[name]), backends.options_class(name))
    ap.add_argument(
        "--tracking-server",
        nargs="?",
        const="",
        default=None,
        metavar="HOST[:PORT]",
        help="run an MLflow server on this machine for the sweep, over <out-dir>/mlflow.db, and log every "
        "cell to it; for jobs on several nodes (SQLite over a network filesystem is unsafe with "
        "writers on several nodes). HOST: an address of this machine the nodes reach (default: the "
        "one on the route to the Slurm controller); stopped when the sweep ends",
    )
    add_grid_arguments(ap)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.tracking_server is None and not args.dry_run and _sqlite_over_nodes(args):
        args.tracking_server = ""  # the sweep gets its server, as --tracking-server does (what it says is below)
    if args.tracking_server is not None and not args.dry_run:
        return _with_tracking_server(args)
    return _main(args)


def _sqlite_over_nodes(args) -> bool:
    """A Slurm sweep logging to the default SQLite store whose jobs may land on several nodes: their cells would
    write one SQLite file over the shared filesystem (runs lost; each job on a second host would stop, see
    fcn/mlflow_db.py check_one_host), so the sweep gets a tracking server on this host, or, with --no-wait (the
    server would stop while jobs still need it), one line saying what to do."""
    if args.cluster != "slurm" or args.tracking_uri:
        return False
    if sqlite_db(tracking.resolve_uri("", grid_from_args(args)[0].out_dir)) is None:
        return False  # MLFLOW_TRACKING_URI names a server
    n = tracking_server.partition_nodes(args.partition)
    if n <= 1:
        return False
    if not args.wait:
        raise UserError(
            f"the jobs may run on {n} nodes of partition {args.partition or '(default)'} and would write one SQLite "
            f"MLflow store over the shared filesystem, which loses runs: run a tracking server and pass "
            f"--tracking-uri (README, 'Tracking on a cluster'), or drop --no-wait for one run by the sweep"
        )
    print(
        f"the jobs may run on {n} nodes: their runs go to a tracking server on this host for the sweep's length "
        f"(as --tracking-server), not straight into the SQLite file over the shared filesystem",
        file=sys.stderr,
    )
    return True


def _with_tracking_server(args) -> int:
    """Start an MLflow server over the sweep's own SQLite store, run the sweep with its URI, stop it."""
    if args.tracking_uri:
        raise UserError("--tracking-server starts a server for the sweep; --tracking-uri names one: give only one")
    if not args.wait:
        raise UserError(
            "--tracking-server with --no-wait: the server stops when the harness does, while the jobs "
            "still need it; drop --no-wait, or run a server yourself and pass --tracking-uri (README)"
        )
    host, port = tracking_server.parse_address(args.tracking_server)
    out_dir = grid_from_args(args)[0].out_dir
    server = tracking_server.start(out_dir, tracking_server.choose_host(host, args.cluster), port)
    try:
        args.tracking_uri = server.uri  # every cell's config carries it to its job
        return _main(args)
    finally:
        server.stop()
        print(f"tracking server stopped; the runs are in {server.store_uri}", file=sys.stderr)


def _backend(args):
    """The chosen back end's module and options; flags of a back end that was not chosen are an error."""
    for name in backends.BACKENDS:
        other = flags.changed_flags(backends.options_class(name), args) if name != args.cluster else []
        if other:
            raise UserError(
                f"{', '.join(other)} need --cluster {name} (they say where cells run on it), not "
                f"--cluster {args.cluster}"
            )
    return backends.module(args.cluster), flags.from_args(backends.options_class(args.cluster), args)


def _main(args) -> int:
    """Expand the grid, pick the back end, run what is not finished, write the tables."""
    cells = grid_from_args(args)
    if args.configs_from:
        cells = apply_recipes(cells, args.configs_from)
    backend, opts = _backend(args)
    if args.plan or args.clips_per_s:
        if args.cluster != "slurm" or not args.plan:
            raise UserError("--plan (and --clips-per-s with it) plans Slurm jobs: use them with --cluster slurm")
        return print_plan(cells, opts, args.clips_per_s)  # before MLflow and sinfo: a plan needs neither
    uri = cells[0].tracking_uri
    if not (args.dry_run and uri.startswith("sqlite:")):  # a dry run writes nothing, not even the store's folder
        tracking.check_reachable(uri)
    states = {s.key: s for s in grid_states(cells, uri)}
    if args.dry_run:
        return _dry_run(cells, states, backend.where(opts))
    backend.check(opts, cells)  # before anything is submitted
    _resync(cells, states)
    todo = [c for c in cells if states[c.key].state != "finished"]
    print(
        f"grid: {len(cells)} cells ({len(cells) - len(todo)} finished, {len(todo)} to run) on "
        f"{backend.where(opts)}; experiment {cells[0].experiment!r} in {uri}",
        file=sys.stderr,
    )
    t0 = time.time()
    outcomes = []
    if todo:
        parent = _parent_run(uri, cells)
        todo = [c.replace(parent_run_id=parent) for c in todo]
        # stores built here: every store of a local or Ray sweep, and the built-in synthetic data's (seconds); on
        # Slurm a missing store of real data is built by a CPU job the cells wait for (harness/backends/slurm.py)
        here = [c for c in todo if args.cluster != "slurm" or not c.data_root]
        if here:
            ensure_feature_stores(here, progress=not args.quiet)
        outcomes = backend.run(todo, opts, progress=not args.quiet)
        if any(o.state == "submitted" for o in outcomes):
            print("submitted; rerun the same command or `python -m harness.status` to follow", file=sys.stderr)
            return 0
    return _report(args, cells, outcomes, time.time() - t0)


def _dry_run(cells: list[RunConfig], states: dict, where: str) -> int:
    print(
        f"{len(cells)} cells, experiment {cells[0].experiment!r}, tracking {cells[0].tracking_uri}, would run on "
        f"{where}:"
    )
    for c in cells:
        s = states[c.key]
        auc = f"  test ROC-AUC {s.test_roc_auc:.4f}" if s.test_roc_auc is not None else ""
        print(f"  {c.key:28s} {s.state:12s}{auc}")
    return 0


def _report(args, cells: list[RunConfig], outcomes: list, took_s: float) -> int:
    """The sweep's end: the parent run closed, what failed, the tables; exit 1 unless every cell is finished."""
    uri = cells[0].tracking_uri
    n_done = sum(s.state == "finished" for s in grid_states(cells, uri))
    failed = [o for o in outcomes if o.state == "failed"]
    _finish_parent(uri, cells, n_done == len(cells))
    print(
        f"grid: {n_done}/{len(cells)} cells finished in {took_s:.0f} s"
        + (f"; {len(failed)} failed (rerun the same command to retry them):" if failed else ""),
        file=sys.stderr,
    )
    for o in failed:
        print(f"  {o.key}: {o.error}", file=sys.stderr)
    if not args.no_tables and n_done:
        _tables(cells, uri, args.results)
    print(
        f"results: {Path(args.results).resolve()}  |  MLflow UI: python -m harness.ui --tracking-uri '{uri}' "
        f"--experiment {cells[0].experiment}",
        file=sys.stderr,
    )
    return 1 if failed or n_done < len(cells) else 0


def _resync(cells: list[RunConfig], states: dict) -> None:
    """Finished on disk but not in MLflow (killed between the two, or the server was down): log the end now."""
    for c in cells:
        s = states[c.key]
        if s.state == "finished" and not s.synced:
            rdir = run_dir(c)
            sync_finished(finished_metrics(rdir), rdir, c)


def _finish_parent(uri: str, cells: list[RunConfig], all_done: bool) -> None:
    c, _, parent = _find_parent(uri, cells[0].experiment)
    if parent is not None:
        c.set_terminated(parent.info.run_id, "FINISHED" if all_done else "FAILED")


def _tables(cells: list[RunConfig], uri: str, results: str) -> None:
    try:
        parent = _find_parent(uri, cells[0].experiment)[2]
        paths = write_tables(cells[0].experiment, uri, results, parent_run_id=parent.info.run_id if parent else None)
        print(f"tables: {len(paths)} files in {results}", file=sys.stderr)
    except Exception as e:  # noqa: BLE001 - the runs are safe in MLflow; tables can be redone with harness.tables
        print(f"warning: writing tables failed ({e}); rerun `python -m harness.tables`", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
