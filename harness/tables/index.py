"""results/index.md: what was read, from where, when, by which command, and what each file holds."""

from __future__ import annotations

from pathlib import Path

from harness import paper
from harness.tables.read import CellRun
from harness.tables.render import HEADER, label, provenance_note
from harness.tables.summarise import Cell, CellId

WHAT = {
    "input_table.md": "MTAT FCN-4 × mel/STFT/MFCC beside the paper",
    "input_table.csv": "same, machine-readable",
    "depth_table.md": "FCN-3..7 × MTAT/MSD (mel) beside the paper and the MSD re-run",
    "depth_table.csv": "same, machine-readable",
    "significance.md": "paired bootstrap tests (inputs; depth d vs d+1)",
    "significance.csv": "same, machine-readable",
    "auc_vs_depth.png": "ROC-AUC vs depth per dataset, with the paper's numbers",
    "per_tag_auc.png": "per-tag ROC-AUC of the best model, sorted",
    "fraction_table.md": "ROC-AUC by depth × training-data fraction (RQ4), what less data costs each depth",
    "fraction_table.csv": "same, machine-readable",
    "auc_by_depth_fraction.png": "ROC-AUC vs training fraction, one line per depth (RQ4)",
    "jamendo_table.md": "MTG-Jamendo FCN-3..7, ROC- and PR-AUC, beside Won et al. 2020's FCN",
    "jamendo_table.csv": "same, machine-readable",
}


def write_index(
    out: Path, made_by: str, runs: list[CellRun], cells: dict[CellId, Cell], files: list[Path], best: str, n_boot: int
) -> Path:
    """`cells`: the paper tables' cells (full training data), to say which are not run yet. Of them, the paper's own
    are harness.paper.PAPER_CELLS (10); the tables' other two (MTAT FCN-6/7) the paper did not run."""
    missing = [k for k, c in cells.items() if not c.done]
    own = [c for k, c in cells.items() if (k.dataset, k.input, k.depth) in paper.PAPER_CELLS]
    extra = [c for k, c in cells.items() if (k.dataset, k.input, k.depth) not in paper.PAPER_CELLS]
    lines = [
        f"<!-- {HEADER} -->",
        "# Results",
        "",
        made_by,
        "Do not edit these files by hand: run the command again.",
        "",
        provenance_note(runs),
        "",
        f"- finished cell runs read: {len(runs)} ({len({r.key for r in runs})} keys)",
        f"- paper cells with results (all of the training split): {sum(c.done for c in own)} of "
        f"{len(paper.PAPER_CELLS)}; cells beyond the paper's: {sum(c.done for c in extra)} of {len(extra)}",
        f"- bootstrap resamples: {n_boot}",
        f"- per-tag figure model: {best}",
        "",
        "| file | what |",
        "|---|---|",
    ]
    lines += [f"| [{p.name}]({p.name}) | {WHAT.get(p.name, '')} |" for p in files]
    lines += ["", "Cells not run yet: " + (", ".join(label(k) for k in missing) if missing else "none") + "."]
    path = out / "index.md"
    path.write_text("\n".join(lines) + "\n")
    return path
