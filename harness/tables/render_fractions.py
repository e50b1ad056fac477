"""The RQ4 table: ROC-AUC by depth × training-data fraction, per (dataset, input) of a `--fractions` sweep.

The paper's question (RQ2/RQ4): do deeper models need more data? Each depth is shown on each fraction of the training
split, and beside it what the smaller fraction costs that depth against all the data (a paired bootstrap on the same
test clips): if deeper models need more data, that cost grows with depth.
"""

from __future__ import annotations

from pathlib import Path

from harness.tables.read import DATASET_NAMES, CellRun
from harness.tables.render import (
    HEADER,
    INPUT_NAMES,
    INTERVAL_NOTE,
    MISSING,
    interval_columns,
    md_table,
    md_test,
    test_columns,
    write_csv,
)
from harness.tables.summarise import FULL, Cell, CellId, Comparison, FractionGrid

MD = "fraction_table.md"
CSV = "fraction_table.csv"
TITLE = "ROC-AUC by depth × training-data fraction"


def _frac(f: float) -> str:
    return "all" if f == FULL else f"{f:g}"


def _csv_rows(grid: FractionGrid, cells: dict[CellId, Cell], tests: dict[CellId, Comparison]) -> list[dict]:
    rows = []
    for k in grid.ids():
        cell, comp = cells[k], tests.get(k)
        test = test_columns(comp.test if comp else None)
        rows.append(
            {
                "dataset": k.dataset,
                "input": k.input,
                "model": f"FCN-{k.depth}",
                "train_fraction": f"{k.fraction:g}",
                **interval_columns(cell),
                "diff_vs_full": test.pop("diff"),
                **test,  # this fraction − all the data, same depth
                "seed_pair": "" if comp is None or comp.test is None else comp.note,
                "run_keys": " ".join(r.key for r in cell.runs),
                "run_ids": " ".join(r.run_id for r in cell.runs),
            }
        )
    return rows


def _md_rows(grid: FractionGrid, cells: dict[CellId, Cell], tests: dict[CellId, Comparison]) -> list[dict]:
    rows = []
    for d in grid.depths:
        row = {"model": f"FCN-{d}"}
        for f in grid.fractions:
            roc = cells[CellId(grid.dataset, grid.input, d, f)].roc
            row[f"{_frac(f)} of train (95 % CI)"] = roc.fmt() if roc else MISSING
        for f in grid.fractions[:-1]:
            comp = tests.get(CellId(grid.dataset, grid.input, d, f))
            row[f"Δ {_frac(f)} − all (95 % CI)"] = md_test(comp.test if comp else None)
        rows.append(row)
    return rows


def _best_depths(grid: FractionGrid, cells: dict[CellId, Cell]) -> str:
    """Which depth scores highest on each fraction (point estimates; the intervals say how sure that is)."""
    parts = []
    for f in grid.fractions:
        done = [cells[CellId(grid.dataset, grid.input, d, f)] for d in grid.depths]
        done = [c for c in done if c.roc is not None]
        if done:
            best = max(done, key=lambda c: c.roc.estimate)
            parts.append(f"{_frac(f)} → FCN-{best.depth} ({best.roc.estimate:.3f})")
    return "Highest ROC-AUC per fraction: " + ("; ".join(parts) if parts else "no finished runs yet") + "."


def _runs_note(grids: list[FractionGrid], runs: list[CellRun]) -> str:
    ids = {k for g in grids for k in g.ids()}
    mine = [r for r in runs if CellId(r.dataset, r.input, r.depth, r.fraction) in ids]
    seeds = sorted({r.seed for r in mine})
    return (
        f"Runs read: {len(mine)} finished cell runs (seeds {', '.join(map(str, seeds)) or 'none'}), "
        f"{sum(len(g.ids()) for g in grids)} cells in all."
    )


def write_fraction_table(
    grids: list[FractionGrid],
    cells: dict[CellId, Cell],
    comps: list[Comparison],
    runs: list[CellRun],
    out: Path,
    made_by: str,
    provenance: str,
    n_boot: int,
) -> list[Path]:
    """fraction_table.md (one section per data set and input) and fraction_table.csv (one row per cell)."""
    tests = {c.a: c for c in comps if c.kind == "fraction"}
    notes = [
        f"{made_by}",
        "",
        "Do deeper models need more data (the paper's RQ2/RQ4)? Macro ROC-AUC over 50 tags on the test clips for "
        "each depth trained on a fraction of the training split (`harness.grid --fractions`; the validation and "
        "test splits are whole). Δ f − all: that depth on fraction f minus the same depth on all the training "
        f"data, paired bootstrap over the same test clips ({n_boot} resamples, same seed on both sides): if "
        "deeper models need more data, Δ grows more negative with depth. "
        f"{MISSING} = not run yet.",
        "",
        _runs_note(grids, runs),
        "",
        provenance,
        "",
        INTERVAL_NOTE,
    ]
    lines = [f"<!-- {HEADER} -->", f"# {TITLE}", "", *notes]
    csv_rows = []
    for g in grids:
        lines += [
            "",
            f"## {DATASET_NAMES.get(g.dataset, g.dataset)}, {INPUT_NAMES.get(g.input, g.input)} input",
            "",
            *md_table(_md_rows(g, cells, tests)),
            "",
            _best_depths(g, cells),
        ]
        csv_rows += _csv_rows(g, cells, tests)
    (out / MD).write_text("\n".join(lines) + "\n")
    return [out / MD, write_csv(out / CSV, csv_rows)]
