"""Where each cell of a grid stands: pending / running / interrupted / failed / finished, its AUC and its log.

    python -m harness.status                      # the default demo grid
    python -m harness.status --paper --experiment paper-mtat --tracking-uri http://mlflow:5000

Takes the same grid flags as `python -m harness.grid`, reads MLflow and the run directories, and changes nothing.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter

from fcn.errors import run_cli


def main(argv=None) -> None:
    from fcn import tracking
    from harness.grid import add_grid_arguments, grid_from_args
    from harness.state import grid_states

    ap = argparse.ArgumentParser(prog="python -m harness.status", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
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
