"""Task metrics (overall, per site, worst site) and a site-leakage probe."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def auroc(y: np.ndarray, proba: np.ndarray) -> float:
    """Binary AUROC on the positive class; one-vs-rest macro AUROC for more classes."""
    if len(np.unique(y)) < 2:
        return float("nan")
    if proba.shape[1] == 2:
        return float(roc_auc_score(y, proba[:, 1]))
    return float(roc_auc_score(y, proba, multi_class="ovr", labels=np.arange(proba.shape[1])))


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(y, pred))


def task_metrics(y: np.ndarray, proba: np.ndarray, site: np.ndarray) -> dict[str, object]:
    """AUROC and balanced accuracy overall, balanced accuracy per site and at the worst site."""
    y = np.asarray(y)
    pred = proba.argmax(1)
    per_site = {
        str(s): balanced_accuracy(y[site == s], pred[site == s]) for s in sorted(set(site.tolist()))
    }
    return {
        "auroc": auroc(y, proba),
        "bacc": balanced_accuracy(y, pred),
        "per_site_bacc": per_site,
        "worst_site_bacc": min(per_site.values()) if per_site else float("nan"),
    }


def site_leakage(
    features: np.ndarray, site: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0,
    min_per_site: int = 3,
) -> float:
    """Cross-validated balanced accuracy of a logistic probe for ``site`` within each class.

    Probing within a class means the label cannot carry the site (where the two are correlated a
    plain probe would read the site off the biology). Sites with fewer than ``min_per_site``
    slides in a class are left out of that class's probe, and the folds shrink to the smallest
    site kept (small cohorts still get a number). Classes are weighted by their slide counts;
    chance is ``1 / n_sites``. NaN when no class has two sites with enough slides.
    """
    features = np.asarray(features, dtype=np.float64)
    floor = max(2, min_per_site)
    scores, weights = [], []
    for c in np.unique(y):
        sel = y == c
        sites, counts = np.unique(site[sel], return_counts=True)
        if (counts >= floor).sum() < 2:
            continue
        ok = np.isin(site[sel], sites[counts >= floor])
        xs, ss = features[sel][ok], site[sel][ok]
        k = int(min(folds, counts[counts >= floor].min()))
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            pred = cross_val_predict(probe, xs, ss, cv=cv)
        scores.append(balanced_accuracy(ss, pred))
        weights.append(len(ss))
    if not scores:
        return float("nan")
    return float(np.average(scores, weights=weights))
