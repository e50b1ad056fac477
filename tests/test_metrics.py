"""fcn.metrics: the reported metric is scikit-learn's, computed in one vectorised pass (and shared by the bootstrap)."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from fcn import metrics as M


def _data(n=300, tags=50, seed=0, decimals=None):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, tags)) < 0.08).astype(np.uint8)
    s = (1.0 * y + rng.normal(size=y.shape)).astype(np.float32)
    if decimals is not None:
        s = np.round(s, decimals)  # many tied scores
    return y, s


@pytest.mark.parametrize("decimals", [None, 1, 0])
def test_per_tag_equals_sklearn_with_and_without_ties(decimals):
    y, s = _data(decimals=decimals)
    y[:, 7] = 0  # a tag without positives: no AUC, left out of the macro average as scikit-learn can't score it
    y[:, 8] = 1
    roc, pr = M.per_tag(y, s)
    usable = [t for t in range(y.shape[1]) if t not in (7, 8)]
    assert np.isnan(roc[[7, 8]]).all() and np.isnan(pr[[7, 8]]).all()
    want_roc = np.array([roc_auc_score(y[:, t], s[:, t]) for t in usable])
    want_pr = np.array([average_precision_score(y[:, t], s[:, t]) for t in usable])
    np.testing.assert_allclose(roc[usable], want_roc, rtol=0, atol=1e-12)
    np.testing.assert_allclose(pr[usable], want_pr, rtol=0, atol=1e-12)
    m = M.macro(y, s)
    assert m["tags_evaluated"] == len(usable)
    assert m["roc_auc"] == pytest.approx(want_roc.mean(), abs=1e-12)
    assert m["pr_auc"] == pytest.approx(want_pr.mean(), abs=1e-12)


def test_weights_are_repeated_clips():
    # a weight of k counts a clip k times: what the bootstrap's resample counts rely on
    y, s = _data(n=120, tags=5, seed=3, decimals=1)
    w = np.random.default_rng(0).integers(0, 3, size=len(y))
    roc, pr = M.weighted_aucs(y, s, w[None, :])
    rep = np.repeat(np.arange(len(y)), w)
    roc2, pr2 = M.per_tag(y[rep], s[rep])
    np.testing.assert_allclose(roc[0], roc2, atol=1e-12)
    np.testing.assert_allclose(pr[0], pr2, atol=1e-12)


def test_no_usable_tag_gives_nan_not_an_error():
    y = np.zeros((10, 3), dtype=np.uint8)
    m = M.macro(y, np.random.default_rng(0).random((10, 3)))
    assert np.isnan(m["roc_auc"]) and m["tags_evaluated"] == 0
