"""results/ tables and figures from the MLflow runs of one sweep experiment, beside the paper's numbers.

    python -m harness.tables --experiment fcn-paper                  # store: $MLFLOW_TRACKING_URI or runs/mlflow.db
    python -m harness.tables --tracking-uri http://127.0.0.1:5000 --experiment fcn-paper --out results
    python -m harness.tables --experiment fcn-paper --parent-run-id <sweep run id>   # also log the files there
    python -m harness.tables --runs-dir runs/rq4 --experiment fcn-rq4 --tables fractions   # only the RQ4 files

Reads only finished cell runs (tag `cell_key`, status FINISHED, metric `test_roc_auc`: DESIGN.md). A cell is
(dataset, input, depth, training fraction): seeds pool only within one, and the paper's tables use the runs on all of
the training split. Writes:
  input_table.md/.csv   MTAT FCN-4 × mel/stft/mfcc            (paper RQ1/RQ3)
  depth_table.md/.csv   FCN-3..7 × MTAT/MSD with mel input    (paper RQ2/RQ4; MSD also beside the author's re-run)
  significance.md/.csv  paired bootstrap tests on the same test clips (inputs on MTAT FCN-4; depth d vs d+1)
  auc_vs_depth.png, per_tag_auc.png, index.md (what was read, from where, when, by which command)
  fraction_table.md/.csv, auc_by_depth_fraction.png   when the experiment holds runs on a fraction of the training
                        split (`harness.grid --fractions`): ROC-AUC by depth × training-data fraction (RQ4)
  jamendo_table.md/.csv when the experiment holds MTG-Jamendo runs: ROC-AUC and PR-AUC beside Won et al. 2020's FCN
Intervals: mean ± 95 % t-interval over seeds when a cell has several seeds, else a 95 % bootstrap interval over test
clips from the run's `test_predictions.npz`. Cells not run yet show "—" (empty in CSV, status `missing`), never 0.
results/ is generated: every file says so in its first line; do not edit it by hand.
"""

from __future__ import annotations

import argparse

from fcn import tracking
from fcn.cell import OUT_DIR, quiet_mlflow
from fcn.errors import UserError, run_cli
from harness import bootstrap
from harness.tables.build import WHICH, write_tables
from harness.tables.render import GENERATOR
from harness.ui import resolve_tracking_uri


def _default_experiment(tracking_uri: str) -> str:
    """The store's only experiment besides 'Default'; otherwise ask for --experiment."""
    names = [e.name for e in tracking.client(tracking_uri).search_experiments() if e.name != "Default"]
    if len(names) == 1:
        return names[0]
    raise UserError(
        f"pass --experiment (experiments in {tracking.redact(tracking_uri)}: {', '.join(sorted(names)) or 'none'})"
    )


def main(argv: list[str] | None = None) -> int:
    parts = __doc__.split("\n\n", 2)
    ap = argparse.ArgumentParser(
        prog=GENERATOR,
        description=parts[0] + "\n\n" + parts[1],
        epilog=parts[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, else <runs-dir>/mlflow.db)")
    ap.add_argument(
        "--runs-dir", default=OUT_DIR, help=f"the sweep's out dir, for the default store (default: {OUT_DIR})"
    )
    ap.add_argument("--experiment", help="experiment name (default: the store's only non-Default experiment)")
    ap.add_argument("--out", default="results", help="output folder (default: results)")
    ap.add_argument(
        "--tables",
        choices=WHICH,
        default="all",
        help="all (default): every file, the RQ4 ones when there are fraction runs; fractions: only "
        "fraction_table.md/.csv and auc_by_depth_fraction.png (no index.md)",
    )
    ap.add_argument("--n-boot", type=int, default=bootstrap.DEFAULT_N_BOOT, help="bootstrap resamples (default 1000)")
    ap.add_argument("--seed", type=int, default=bootstrap.DEFAULT_SEED, help="bootstrap seed (default 0)")
    ap.add_argument("--parent-run-id", help="also log the files as artifacts (under results/) of this run")
    args = ap.parse_args(argv)

    quiet_mlflow()
    uri = resolve_tracking_uri(args.tracking_uri, args.runs_dir)
    experiment = args.experiment or _default_experiment(uri)
    for p in write_tables(
        experiment,
        uri,
        args.out,
        n_boot=args.n_boot,
        seed=args.seed,
        parent_run_id=args.parent_run_id,
        which=args.tables,
    ):
        print(p)
    return 0


if __name__ == "__main__":
    run_cli(main)  # one line for any failure (fcn/errors.py)
