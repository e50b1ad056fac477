"""Run the paper's input × depth × dataset grid on a local machine, a Ray cluster or Slurm, tracked in MLflow.

    python -m harness.grid                                    # all 30 cells, demo scale, built-in data, this machine
    python -m harness.grid --cluster slurm --paper --gpus-per-node 4 --partition gpu \\
        --data-root-mtat /data/mtat --data-root-msd /data/msd --tracking-uri http://mlflow.example:5000
    python -m harness.grid --cluster ray --ray-address auto --gpus-per-trial 1
    python -m harness.grid --dry-run --only 'msd-*'           # what would run, and where

--paper keeps the paper's 10 cells and implies --preset paper (the paper's scale) unless a --preset is given.

Rerunning the same command skips finished cells, resumes interrupted ones from their checkpoints and retries failed
ones; a finished cell never gets a second MLflow run. `python -m harness.status` shows where each cell stands.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from fcn.config import DATASETS, RunConfig, add_config_arguments, config_from_args
from fcn import cell
from fcn.errors import UserError, run_cli
from fcn.frontends import INPUTS
from fcn.models import DEPTHS
from harness.cells import GridSpec, expand

AXES = ("dataset", "input", "depth", "seed", "train_fraction", "data_root")
DEFAULT_EXPERIMENT = cell.GRID_EXPERIMENT


def _csv(typ, allowed=None):
    def parse(s: str):
        vals = tuple(typ(v) for v in s.split(",") if v.strip())
        bad = [v for v in vals if allowed is not None and v not in allowed]
        if bad or not vals:
            raise argparse.ArgumentTypeError(
                f"unknown value(s) {', '.join(map(str, bad)) if bad else repr(s)}; "
                f"choose from {', '.join(map(str, allowed))}")
        return vals
    return parse


def add_grid_arguments(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("grid (what to run)")
    g.add_argument("--datasets", type=_csv(str, DATASETS), default=DATASETS, help="comma list (default: mtat,msd)")
    g.add_argument("--inputs", type=_csv(str, INPUTS), default=INPUTS, help="comma list (default: mel,stft,mfcc)")
    g.add_argument("--depths", type=_csv(int, DEPTHS), default=DEPTHS, help="comma list (default: 3,4,5,6,7)")
    g.add_argument("--seeds", type=_csv(int), default=(0,), help="comma list (default: 0)")
    g.add_argument("--fractions", type=_csv(float), default=(1.0,),
                   help="training-data fractions, RQ4 (default: 1.0)")
    g.add_argument("--paper", action="store_true", help="only the paper's cells (MTAT FCN-3/4/5 mel, FCN-4 "
                                                         "STFT/MFCC; MSD FCN-3..7 mel), at the paper's scale: "
                                                         "--paper implies --preset paper unless --preset is given")
    g.add_argument("--only", nargs="+", default=(), metavar="GLOB", help="keep keys matching, e.g. 'mtat-*-fcn4-*'")
    g.add_argument("--exclude", nargs="+", default=(), metavar="GLOB", help="drop keys matching")
    g.add_argument("--data-root-mtat", default="", help="real MTAT root (default: the built-in synthetic set)")
    g.add_argument("--data-root-msd", default="", help="real MSD root (default: the built-in synthetic set)")
    add_config_arguments(ap.add_argument_group("every cell's run config (fcn.train flags)"), skip=AXES)
    ap.set_defaults(experiment=None, preset=None)  # None: chosen by preset_for (--paper or not)


def preset_for(args) -> str:
    """The preset of a grid: the one named, else `paper` with --paper (the paper's cells at the paper's scale; a
    smoke test of them is `--paper --preset grid-demo`), else `grid-demo`."""
    return args.preset or ("paper" if args.paper else "grid-demo")


def grid_from_args(args) -> list[RunConfig]:
    """The cells, with every path absolute and the tracking URI explicit: jobs start in other directories."""
    from fcn import tracking

    args = argparse.Namespace(**{**vars(args), "preset": preset_for(args)})
    base = config_from_args(args, experiment=args.experiment or DEFAULT_EXPERIMENT)
    absolute = {k: str(Path(getattr(base, k)).resolve()) for k in ("out_dir", "data_dir") if getattr(base, k)}
    for k in ("store", "splits_dir", "tags_db", "audio_root", "id_map"):
        if getattr(base, k):
            absolute[k] = str(Path(getattr(base, k)).resolve())
    base = base.replace(**absolute)
    base = base.replace(tracking_uri=tracking.resolve_uri(base.tracking_uri, base.out_dir))
    spec = GridSpec(datasets=args.datasets, inputs=args.inputs, depths=args.depths, seeds=args.seeds,
                    fractions=args.fractions, paper=args.paper, only=tuple(args.only), exclude=tuple(args.exclude))
    cells = expand(spec, base)
    roots = {"mtat": args.data_root_mtat, "msd": args.data_root_msd}
    cells = [c.replace(data_root=str(Path(roots[c.dataset]).resolve())) if roots[c.dataset] else c for c in cells]
    if not cells:
        raise UserError("the grid is empty: check --only / --exclude / --paper")
    return cells


def _find_parent(uri: str, experiment: str):
    """(client, experiment id, the sweep's parent run or None); the experiment id is None if it doesn't exist."""
    from fcn import tracking

    c = tracking.client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return c, None, None
    runs = c.search_runs([exp.experiment_id], filter_string="tags.sweep = 'parent'", max_results=1)
    return c, exp.experiment_id, (runs[0] if runs else None)


def _parent_run(uri: str, cells: list[RunConfig]) -> str:
    """The sweep's parent run: one per experiment, found again on every rerun."""
    from fcn import tracking
    from harness.ui import install_runs_view

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


def _slurm_options(args):
    from harness.backends.slurm import SlurmOptions

    extra = {}
    for kv in args.sbatch:
        if "=" not in kv:
            raise UserError(f"--sbatch takes KEY=VALUE (an sbatch option without dashes), got {kv!r}")
        k, v = kv.split("=", 1)
        extra[k.strip().lstrip("-")] = v
    return SlurmOptions(partition=args.partition, account=args.account, qos=args.qos, time_min=args.time_min,
                        nodes=args.nodes, gpus_per_node=args.gpus_per_node, tasks_per_node=args.tasks_per_node,
                        cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb, extra=extra)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m harness.grid", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cluster", choices=("local", "ray", "slurm"), default="local",
                    help="where cells run (default: local)")
    ap.add_argument("--dry-run", action="store_true", help="print the cells, their state and where they would run")
    ap.add_argument("--results", default="results", help="where tables and figures are written (default: results)")
    ap.add_argument("--no-tables", action="store_true", help="don't write tables at the end")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--configs-from", default="", metavar="DIR",
                    help="each cell with a DIR/<key>.json (python -m harness.search) takes its recipe from it")
    loc = ap.add_argument_group("--cluster local")
    loc.add_argument("--parallel", type=int, default=0, help="cells at once (default: one per core, or per GPU)")
    ray = ap.add_argument_group("--cluster ray")
    ray.add_argument("--ray-address", default="", help="existing Ray cluster ('auto' or host:port); empty = local")
    ray.add_argument("--cpus-per-trial", type=float, default=1.0)
    ray.add_argument("--gpus-per-trial", type=float, default=0.0, help=">1 runs torchrun inside the trial")
    sl = ap.add_argument_group("--cluster slurm (one job per cell, DDP over tasks = GPUs)")
    sl.add_argument("--partition", default="")
    sl.add_argument("--account", default="")
    sl.add_argument("--qos", default="")
    sl.add_argument("--time-min", type=int, default=240, help="time limit per job in minutes (default: 240)")
    sl.add_argument("--nodes", type=int, default=1)
    sl.add_argument("--gpus-per-node", type=int, default=0, help="0: CPU jobs")
    sl.add_argument("--tasks-per-node", type=int, default=0, help="default: one per GPU")
    sl.add_argument("--cpus-per-task", type=int, default=0)
    sl.add_argument("--mem-gb", type=int, default=0)
    sl.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                    help="any other sbatch option, e.g. --sbatch constraint=a100 (repeatable)")
    sl.add_argument("--no-wait", action="store_true", help="submit and return; rerun (or harness.status) later")
    ap.add_argument("--tracking-server", nargs="?", const="", default=None, metavar="HOST[:PORT]",
                    help="run an MLflow server on this machine for the sweep, over <out-dir>/mlflow.db, and log every "
                         "cell to it; for jobs on several nodes (SQLite over a network filesystem is unsafe with "
                         "writers on several nodes). HOST: an address of this machine the nodes reach (default: the "
                         "one on the route to the Slurm controller); stopped when the sweep ends")
    add_grid_arguments(ap)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.tracking_server is not None and not args.dry_run:
        return _with_tracking_server(args)
    return _main(args)


