"""Uncertainty of macro ROC-AUC / PR-AUC: bootstrap over test clips, t-intervals over seeds, paired bootstrap tests.

Bootstrap: resample the test clips with replacement (a resample = a vector of integer counts per clip), recompute the
macro average over tags, and take percentiles. A tag whose resample holds only positives or only negatives has no AUC
and is left out of that resample's macro average (as in the point estimate).

Speed: a resample's AUCs are computed from the counts as weights on one fixed sort of each tag's scores, so nothing is
re-sorted per resample (fcn.metrics.weighted_aucs, the same code that scores every run): ROC-AUC is the weighted
Mann-Whitney statistic (ties count one half), PR-AUC is sklearn's average precision (a step sum over distinct
thresholds). Both equal sklearn's values on the resampled data.
1,000 resamples of 4,000 clips × 50 tags take a few seconds on two cores.

The single-model interval is the percentile interval of the resampled values after re-centring them on the point
estimate (subtracting mean(resamples) − estimate). Why: a resample repeats clips, and a repeated positive forms a tie
block at the top of its own score, which inflates average precision: measured here, PR-AUC resamples sit 1-2
bootstrap SDs above the estimate (4,332 clips, 2-5 % positives), so the raw percentile interval can fail to contain
the estimate at all. That shift is an artefact of resampling, not a bias of the estimate, so it is removed rather
than "corrected for". ROC-AUC (a U-statistic) shows no such shift and is practically unchanged by re-centring.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fcn.metrics import per_tag, weighted_aucs

DEFAULT_N_BOOT = 1000
DEFAULT_SEED = 0
_CHUNK_ELEMENTS = 2_000_000  # resamples × clips per chunk: bounds memory (~16 MB per float64 array)


@dataclass(frozen=True)
class Interval:
    """A point estimate with a (lo, hi) interval; lo/hi are None where no interval can be given."""

    estimate: float
    lo: float | None
    hi: float | None
    method: str  # e.g. "bootstrap over 4332 clips (1000 resamples)" or "t over 3 seeds"
    n: int  # clips for a bootstrap, seeds for a t-interval

    def fmt(self, digits: int = 3) -> str:
        if self.lo is None or self.hi is None:
            return f"{self.estimate:.{digits}f}"
        return f"{self.estimate:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"


@dataclass(frozen=True)
class Predictions:
    """A model's test predictions, as in a run's `test_predictions.npz` artifact (DESIGN.md)."""

    clip_id: np.ndarray  # (N,) str
    y_true: np.ndarray  # (N, T) uint8
    y_score: np.ndarray  # (N, T) float
    tags: np.ndarray | None = None  # (T,) str

    @classmethod
    def load(cls, path: str | Path) -> Predictions:
        with np.load(path, allow_pickle=False) as z:
            tags = z["tags"].astype(str) if "tags" in z.files else None
            return cls(z["clip_id"].astype(str), z["y_true"], z["y_score"], tags)


@dataclass(frozen=True)
class PairedTest:
    """Paired bootstrap of macro ROC-AUC(A) − macro ROC-AUC(B) on the same test clips."""

    auc_a: float
    auc_b: float
    diff: float  # auc_a − auc_b on all common clips
    lo: float
    hi: float
    p_value: float  # two-sided
    n_clips: int
    n_boot: int


# ---------------------------------------------------------------------------------------------------------------------
# Point estimates: fcn.metrics, whose vectorised core takes the clip weights a resample gives


def per_tag_auc(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-tag ROC-AUC and PR-AUC (average precision); NaN for a tag with a single class."""
    return per_tag(y_true, y_score)


def macro_auc(y_true: np.ndarray, y_score: np.ndarray) -> tuple[float, float]:
    """Macro ROC-AUC and PR-AUC over the tags that have both classes."""
    roc, pr = per_tag_auc(y_true, y_score)
    return float(np.nanmean(roc)), float(np.nanmean(pr))


def _resample_chunks(n: int, n_boot: int, seed: int):
    """Yield (b, n) count matrices, n_boot rows in all; the same seed and n always give the same resamples."""
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // max(n, 1))
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        idx = rng.integers(0, n, size=(b, n))
        flat = (idx + np.arange(b)[:, None] * n).ravel()
        yield np.bincount(flat, minlength=b * n).reshape(b, n)
        done += b


