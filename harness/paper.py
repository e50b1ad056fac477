"""The published numbers (macro ROC-AUC over 50 tags) that our results are put beside.

Source: Choi, Fazekas & Sandler, ISMIR 2016 (arXiv 1606.00298), as collected in PAPER.md. Marks as there:
[C] confirmed from the authors' own material. All values here are [C].

`PUBLISHED` holds the paper's tables; `MSD_RERUN` the first author's later re-run on MSD (no LR schedule, 480 epochs),
which he gave because the published MSD numbers were not reproducible. Keys are (dataset, input, depth).
`PAPER_CELLS` is the set of cells the paper trained (the one definition: the grid's `--paper` asks here).

MTG-Jamendo (not in the paper): `WON_JAMENDO` is the reference its rows are put beside, Won et al. 2020's FCN on
split-0, ROC-AUC and PR-AUC [C, read from that paper's results figure]; `JAMENDO_CELLS` the paper-style cells run on it
(FCN-3..7 on mel, as the paper's MSD depth table), which `--paper --datasets ...,jamendo` keeps.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperAUC:
    dataset: str  # 'mtat' | 'msd'
    input: str  # 'mel' | 'stft' | 'mfcc'
    depth: int  # 3..7
    roc_auc: float
    source: str  # which published table / statement
    mark: str = "[C]"


PUBLISHED: dict[tuple[str, str, int], PaperAUC] = {
    (p.dataset, p.input, p.depth): p
    for p in [
        # MTAT, input comparison at FCN-4 (RQ1/RQ3).
        PaperAUC("mtat", "mel", 4, 0.894, "paper, MTAT input table (headline)"),
        PaperAUC("mtat", "stft", 4, 0.846, "paper, MTAT input table"),
        PaperAUC("mtat", "mfcc", 4, 0.862, "paper, MTAT input table"),
        # MTAT, depth comparison with mel input (RQ2).
        PaperAUC("mtat", "mel", 3, 0.852, "paper, MTAT depth table"),
        PaperAUC("mtat", "mel", 5, 0.890, "paper, MTAT depth table"),
        # MSD, depth comparison with mel input (RQ4), as published.
        PaperAUC("msd", "mel", 3, 0.786, "paper, MSD depth table (as published; not reproducible per the author)"),
        PaperAUC("msd", "mel", 4, 0.808, "paper, MSD depth table (as published; not reproducible per the author)"),
        PaperAUC("msd", "mel", 5, 0.848, "paper, MSD depth table (as published; not reproducible per the author)"),
        PaperAUC("msd", "mel", 6, 0.851, "paper, MSD depth table (as published; not reproducible per the author)"),
        PaperAUC("msd", "mel", 7, 0.845, "paper, MSD depth table (as published; not reproducible per the author)"),
    ]
}

MSD_RERUN: dict[tuple[str, str, int], PaperAUC] = {
    (p.dataset, p.input, p.depth): p
    for p in [
        PaperAUC("msd", "mel", 3, 0.839, "first author's re-run (no LR schedule, 480 epochs)"),
        PaperAUC("msd", "mel", 4, 0.852, "first author's re-run (no LR schedule, 480 epochs)"),
        PaperAUC("msd", "mel", 5, 0.855, "first author's re-run (no LR schedule, 480 epochs)"),
    ]
}

# The paper's own cells (PAPER.md, Results): MTAT FCN-3/4/5 on mel and FCN-4 on STFT/MFCC; MSD FCN-3..7 on mel.
# `harness.grid --paper` runs these (harness/cells.py).
PAPER_CELLS: frozenset[tuple[str, str, int]] = frozenset(
    [("mtat", "mel", d) for d in (3, 4, 5)]
    + [("mtat", i, 4) for i in ("stft", "mfcc")]
    + [("msd", "mel", d) for d in (3, 4, 5, 6, 7)]
)


@dataclass(frozen=True)
class ReferenceAUC:
    """A published result of another paper on a data set this paper did not use: one model, no depth axis."""

    dataset: str
    model: str
    roc_auc: float
    pr_auc: float
    source: str
    mark: str = "[C]"


# [C] Won, Ferraro, Bogdanov & Serra, "Evaluation of CNN-based automatic music tagging models", SMC 2020
# (arXiv 2006.00751), results figure, MTG-Jamendo top-50 split-0; their FCN is a smaller FCN than Choi's, at 16 kHz
# (minzwon/sota-music-tagging-models), so it is a reference, not a number this grid reproduces.
WON_JAMENDO = ReferenceAUC(
    "jamendo", "FCN", 0.8255, 0.2801, "Won et al. 2020, MTG-Jamendo split-0 (a smaller FCN, 16 kHz input)"
)
# The best of the nine models in the same figure, for scale: Short-chunk CNN, .8324 / .2976 [C].
WON_JAMENDO_BEST = ReferenceAUC(
    "jamendo", "Short-chunk CNN", 0.8324, 0.2976, "Won et al. 2020, MTG-Jamendo split-0 (best of their nine models)"
)
JAMENDO_CELLS: frozenset[tuple[str, str, int]] = frozenset(("jamendo", "mel", d) for d in (3, 4, 5, 6, 7))

# The cells of the result tables, in display order.
INPUT_CELLS: list[tuple[str, str, int]] = [("mtat", inp, 4) for inp in ("mel", "stft", "mfcc")]
DEPTH_CELLS: list[tuple[str, str, int]] = [(ds, "mel", d) for ds in ("mtat", "msd") for d in range(3, 8)]
JAMENDO_DEPTH_CELLS: list[tuple[str, str, int]] = [("jamendo", "mel", d) for d in range(3, 8)]


def published(dataset: str, input: str, depth: int) -> float | None:
    """The paper's ROC-AUC for a cell, or None where the paper gives none (e.g. MTAT FCN-6/7)."""
    p = PUBLISHED.get((dataset, input, depth))
    return None if p is None else p.roc_auc


def rerun(dataset: str, input: str, depth: int) -> float | None:
    """The author's MSD re-run ROC-AUC for a cell, or None."""
    p = MSD_RERUN.get((dataset, input, depth))
    return None if p is None else p.roc_auc