def _with_tracking_server(args) -> int:
    """Start an MLflow server over the sweep's own SQLite store, run the sweep with its URI, stop it."""
    from harness import tracking_server

    if args.tracking_uri:
        raise UserError("--tracking-server starts a server for the sweep; --tracking-uri names one: give only one")
    if args.no_wait:
        raise UserError("--tracking-server with --no-wait: the server stops when the harness does, while the jobs "
                        "still need it; drop --no-wait, or run a server yourself and pass --tracking-uri (README)")
    host, port = tracking_server.parse_address(args.tracking_server)
    out_dir = grid_from_args(args)[0].out_dir
    server = tracking_server.start(out_dir, tracking_server.choose_host(host, args.cluster), port)
    try:
        args.tracking_uri = server.uri  # every cell's config carries it to its job
        return _main(args)
    finally:
        server.stop()
        print(f"tracking server stopped; the runs are in {server.store_uri}", file=sys.stderr)


def _main(args) -> int:
    from fcn import tracking
    from harness.state import grid_states

    cells = grid_from_args(args)
    if args.configs_from:
        from harness.search import apply_recipes

        cells = apply_recipes(cells, args.configs_from)
    uri = cells[0].tracking_uri
    if args.cluster != "slurm" and (args.gpus_per_node or args.partition or args.account):
        raise UserError(f"Slurm options (--gpus-per-node, --partition, --account) need --cluster slurm, "
                        f"not --cluster {args.cluster}")
    if not (args.dry_run and uri.startswith("sqlite:")):  # a dry run writes nothing, not even the store's folder
        tracking.check_reachable(uri)
    states = {s.key: s for s in grid_states(cells, uri)}
    where = {"local": "this machine", "ray": f"Ray ({args.ray_address or 'local'})", "slurm": "Slurm"}[args.cluster]
    if args.dry_run:
        print(f"{len(cells)} cells, experiment {cells[0].experiment!r}, tracking {uri}, would run on {where}:")
        for c in cells:
            s = states[c.key]
            auc = f"  test ROC-AUC {s.test_roc_auc:.4f}" if s.test_roc_auc is not None else ""
            print(f"  {c.key:28s} {s.state:12s}{auc}")
        return 0
    slurm_opts = None
    if args.cluster == "slurm":
        from harness.backends import slurm

        slurm_opts = _slurm_options(args)
        slurm.check(slurm_opts)  # before anything is submitted
        if args.gpus_per_node and cells[0].device == "cpu":
            raise UserError("--gpus-per-node with --device cpu: drop one of them")
    _resync(cells, states)
    todo = [c for c in cells if states[c.key].state != "finished"]
    done = len(cells) - len(todo)
    print(f"grid: {len(cells)} cells ({done} finished, {len(todo)} to run) on {where}; experiment "
          f"{cells[0].experiment!r} in {uri}", file=sys.stderr)
    t0 = time.time()
    outcomes = []
    if todo:
        parent = _parent_run(uri, cells)
        todo = [c.replace(parent_run_id=parent) for c in todo]
        if args.cluster != "slurm" or not todo[0].data_root:
            _prepare_stores(todo, progress=not args.quiet)
        if args.cluster == "local":
            from harness.backends import local

            parallel = args.parallel or local.default_parallel(todo[0].device)
            threads = todo[0].threads or max(1, (os.cpu_count() or 1) // parallel)
            outcomes = local.run([c.replace(threads=threads) for c in todo], parallel=min(parallel, len(todo)),
                                 progress=not args.quiet)
        elif args.cluster == "ray":
            from harness.backends import ray_backend

            threads = todo[0].threads or max(1, int(args.cpus_per_trial))
            outcomes = ray_backend.run([c.replace(threads=threads) for c in todo], address=args.ray_address,
                                       cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                                       storage=str(cell.harness_dir(todo[0].out_dir, todo[0].experiment) / "ray"),
                                       progress=not args.quiet)
        else:
            from harness.backends import slurm

            outcomes = slurm.run(todo, slurm_opts, uri=uri, wait=not args.no_wait, progress=not args.quiet)
            if args.no_wait:
                print("submitted; rerun the same command or `python -m harness.status` to follow", file=sys.stderr)
                return 0
    final = grid_states(cells, uri)
    n_done = sum(s.state == "finished" for s in final)
    failed = [o for o in outcomes if o.get("ok") is False]
    _finish_parent(uri, cells, n_done == len(cells))
    print(f"grid: {n_done}/{len(cells)} cells finished in {time.time() - t0:.0f} s"
          + (f"; {len(failed)} failed (rerun the same command to retry them):" if failed else ""), file=sys.stderr)
    for o in failed:
        print(f"  {o['key']}: {o['error']}", file=sys.stderr)
    if not args.no_tables and n_done:
        _tables(cells, uri, args.results)
    print(f"results: {Path(args.results).resolve()}  |  MLflow UI: python -m harness.ui --tracking-uri '{uri}' "
          f"--experiment {cells[0].experiment}", file=sys.stderr)
    return 1 if failed or n_done < len(cells) else 0


def _resync(cells: list[RunConfig], states: dict) -> None:
    """Finished on disk but not in MLflow (killed between the two, or the server was down): log the end now."""
    from fcn.cell import run_dir
    from fcn.tracking import sync_finished

    for c in cells:
        s = states[c.key]
        if s.state == "finished" and not s.synced:
            rdir = run_dir(c)
            sync_finished(json.loads((rdir / "metrics.json").read_text()), rdir, c)


def _prepare_stores(cells: list[RunConfig], progress: bool) -> None:
    """Build each distinct feature store once, here, before cells start (they would otherwise queue on its lock)."""
    from fcn.run_store import ensure_store, store_path

    seen = set()
    for c in cells:
        p = store_path(c)
        if p not in seen:
            seen.add(p)
            ensure_store(c, progress=progress)


def _finish_parent(uri: str, cells: list[RunConfig], all_done: bool) -> None:
    c, _, parent = _find_parent(uri, cells[0].experiment)
    if parent is not None:
        c.set_terminated(parent.info.run_id, "FINISHED" if all_done else "FAILED")


def _tables(cells: list[RunConfig], uri: str, results: str) -> None:
    try:
        from harness.tables import write_tables
    except ImportError:
        return
    try:
        parent = _find_parent(uri, cells[0].experiment)[2]
        paths = write_tables(cells[0].experiment, uri, results, parent_run_id=parent.info.run_id if parent else None)
        print(f"tables: {len(paths)} files in {results}", file=sys.stderr)
    except Exception as e:  # noqa: BLE001 - the runs are safe in MLflow; tables can be redone with harness.tables
        print(f"warning: writing tables failed ({e}); rerun `python -m harness.tables`", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
