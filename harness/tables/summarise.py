"""From finished runs to what the tables report: one Cell per full cell identity with its interval, and paired tests.

A cell is (dataset, input, depth, training fraction, global batch): seeds pool only within one. A run on a quarter of
the training split is never a seed of the full-data cell, whatever its seed (fcn/cell.py: the fraction is part of the
key), nor is a run at another global batch (another recipe: fcn/batching.py). The paper's tables hold the recipe's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from fcn.batching import RECIPE_BATCH
from harness import bootstrap, paper
from harness.tables.read import ArtifactCache, CellRun

FULL = 1.0  # the whole training split: the paper's cells


class CellId(NamedTuple):
    """A cell's identity without its seed; equal to the paper's (dataset, input, depth) key at fraction 1.0."""

    dataset: str
    input: str
    depth: int
    fraction: float = FULL
    batch: int = RECIPE_BATCH  # the global batch: the tables' cells are the recipe's

    @property
    def paper_key(self) -> tuple[str, str, int]:
        return self.dataset, self.input, self.depth


def cell_id(run: CellRun) -> CellId:
    return CellId(run.dataset, run.input, run.depth, run.fraction, run.batch)


@dataclass
class Cell:
    """All seeds of one cell, with the interval we report."""

    dataset: str
    input: str
    depth: int
    fraction: float = FULL
    batch: int = RECIPE_BATCH
    runs: list[CellRun] = field(default_factory=list)
    roc: bootstrap.Interval | None = None
    pr: bootstrap.Interval | None = None

    @property
    def id(self) -> CellId:
        return CellId(self.dataset, self.input, self.depth, self.fraction, self.batch)

    @property
    def done(self) -> bool:
        return bool(self.runs)

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    def run_for_seed(self, seed: int | None = None) -> CellRun:
        """The run of `seed`, else the lowest seed's run."""
        for r in self.runs:
            if r.seed == seed:
                return r
        return self.runs[0]


def paper_cells() -> list[CellId]:
    """The cells of the input and depth tables (full training data only), each once."""
    keys = paper.INPUT_CELLS + [k for k in paper.DEPTH_CELLS if k not in paper.INPUT_CELLS]
    return [CellId(*k) for k in keys]


def summarise(
    wanted: list[CellId], runs: list[CellRun], cache: ArtifactCache, n_boot: int, seed: int
) -> dict[CellId, Cell]:
    """One Cell per wanted identity, holding the runs of exactly that identity, with its interval."""
    cells = {k: Cell(*k) for k in wanted}
    for r in runs:
        if cell_id(r) in cells:
            cells[cell_id(r)].runs.append(r)
    for cell in cells.values():
        cell.runs.sort(key=lambda r: r.seed)
        if cell.runs:
            cell.roc, cell.pr = _intervals(cell, cache, n_boot, seed)
    return cells


def _intervals(
    cell: Cell, cache: ArtifactCache, n_boot: int, seed: int
) -> tuple[bootstrap.Interval, bootstrap.Interval | None]:
    """(ROC, PR): mean ± t over seeds when there are several, else a bootstrap over the run's test clips."""
    if len(cell.runs) > 1:
        prs = [r.pr_auc for r in cell.runs if r.pr_auc is not None]
        return (bootstrap.seed_interval([r.roc_auc for r in cell.runs]), bootstrap.seed_interval(prs) if prs else None)
    run = cell.runs[0]
    preds = cache.predictions(run.run_id)
    if preds is None:
        why = "single seed, no predictions artifact"
        return (
            bootstrap.Interval(run.roc_auc, None, None, why, 1),
            bootstrap.Interval(run.pr_auc, None, None, why, 1) if run.pr_auc is not None else None,
        )
    boot_roc, boot_pr = bootstrap.bootstrap_macro_auc(preds.y_true, preds.y_score, n_boot=n_boot, seed=seed)
    # The logged metric is the number of record; the bootstrap supplies only the interval around it.
    pr_est = run.pr_auc if run.pr_auc is not None else boot_pr.estimate
    return (
        bootstrap.Interval(run.roc_auc, boot_roc.lo, boot_roc.hi, boot_roc.method, boot_roc.n),
        bootstrap.Interval(pr_est, boot_pr.lo, boot_pr.hi, boot_pr.method, boot_pr.n),
    )


