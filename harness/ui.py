"""Open the MLflow UI on the sweep's tracking store.

    python -m harness.ui                         # store of the default out dir: sqlite:///<abs runs>/mlflow.db
    python -m harness.ui --out-dir /scratch/runs --experiment fcn-paper
    python -m harness.ui --tracking-uri sqlite:////data/mlflow.db --port 5001

The store is found as DESIGN.md's "Tracking URI" says: --tracking-uri, else $MLFLOW_TRACKING_URI, else
sqlite:///<abs out dir>/mlflow.db (out dir default `runs`). The server binds 127.0.0.1 unless --host says otherwise,
so the UI is not exposed beyond this machine by accident; reach it from elsewhere through an SSH tunnel
(`ssh -L 5000:127.0.0.1:5000 host`).

With --experiment, the command also stores a saved runs-table view on that experiment (an experiment tag that the
MLflow UI's "shared view" feature reads) and prints the URL that opens it: the runs table then shows dataset, input,
depth, seed, test ROC-AUC and PR-AUC, best first. MLflow 3.17's runs table otherwise shows no metric columns.

If the tracking URI is already an http(s) server, that server serves the UI: the command only prints the URL.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from fcn import cell
from fcn.errors import run_cli
from fcn.tracking import resolve_uri

# Experiment tag prefix that the MLflow 3.17 UI reads for `#/experiments/<id>/runs?viewStateShareKey=<key>`.
SHARED_VIEW_TAG_PREFIX = "mlflow.sharedViewState."
RUNS_VIEW_KEY = "fcn-sweep"
RUNS_VIEW_COLUMNS = [
    "params.`dataset`",
    "params.`input`",
    "params.`depth`",
    "params.`seed`",
    "metrics.`test_roc_auc`",
    "metrics.`test_pr_auc`",
    "metrics.`best_epoch`",
    "metrics.`train_time_s`",
]


def resolve_tracking_uri(tracking_uri: str | None = None, out_dir: str | os.PathLike | None = None) -> str:
    """Explicit URI, else $MLFLOW_TRACKING_URI, else sqlite:///<abs out_dir>/mlflow.db: fcn.tracking's one rule."""
    return resolve_uri(tracking_uri or "", str(out_dir or cell.OUT_DIR))


def runs_view_state() -> dict:
    """The saved view: our columns, best test ROC-AUC first."""
    return {"selectedColumns": RUNS_VIEW_COLUMNS, "orderByKey": "metrics.`test_roc_auc`", "orderByAsc": False}


def install_runs_view(client, experiment_id: str, key: str = RUNS_VIEW_KEY) -> str:
    """Store the runs-table view on the experiment (idempotent); returns the URL fragment that opens it."""
    client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG_PREFIX + key, json.dumps(runs_view_state()))
    return runs_fragment(experiment_id, key)


def runs_fragment(experiment_id: str | None, view_key: str | None = RUNS_VIEW_KEY) -> str:
    """`#/experiments/<id>/runs[?viewStateShareKey=...]`, or the experiment list without an id."""
    if experiment_id is None:
        return "#/experiments"
    frag = f"#/experiments/{experiment_id}/runs"
    return f"{frag}?viewStateShareKey={view_key}" if view_key else frag


def server_command(store_uri: str, host: str, port: int) -> list[str]:
    """`mlflow server` on the store, one worker (the UI needs no more; 4 workers take ~2.4 GB: docs/MEASURED.md)."""
    exe = Path(sys.executable).parent / "mlflow"
    mlflow_bin = str(exe) if exe.exists() else (shutil.which("mlflow") or "mlflow")
    cmd = [
        mlflow_bin,
        "server",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        store_uri,
    ]
    db = cell.sqlite_db(store_uri)
    if db is not None:
        # Experiments made by the sweep carry their own artifact location; this only serves ones made in the UI.
        cmd += ["--artifacts-destination", str(db.parent / cell.ARTIFACTS_DIR)]
    return cmd


def _experiment_id(store_uri: str, name: str, write_view: bool) -> str | None:
    from mlflow import MlflowClient  # heavy: only when an experiment is named

    client = MlflowClient(tracking_uri=store_uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        print(f"experiment {name!r} not found in {store_uri}; opening the experiment list", file=sys.stderr)
        return None
    if write_view:
        install_runs_view(client, exp.experiment_id)
    return exp.experiment_id


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m harness.ui",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="It runs one `mlflow server` (1 worker) in the foreground: Ctrl-C stops it.",
    )
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--tracking-uri", help="tracking store URI (sqlite:///..., a directory, or http://... server)")
    src.add_argument("--out-dir", default=None, help=f"the sweep's out dir holding mlflow.db (default: {cell.OUT_DIR})")
    ap.add_argument("--experiment", help="experiment name: print a link straight to its runs table")
    ap.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    ap.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to bind (default 127.0.0.1: this machine only; use an SSH tunnel from elsewhere)",
    )
    ap.add_argument(
        "--no-view",
        action="store_true",
        help="do not write the saved runs-table view (an experiment tag) into the store",
    )
    ap.add_argument("--dry-run", action="store_true", help="print the URL and the server command, start nothing")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cell.quiet_mlflow()
    store = resolve_tracking_uri(args.tracking_uri, args.out_dir)

    if store.startswith(("http://", "https://")):
        exp_id = _experiment_id(store, args.experiment, not args.no_view) if args.experiment else None
        print(
            f"{store} is a tracking server and serves the UI itself: open\n  {store.rstrip('/')}/"
            f"{runs_fragment(exp_id)}"
        )
        return 0

    db = cell.sqlite_db(store)
    if db is not None and not db.exists():
        print(f"no tracking store at {db}: run the sweep first, or pass --out-dir / --tracking-uri", file=sys.stderr)
        return 2

    exp_id = _experiment_id(store, args.experiment, not args.no_view) if args.experiment else None
    shown_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    url = f"http://{shown_host}:{args.port}/{runs_fragment(exp_id) if exp_id else ''}"
    cmd = server_command(store, args.host, args.port)
    print(f"MLflow UI for {store}\n  open: {url}\n  (Ctrl-C to stop)", flush=True)
    if args.dry_run:
        print(" ".join(cmd))
        return 0
    env = dict(os.environ)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # no GenAI job workers: ~0.5 GB instead of ~2.4
    os.execve(cmd[0], cmd, env)  # replaces this process: signals go straight to the server
    return 0  # not reached


if __name__ == "__main__":
    run_cli(main)  # one line for any failure (fcn/errors.py)
