"""The figures of results/: ROC-AUC vs depth beside the paper, per-tag ROC-AUC of the best model, and ROC-AUC by
depth × training-data fraction (RQ4). matplotlib (Agg) is imported inside each function."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from harness import paper
from harness.tables.read import DATASET_NAMES, ArtifactCache
from harness.tables.render import GENERATOR, INPUT_NAMES, label
from harness.tables.summarise import FULL, Cell, CellId, FractionGrid

FRACTION_PLOT = "auc_by_depth_fraction.png"


def _pyplot():
    # 0.4 s to import (measured), and harness.grid imports this package: only drawing needs it; pyplot only after
    # the Agg backend is chosen (no display on a cluster node)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, footer: str) -> Path:
    """Lay out and save; `footer` (which command made the figure, and when: render.Made) is wrapped to the figure's
    width, since a grid command can be longer than one line of small print."""
    lines = textwrap.wrap(footer, width=int(fig.get_figwidth() * 72 / (6 * 0.55)))  # 6 pt, ~0.55 em per character
    fig.tight_layout(rect=(0, 0.01 + 0.11 * len(lines) / fig.get_figheight(), 1, 1))
    fig.text(0.01, 0.005, "\n".join(lines), fontsize=6, color="0.4", ha="left", va="bottom")
    fig.savefig(path, dpi=120, metadata={"Description": footer, "Software": GENERATOR})
    _pyplot().close(fig)
    return path


def _errorbars(cells: list[Cell]) -> tuple[list, list, list]:
    """The ROC-AUC estimates of cells that have one, and their error bars below and above (none without an interval)."""
    y = [c.roc.estimate for c in cells]
    err = [
        [c.roc.estimate - c.roc.lo if c.roc.lo is not None else 0 for c in cells],
        [c.roc.hi - c.roc.estimate if c.roc.hi is not None else 0 for c in cells],
    ]
    return y, err[0], err[1]


def plot_auc_vs_depth(cells: dict[CellId, Cell], out: Path, footer: str) -> Path:
    plt = _pyplot()
    depths = list(range(3, 8))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=False)
    for ax, ds in zip(axes, ("mtat", "msd")):
        done = [cells[CellId(ds, "mel", d)] for d in depths if cells[CellId(ds, "mel", d)].roc is not None]
        if done:
            y, lo, hi = _errorbars(done)
            synthetic = any(r.synthetic for c in done for r in c.runs)
            ax.errorbar(
                [c.depth for c in done],
                y,
                yerr=[lo, hi],
                marker="o",
                capsize=3,
                label="ours, synthetic demo data (95 % CI)" if synthetic else "ours (95 % CI)",
            )
        pub = [(d, paper.published(ds, "mel", d)) for d in depths if paper.published(ds, "mel", d) is not None]
        ax.plot(*zip(*pub), "s--", color="C1", label="paper (published)")
        rr = [(d, paper.rerun(ds, "mel", d)) for d in depths if paper.rerun(ds, "mel", d) is not None]
        if rr:
            ax.plot(*zip(*rr), "^:", color="C2", label="author's re-run")
        missing = [d for d in depths if cells[CellId(ds, "mel", d)].roc is None]
        title = f"{DATASET_NAMES[ds]}, mel input"
        ax.set_title(title + (f"\nnot run yet: FCN-{', '.join(map(str, missing))}" if missing else ""), fontsize=10)
        ax.set_xticks(depths, [f"FCN-{d}" for d in depths])
        ax.set_ylabel("macro ROC-AUC (test)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, out / "auc_vs_depth.png", footer)


def plot_per_tag(cells: dict[CellId, Cell], cache: ArtifactCache, out: Path, footer: str) -> tuple[Path, str]:
    """Per-tag ROC-AUC of the best finished cell (highest reported ROC-AUC); returns (path, which model)."""
    plt = _pyplot()
    done = sorted((c for c in cells.values() if c.done), key=lambda c: c.roc.estimate, reverse=True)
    per_tag, which = None, "none"
    for cell in done:  # the best cell whose per-tag numbers can be read
        run = cell.runs[0]
        per_tag = cache.per_tag(run.run_id)
        if per_tag is not None:
            which = f"{label(cell.id)} ({run.key})"
            break
    if per_tag is None:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no finished run with per-tag results yet", ha="center", va="center")
    else:
        names, roc = per_tag
        order = np.argsort(np.nan_to_num(roc, nan=-1))
        fig, ax = plt.subplots(figsize=(7, max(4, 0.2 * len(names) + 1)))
        ax.barh(np.arange(len(order)), np.nan_to_num(roc[order]), color="C0")
        ax.set_yticks(np.arange(len(order)), [names[i] for i in order], fontsize=7)
        ax.set_xlim(max(0.0, float(np.nanmin(roc)) - 0.05), 1.0)
        ax.axvline(np.nanmean(roc), color="C1", ls="--", lw=1, label=f"macro {np.nanmean(roc):.3f}")
        ax.set_xlabel("ROC-AUC (test)")
        ax.set_title(f"Per-tag ROC-AUC, {which}", fontsize=9)
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(axis="x", alpha=0.3)
    return _save(fig, out / "per_tag_auc.png", footer), which


def plot_fractions(grids: list[FractionGrid], cells: dict[CellId, Cell], out: Path, footer: str) -> Path:
    """One panel per (dataset, input): ROC-AUC against the training fraction (log scale), one line per depth with
    its 95 % interval. Deeper models needing more data shows as their lines rising more steeply to the right."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(grids), figsize=(5.5 * len(grids), 4.2), squeeze=False)
    for ax, g in zip(axes[0], grids):
        for i, d in enumerate(g.depths):
            done = [cells[CellId(g.dataset, g.input, d, f)] for f in g.fractions]
            done = [c for c in done if c.roc is not None]
            if not done:
                continue
            y, lo, hi = _errorbars(done)
            x = [c.fraction * (1 + 0.025 * (i - (len(g.depths) - 1) / 2)) for c in done]  # dodge: bars overlap
            synthetic = any(r.synthetic for c in done for r in c.runs)
            ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3, label=f"FCN-{d}" + (" (synthetic)" * synthetic))
        ax.set_xscale("log", base=2)
        ax.set_xticks(g.fractions, ["all" if f == FULL else f"{f:g}" for f in g.fractions])
        ax.minorticks_off()
        ax.set_xlabel("fraction of the training split")
        ax.set_ylabel("macro ROC-AUC (test, 95 % CI)")
        ax.set_title(
            f"{DATASET_NAMES.get(g.dataset, g.dataset)}, {INPUT_NAMES.get(g.input, g.input)} input: "
            "ROC-AUC by depth × training fraction",
            fontsize=9,
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, out / FRACTION_PLOT, footer)