def _nanmean_rows(a: np.ndarray) -> np.ndarray:
    """Row means over usable tags; a row with no usable tag is NaN (numpy's all-NaN warning is expected here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=1)


def _percentiles(values: np.ndarray, confidence: float, centre: float | None = None) -> tuple[float, float]:
    """Percentile interval; with `centre`, of the values shifted so that their mean is `centre`."""
    v = values[np.isfinite(values)]
    if centre is not None:
        v = v - (v.mean() - centre)
    a = (1 - confidence) / 2
    lo, hi = np.quantile(v, [a, 1 - a])
    return float(lo), float(hi)


# ---------------------------------------------------------------------------------------------------------------------
# Public API


def bootstrap_macro_auc(
    y_true: np.ndarray,
    y_score: np.ndarray,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = DEFAULT_SEED,
    confidence: float = 0.95,
) -> tuple[Interval, Interval]:
    """Bootstrap intervals (re-centred percentile, see module doc) of macro ROC-AUC and PR-AUC over clips: (roc, pr)."""
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score)
    n = y_true.shape[0]
    roc_point, pr_point = macro_auc(y_true, y_score)
    roc_b, pr_b = [], []
    for w in _resample_chunks(n, n_boot, seed):
        roc, pr = weighted_aucs(y_true, y_score, w)
        roc_b.append(_nanmean_rows(roc))
        pr_b.append(_nanmean_rows(pr))
    method = f"bootstrap over {n} clips ({n_boot} resamples)"
    roc_lo, roc_hi = _percentiles(np.concatenate(roc_b), confidence, centre=roc_point)
    pr_lo, pr_hi = _percentiles(np.concatenate(pr_b), confidence, centre=pr_point)
    return (Interval(roc_point, roc_lo, roc_hi, method, n), Interval(pr_point, pr_lo, pr_hi, method, n))


def seed_interval(values, confidence: float = 0.95) -> Interval:
    """Mean and Student-t interval over seeds; with one seed the interval is absent (lo = hi = None)."""
    v = np.asarray([float(x) for x in values], dtype=np.float64)
    n = len(v)
    if n == 0:
        raise ValueError("no values")
    mean = float(v.mean())
    if n < 2:
        return Interval(mean, None, None, "single seed", 1)
    from scipy.stats import t  # 1.5 s to import (measured): only seed intervals need it; scipy comes with sklearn

    half = float(t.ppf(0.5 + confidence / 2, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return Interval(mean, mean - half, mean + half, f"mean ± t over {n} seeds", n)


def align(a: Predictions, b: Predictions) -> tuple[Predictions, Predictions]:
    """Both models restricted to their common clips, in the same order (by clip_id). Labels must agree."""
    if a.tags is not None and b.tags is not None and list(a.tags) != list(b.tags):
        raise ValueError("the two predictions use different tag lists")
    common, ia, ib = np.intersect1d(a.clip_id, b.clip_id, assume_unique=True, return_indices=True)
    if len(common) == 0:
        raise ValueError("no common clip_id")
    a2 = Predictions(common, a.y_true[ia], a.y_score[ia], a.tags)
    b2 = Predictions(common, b.y_true[ib], b.y_score[ib], b.tags)
    if not np.array_equal(a2.y_true, b2.y_true):
        raise ValueError("y_true differs between the two predictions on common clips")
    return a2, b2


def paired_bootstrap(
    a: Predictions, b: Predictions, n_boot: int = DEFAULT_N_BOOT, seed: int = DEFAULT_SEED, confidence: float = 0.95
) -> PairedTest:
    """Paired bootstrap test of macro ROC-AUC(A) − macro ROC-AUC(B) on the same clips (aligned by clip_id).

    Both models see the same resamples. The interval is the percentile interval of the resampled differences; the
    two-sided p-value is twice the smaller tail share of resampled differences at or beyond 0 (add-one corrected,
    capped at 1): identical models give p = 1.
    """
    a, b = align(a, b)
    auc_a, _ = macro_auc(a.y_true, a.y_score)
    auc_b, _ = macro_auc(b.y_true, b.y_score)
    diffs = []
    for w in _resample_chunks(len(a.clip_id), n_boot, seed):
        roc_a, _ = weighted_aucs(a.y_true, a.y_score, w)
        roc_b, _ = weighted_aucs(b.y_true, b.y_score, w)
        diffs.append(_nanmean_rows(roc_a) - _nanmean_rows(roc_b))
    d = np.concatenate(diffs)
    d = d[np.isfinite(d)]
    lo, hi = _percentiles(d, confidence)
    below = (np.sum(d <= 0) + 1) / (len(d) + 1)
    above = (np.sum(d >= 0) + 1) / (len(d) + 1)
    p = min(1.0, 2 * min(below, above))
    return PairedTest(auc_a, auc_b, auc_a - auc_b, lo, hi, float(p), len(a.clip_id), n_boot)
