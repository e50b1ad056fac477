"""Every results file of one sweep experiment: read the runs, summarise, render the tables, draw the figures."""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path

from fcn import tracking
from fcn.errors import UserError
from harness import bootstrap
from harness.tables import index, plot
from harness.tables.read import ArtifactCache, CellRun, finished_cell_runs
from harness.tables.render import (
    Made,
    invocation,
    provenance_note,
    write_depth_table,
    write_input_table,
    write_significance,
)
from harness.tables.render_fractions import write_fraction_table
from harness.tables.render_jamendo import jamendo_cells, write_jamendo_table
from harness.tables.summarise import fraction_grids, paper_cells, paper_comparisons, run_comparisons, summarise

WHICH = ("all", "fractions")  # all: the paper's tables, the RQ4 files when there are fraction runs, index.md


def write_tables(
    experiment_name: str,
    tracking_uri: str,
    out_dir: str | Path,
    n_boot: int = bootstrap.DEFAULT_N_BOOT,
    seed: int = bootstrap.DEFAULT_SEED,
    parent_run_id: str | None = None,
    which: str = "all",
    command: str | None = None,
) -> list[Path]:
    """Write the results files for the experiment into out_dir; returns the paths (index.md last when written).

    which="fractions" writes only the RQ4 table and figure (no index.md, so a sweep of fractions can add them
    beside another sweep's files). `command` is what the files say made them (default: this process's command line).
    """
    if which not in WHICH:
        raise UserError(f"which={which!r}: choose from {', '.join(WHICH)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    made = Made(
        command or invocation(),
        dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        experiment_name,
        tracking_uri,
    )
    runs = finished_cell_runs(experiment_name, tracking_uri)
    with tempfile.TemporaryDirectory(prefix="harness-tables-") as tmp:
        cache = ArtifactCache(tracking_uri, Path(tmp))
        files = []
        if which == "all":
            files, cells, best = _paper_files(runs, cache, out, made, n_boot, seed)
        files += _fraction_files(runs, cache, out, made, n_boot, seed, required=which == "fractions")
        if which == "all":
            files.append(index.write_index(out, made.line, runs, cells, files, best, n_boot))
    if parent_run_id:
        c = tracking.client(tracking_uri)
        for p in files:
            c.log_artifact(parent_run_id, str(p), artifact_path="results")
    return files


def _paper_files(
    runs: list[CellRun], cache: ArtifactCache, out: Path, made: Made, n_boot: int, seed: int
) -> tuple[list[Path], dict, str]:
    """The paper's tables and figures from the full-data runs: (files, the paper cells, the per-tag figure's model)."""
    cells = summarise(paper_cells(), runs, cache, n_boot, seed)
    note = provenance_note(runs)
    files = write_input_table(cells, out, note) + write_depth_table(cells, out, note)
    files += write_significance(run_comparisons(paper_comparisons(), cells, cache, n_boot, seed), out, n_boot)
    files.append(plot.plot_auc_vs_depth(cells, out, made.footer))
    per_tag, best = plot.plot_per_tag(cells, cache, out, made.footer)
    files.append(per_tag)
    if any(r.dataset == "jamendo" for r in runs):  # MTG-Jamendo is run by name only: its table when it was
        mine = [r for r in runs if r.dataset == "jamendo"]
        jam_cells = summarise(jamendo_cells(mine), runs, cache, n_boot, seed)
        files += write_jamendo_table(jam_cells, out, provenance_note(mine))
    return files, cells, best


def _fraction_files(
    runs: list[CellRun], cache: ArtifactCache, out: Path, made: Made, n_boot: int, seed: int, required: bool
) -> list[Path]:
    """The RQ4 table and figure when the experiment holds runs on part of the training split (else none)."""
    grids = fraction_grids(runs)
    if not grids:
        if required:
            raise UserError(
                "this experiment holds no finished run on a fraction of the training split: run "
                "`python -m harness.grid --fractions 0.25,0.5,1 ...` first"
            )
        return []
    cells = summarise([k for g in grids for k in g.ids()], runs, cache, n_boot, seed)
    comps = run_comparisons([c for g in grids for c in g.comparisons()], cells, cache, n_boot, seed)
    mine = [r for r in runs if (r.dataset, r.input) in {(g.dataset, g.input) for g in grids}]
    note = provenance_note(mine, beside_paper=False)  # its Δ columns compare our runs, not the paper's numbers
    files = write_fraction_table(grids, cells, comps, runs, out, made.line, note, n_boot)
    return files + [plot.plot_fractions(grids, cells, out, made.footer)]