# --- paired comparisons ---------------------------------------------------------------------------------------------


@dataclass
class Comparison:
    dataset: str
    a: CellId
    b: CellId
    kind: str  # 'input' | 'depth' | 'fraction'
    test: bootstrap.PairedTest | None = None
    seed_a: int | None = None
    seed_b: int | None = None
    note: str = ""


def paper_comparisons() -> list[Comparison]:
    """Inputs on MTAT FCN-4, and depth d vs d + 1 with mel input, on the full training data."""
    out = [
        Comparison("mtat", CellId("mtat", a, 4), CellId("mtat", b, 4), "input")
        for a, b in (("mel", "stft"), ("mel", "mfcc"), ("stft", "mfcc"))
    ]
    out += [
        Comparison(ds, CellId(ds, "mel", d), CellId(ds, "mel", d + 1), "depth")
        for ds in ("mtat", "msd")
        for d in range(3, 7)
    ]
    return out


def run_comparisons(
    wanted: list[Comparison], cells: dict[CellId, Cell], cache: ArtifactCache, n_boot: int, seed: int
) -> list[Comparison]:
    """Each comparison with its paired bootstrap test on the same test clips, or a note saying what is missing."""
    for c in wanted:
        ca, cb = cells.get(c.a), cells.get(c.b)
        if ca is None or cb is None or not ca.done or not cb.done:
            c.note = "missing: a cell has no finished run"
            continue
        common = sorted(set(ca.seeds) & set(cb.seeds))
        # Same seed on both sides where possible, so the pair differs only in what is being compared.
        ra = ca.run_for_seed(common[0] if common else None)
        rb = cb.run_for_seed(common[0] if common else None)
        c.seed_a, c.seed_b = ra.seed, rb.seed
        pa, pb = cache.predictions(ra.run_id), cache.predictions(rb.run_id)
        if pa is None or pb is None:
            c.note = "missing: no test_predictions.npz"
            continue
        c.test = bootstrap.paired_bootstrap(pa, pb, n_boot=n_boot, seed=seed)
        extra = len(ca.seeds) > 1 or len(cb.seeds) > 1
        c.note = f"seed {ra.seed}" + (" (one seed per side of a multi-seed cell)" if extra else "")
        if ra.seed != rb.seed:
            c.note = f"seeds {ra.seed} vs {rb.seed} (no common seed)"
    return wanted


# --- RQ4: depth × training-data fraction ----------------------------------------------------------------------------


@dataclass
class FractionGrid:
    """The depth × fraction cells of one (dataset, input) that has runs on part of its training split."""

    dataset: str
    input: str
    depths: list[int]
    fractions: list[float]  # ascending; always ends with 1.0, the full-data reference

    def ids(self) -> list[CellId]:
        return [CellId(self.dataset, self.input, d, f) for d in self.depths for f in self.fractions]

    def comparisons(self) -> list[Comparison]:
        """Each depth on each fraction against the same depth on all the data: what less data costs it."""
        return [
            Comparison(
                self.dataset,
                CellId(self.dataset, self.input, d, f),
                CellId(self.dataset, self.input, d, FULL),
                "fraction",
            )
            for d in self.depths
            for f in self.fractions
            if f != FULL
        ]


def fraction_grids(runs: list[CellRun]) -> list[FractionGrid]:
    """One grid per (dataset, input) holding a run with fraction < 1: the depths that have such a run, and every
    fraction run for that (dataset, input), plus 1.0 (shown as missing until the full-data runs exist)."""
    runs = [r for r in runs if r.batch == RECIPE_BATCH]  # the RQ4 grid compares the recipe's runs only
    partial = [r for r in runs if r.fraction != FULL]
    grids = []
    for ds, inp in sorted({(r.dataset, r.input) for r in partial}):
        depths = sorted({r.depth for r in partial if (r.dataset, r.input) == (ds, inp)})
        fractions = sorted({r.fraction for r in runs if (r.dataset, r.input) == (ds, inp)} | {FULL})
        grids.append(FractionGrid(ds, inp, depths, fractions))
    return grids
