"""The MTG-Jamendo table: this project's FCNs on MTG-Jamendo split-0 beside Won et al. 2020's published FCN.

Not a table of the paper (it never used MTG-Jamendo), so its reference is another paper's ([C], harness/paper.py
WON_JAMENDO): Won et al.'s FCN is a smaller network at 16 kHz, so Δ says how far ours is from the field's number for
"an FCN on this split", not whether a result reproduces. PR-AUC stands beside ROC-AUC in every row, with its own Δ: on
MTG-Jamendo's sparse top-50 labels it separates models more (Won et al.: ROC-AUC .798-.832, PR-AUC .236-.298 over
nine models). Written only when the experiment holds MTG-Jamendo runs (the grid asks for it by name).
"""

from __future__ import annotations

from pathlib import Path

from harness import paper
from harness.tables.render import (
    INPUT_NAMES,
    INTERVAL_NOTE,
    MISSING,
    SYNTHETIC_DIFF,
    csv_num,
    fmt,
    interval_columns,
    synthetic,
    write_csv,
    write_md,
)
from harness.tables.summarise import FULL, Cell, CellId

MD = "jamendo_table.md"
CSV = "jamendo_table.csv"
TITLE = "MTG-Jamendo top-50, split-0, beside Won et al. 2020"


def jamendo_cells(runs) -> list[CellId]:
    """FCN-3..7 on mel (shown as missing until run), then any other MTG-Jamendo cell the experiment holds."""
    ids = [CellId(*k) for k in paper.JAMENDO_DEPTH_CELLS]
    ids += sorted({CellId(r.dataset, r.input, r.depth) for r in runs if r.dataset == "jamendo"} - set(ids))
    return ids


def _diff(cell: Cell, ours, ref: float) -> float | None:
    return None if ours is None or synthetic(cell) else ours.estimate - ref


def _md_diff(cell: Cell, ours, ref: float) -> str:
    if ours is not None and synthetic(cell):
        return SYNTHETIC_DIFF
    return fmt(_diff(cell, ours, ref), digits=4, sign=True)


def _reference_rows(model_col: str) -> tuple[list[dict], list[dict]]:
    csv_rows, md_rows = [], []
    for ref in (paper.WON_JAMENDO, paper.WON_JAMENDO_BEST):
        csv_rows.append(
            {
                "dataset": "jamendo",
                "input": "mel",
                "model": f"{ref.model} ({ref.source}) {ref.mark}",
                "status": "published",
                "roc_auc": csv_num(ref.roc_auc),
                "pr_auc": csv_num(ref.pr_auc),
            }
        )
        md_rows.append(
            {
                model_col: f"**{ref.model}, {ref.source} {ref.mark}**",
                "ROC-AUC (95 % CI)": f"{ref.roc_auc:.4f}",
                "PR-AUC (95 % CI)": f"{ref.pr_auc:.4f}",
                "Δ ROC vs Won FCN": MISSING,
                "Δ PR vs Won FCN": MISSING,
                "seeds": MISSING,
                "interval": "published",
            }
        )
    return csv_rows, md_rows


def write_jamendo_table(cells: dict[CellId, Cell], out: Path, provenance: str = "") -> list[Path]:
    """jamendo_table.md / .csv: the reference rows first, then ours (`cells`: jamendo_cells' ids)."""
    won = paper.WON_JAMENDO
    model_col = "model"
    csv_rows, md_rows = _reference_rows(model_col)
    keys = [k for k in cells if k.dataset == "jamendo" and k.fraction == FULL]
    for k in keys:
        cell = cells[k]
        csv_rows.append(
            {
                "dataset": k.dataset,
                "input": k.input,
                "model": f"FCN-{k.depth}",
                **interval_columns(cell),
                "reference": f"{won.model}, {won.source}",
                "reference_roc_auc": csv_num(won.roc_auc),
                "diff_roc_vs_reference": csv_num(_diff(cell, cell.roc, won.roc_auc)),
                "reference_pr_auc": csv_num(won.pr_auc),
                "diff_pr_vs_reference": csv_num(_diff(cell, cell.pr, won.pr_auc)),
                "run_keys": " ".join(r.key for r in cell.runs),
                "run_ids": " ".join(r.run_id for r in cell.runs),
            }
        )
        md_rows.append(
            {
                model_col: f"ours: FCN-{k.depth}, {INPUT_NAMES.get(k.input, k.input)}",
                "ROC-AUC (95 % CI)": cell.roc.fmt() if cell.roc else MISSING,
                "PR-AUC (95 % CI)": cell.pr.fmt() if cell.pr else MISSING,
                "Δ ROC vs Won FCN": _md_diff(cell, cell.roc, won.roc_auc),
                "Δ PR vs Won FCN": _md_diff(cell, cell.pr, won.pr_auc),
                "seeds": str(len(cell.runs)) if cell.done else MISSING,
                "interval": cell.roc.method if cell.roc else MISSING,
            }
        )
    # a CSV's rows share one header: the reference rows get the columns of ours, blank
    fields = list(dict.fromkeys(c for r in csv_rows for c in r))
    csv_rows = [{c: r.get(c, "") for c in fields} for r in csv_rows]
    notes = [
        "Macro ROC-AUC and PR-AUC over MTG-Jamendo's top-50 tags on split-0's test tracks (11,356 at full scale). "
        f"Reference rows (bold): {won.source}, read from that paper's results figure [C]; their FCN is not this "
        "paper's network (smaller, 16 kHz input), so Δ = ours − their FCN places ours, it does not test a "
        f"reproduction. {MISSING} = not run yet. Runs on all of the training split only.",
        "",
        provenance,
        "",
        INTERVAL_NOTE,
    ]
    return [write_md(out / MD, TITLE, notes, md_rows), write_csv(out / CSV, csv_rows)]
