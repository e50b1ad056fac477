"""The paper's metric: macro ROC-AUC over the 50 tags (and macro PR-AUC, the field's second metric), scikit-learn."""
from __future__ import annotations

import numpy as np


def per_tag(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC-AUC and PR-AUC of each tag; NaN where a tag has only one class in y_true (AUC undefined)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    n = y_true.shape[1]
    roc, pr = np.full(n, np.nan), np.full(n, np.nan)
    for j in range(n):
        t = y_true[:, j]
        if 0 < t.sum() < len(t):
            roc[j] = roc_auc_score(t, y_score[:, j])
            pr[j] = average_precision_score(t, y_score[:, j])
    return roc, pr


def macro(y_true: np.ndarray, y_score: np.ndarray) -> dict:
    return summarise(*per_tag(y_true, y_score))


def summarise(roc: np.ndarray, pr: np.ndarray) -> dict:
    """Macro averages of per-tag AUCs (tags with one class in the split are left out)."""
    if np.all(np.isnan(roc)):
        return {"roc_auc": float("nan"), "pr_auc": float("nan"), "tags_evaluated": 0}
    return {"roc_auc": float(np.nanmean(roc)), "pr_auc": float(np.nanmean(pr)),
            "tags_evaluated": int(np.sum(~np.isnan(roc)))}
