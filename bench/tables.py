"""Tables: the bootstrap behind every interval in results/ (harness/bootstrap.py), on a full MTAT test set.

1,000 resamples of 4,000 clips × 50 tags (MTAT's test split is ~4,300 clips) through `bootstrap_macro_auc`, against
the obvious way of doing it: scikit-learn's macro ROC-AUC and PR-AUC on each resample, timed on a few resamples in
the same process and scaled to 1,000. Target: a full table's intervals in seconds, not minutes.
"""

from __future__ import annotations

import time

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from bench.common import Row, Section, fmt_s
from harness.bootstrap import bootstrap_macro_auc

N_CLIPS, N_TAGS, N_BOOT = 4000, 50, 1000
TARGET_S = 10.0  # [D] one cell's interval: a table of ~10 cells then regenerates in well under two minutes


def _data(n: int):
    rng = np.random.default_rng(0)
    y = (rng.random((n, N_TAGS)) < 0.05).astype(np.uint8)
    return y, (y + rng.normal(size=y.shape)).astype(np.float32)


def _sklearn_per_resample(y, s, n: int) -> float:
    """Seconds per resample of the scikit-learn way (macro over the tags with both classes)."""
    rng = np.random.default_rng(1)
    t0 = time.perf_counter()
    for _ in range(n):
        i = rng.integers(0, len(y), len(y))
        yb, sb = y[i], s[i]
        ok = (yb.sum(0) > 0) & (yb.sum(0) < len(yb))
        roc_auc_score(yb[:, ok], sb[:, ok], average="macro")
        average_precision_score(yb[:, ok], sb[:, ok], average="macro")
    return (time.perf_counter() - t0) / n


def run(quick: bool = False) -> Section:
    n_boot = 100 if quick else N_BOOT
    y, s = _data(N_CLIPS)
    t0 = time.perf_counter()
    bootstrap_macro_auc(y, s, n_boot=n_boot)
    ours = time.perf_counter() - t0
    base = _sklearn_per_resample(y, s, 5 if quick else 20) * n_boot
    row = Row(
        f"bootstrap of macro ROC-AUC + PR-AUC, {n_boot} resamples of {N_CLIPS} clips × {N_TAGS} tags",
        fmt_s(ours),
        f"scikit-learn per resample: {fmt_s(base)} (scaled from a few resamples)",
        f"{base / ours:.1f}× faster",
        f"≤ {TARGET_S:g} s",
        ours <= TARGET_S,
        "harness/bootstrap.py: clip weights instead of resampled copies, all tags at once (fcn/metrics.py)",
    )
    return Section("tables", "6. Tables: bootstrap intervals on a full MTAT test set", [row])
