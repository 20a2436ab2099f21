"""Task metrics (overall, per site, worst site) and a site-leakage probe."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict

from pathosae.probe import StandardisedLogistic
from pathosae.uncertainty import (
    Resamples,
    auroc_replicates,
    bacc_replicates,
    percentile_interval,
    worst_group_bacc_replicates,
)


def auroc(y: np.ndarray, proba: np.ndarray) -> float:
    """Binary AUROC on the positive class; one-vs-rest macro AUROC for more classes."""
    if len(np.unique(y)) < 2:
        return float("nan")
    if proba.shape[1] == 2:
        return float(roc_auc_score(y, proba[:, 1]))
    return float(roc_auc_score(y, proba, multi_class="ovr", labels=np.arange(proba.shape[1])))


def balanced_accuracy(y: np.ndarray, pred: np.ndarray, weight: np.ndarray | None = None) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(y, pred, sample_weight=weight))


class TaskMetrics(TypedDict):
    auroc: float
    bacc: float
    per_site_bacc: dict[str, float]
    worst_site_bacc: float


def task_metrics(y: np.ndarray, proba: np.ndarray, site: np.ndarray) -> TaskMetrics:
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


TASK_INTERVAL_METRICS = ("auroc", "bacc", "worst_site_bacc")


def task_metric_replicates(
    res: Resamples, y: np.ndarray, proba: np.ndarray, site: np.ndarray
) -> dict[str, np.ndarray]:
    """The :func:`task_metrics` scalars (auroc, bacc, worst_site_bacc) on every patient-level
    bootstrap replicate of ``res`` (built on these slides' patients); NaN where undefined."""
    y = np.asarray(y)
    pred = proba.argmax(1)
    return {"auroc": auroc_replicates(res, y, proba), "bacc": bacc_replicates(res, y, pred),
            "worst_site_bacc": worst_group_bacc_replicates(res, y, pred, np.asarray(site))}


def interval_columns(replicates: dict[str, np.ndarray], level: float, suffix: str = "") -> dict[str, float]:
    """``{<metric><suffix>_low, <metric><suffix>_high}`` percentile bounds of each metric's
    replicates (e.g. ``bacc_shifted_low`` with ``suffix="_shifted"``)."""
    out: dict[str, float] = {}
    for name, values in replicates.items():
        out[f"{name}{suffix}_low"], out[f"{name}{suffix}_high"] = percentile_interval(values, level)
    return out


# ---- site leakage -------------------------------------------------------------------------------
SLIDE_WITHIN_CLASS = "slide_within_class"
TILE_WITHIN_CLASS = "tile_within_class"
SLIDE_CLASS_CENTRED = "slide_class_centred"


@dataclass(frozen=True)
class Leakage:
    """A site-leakage score, the estimator that produced it, and why it is NaN when it is."""

    value: float
    estimator: str | None
    reason: str | None = None

    def columns(self, prefix: str = "site_leakage") -> dict[str, object]:
        return {prefix: self.value, f"{prefix}_estimator": self.estimator,
                f"{prefix}_nan_reason": self.reason}


@dataclass(frozen=True)
class TileRows:
    """Tile vectors for the tile-level estimator of :func:`site_leakage_report`: ``features``
    (tiles × dims, or a function returning them: only called when that estimator runs), the
    slide index of each tile, and at most how many tiles per slide to use."""

    features: np.ndarray | Callable[[], np.ndarray]  # or a function that reads them when needed
    slide: np.ndarray
    max_per_slide: int = 32

    def matrix(self) -> np.ndarray:
        return np.asarray(self.features() if callable(self.features) else self.features,
                          dtype=np.float64)


def site_leakage(
    features: np.ndarray, site: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0,
    min_per_site: int = 3,
) -> float:
    """The value of :func:`site_leakage_report` (slide-level estimators only)."""
    return site_leakage_report(features, site, y, folds, seed, min_per_site).value


def site_leakage_report(
    features: np.ndarray, site: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0,
    min_per_site: int = 3, tiles: TileRows | None = None,
) -> Leakage:
    """Cross-validated balanced accuracy of a logistic probe for ``site`` that the label cannot
    carry; chance is ``1 / n_sites``. The first estimator the data supports is used:

    1. ``slide_within_class``: one probe per class on slide vectors (``features``), sites with
       at least ``min_per_site`` slides in the class, folds shrunk to the smallest site kept;
       classes weighted by their slide counts. Probing within a class means the label cannot
       carry the site where the two are correlated.
    2. ``tile_within_class`` (when ``tiles`` are given): the same per
       class on tiles (at most ``tiles.max_per_slide`` per slide, seeded), sites with at least
       two slides in the class, folds grouped by slide so no slide is in train and test;
       every slide weighs the same in the balanced accuracy.
    3. ``slide_class_centred``: one probe on slide vectors with each class's mean removed,
       over the classes that hold two or more sites, sites with at least two slides there.

    NaN (with the reason) only when nothing can be fitted: one site, every class from a single
    site (site and label cannot be told apart), or too few slides per site to cross-validate.
    """
    features = np.asarray(features, dtype=np.float64)
    site, y = np.asarray(site).astype(str), np.asarray(y)
    value = _within_class(features, site, y, folds, seed, max(2, min_per_site))
    if value is not None:
        return Leakage(value, SLIDE_WITHIN_CLASS)
    if tiles is not None:
        value = _tile_within_class(tiles.matrix(), np.asarray(tiles.slide), site, y, folds, seed,
                                   tiles.max_per_slide)
        if value is not None:
            return Leakage(value, TILE_WITHIN_CLASS)
    value = _class_centred(features, site, y, folds, seed)
    if value is not None:
        return Leakage(value, SLIDE_CLASS_CENTRED)
    return Leakage(float("nan"), None, _why_nan(site, y))


def _probe() -> StandardisedLogistic:
    return StandardisedLogistic(C=1.0, max_iter=2000)


def _kept_sites(site: np.ndarray, floor: int) -> np.ndarray:
    """Boolean mask of the rows whose site has at least ``floor`` rows."""
    sites, counts = np.unique(site, return_counts=True)
    return np.isin(site, sites[counts >= floor])


def _within_class(
    features: np.ndarray, site: np.ndarray, y: np.ndarray, folds: int, seed: int, floor: int
) -> float | None:
    scores, weights = [], []
    for c in np.unique(y):
        sel = np.flatnonzero(y == c)
        ok = sel[_kept_sites(site[sel], floor)]
        score = _cv_score(features[ok], site[ok], folds, seed)
        if score is not None:
            scores.append(score)
            weights.append(len(ok))
    return float(np.average(scores, weights=weights)) if scores else None


def _class_centred(
    features: np.ndarray, site: np.ndarray, y: np.ndarray, folds: int, seed: int
) -> float | None:
    rows, parts = [], []
    for c in np.unique(y):
        sel = np.flatnonzero(y == c)
        if len(np.unique(site[sel])) < 2:
            continue  # a one-site class only shifts the label's mean; it says nothing of the site
        rows.append(sel)
        parts.append(features[sel] - features[sel].mean(0))
    if not rows:
        return None
    idx = np.concatenate(rows)
    centred, sites = np.concatenate(parts), site[idx]
    ok = _kept_sites(sites, 2)
    return _cv_score(centred[ok], sites[ok], folds, seed)


def _cv_score(x: np.ndarray, s: np.ndarray, folds: int, seed: int) -> float | None:
    """Stratified CV balanced accuracy, or None when fewer than two sites remain."""
    _, counts = np.unique(s, return_counts=True)
    if len(counts) < 2:
        return None
    cv = StratifiedKFold(n_splits=int(min(folds, counts.min())), shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        pred = cross_val_predict(_probe(), x, s, cv=cv)
    return balanced_accuracy(s, pred)


def _tile_within_class(
    tiles: np.ndarray, tile_slide: np.ndarray, site: np.ndarray, y: np.ndarray, folds: int,
    seed: int, cap: int,
) -> float | None:
    rng = np.random.default_rng(seed)
    scores, weights = [], []
    for c in np.unique(y):
        slides = np.flatnonzero(y == c)
        slides = slides[_kept_sites(site[slides], 2)]
        if len(np.unique(site[slides])) < 2:
            continue
        rows = np.concatenate([_cap(np.flatnonzero(tile_slide == s), cap, rng) for s in slides])
        groups, tile_site = tile_slide[rows], site[tile_slide[rows]]
        n_slides_min = min(len(np.unique(groups[tile_site == s])) for s in np.unique(tile_site))
        cv = StratifiedGroupKFold(n_splits=int(min(folds, n_slides_min)), shuffle=True,
                                  random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            warnings.simplefilter("ignore", UserWarning)
            pred = cross_val_predict(_probe(), tiles[rows], tile_site, cv=cv, groups=groups)
        # Every slide weighs the same, however many tiles it has.
        per_slide = np.bincount(groups, minlength=int(groups.max()) + 1)
        scores.append(balanced_accuracy(tile_site, pred, 1.0 / per_slide[groups]))
        weights.append(len(slides))
    return float(np.average(scores, weights=weights)) if scores else None


def _cap(rows: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(rows, size=cap, replace=False)) if len(rows) > cap else rows


def _why_nan(site: np.ndarray, y: np.ndarray) -> str:
    if len(np.unique(site)) < 2:
        return "one site only: there is no site to predict"
    if all(len(np.unique(site[y == c])) < 2 for c in np.unique(y)):
        return "every class comes from a single site: site and label cannot be told apart"
    return ("fewer than two slides per site among the classes that hold two sites: too few "
            "slides to cross-validate")


def site_separation(features: np.ndarray, site: np.ndarray, y: np.ndarray) -> float:
    """Share of the within-class variance of slide vectors that lies between sites.

    Sum over classes and dimensions of n_site·|site mean − class mean|², over the within-class
    sum of squares: 0 when every site of a class has the same mean vector, 1 when the slides of
    a site are identical. A deterministic companion of the probe (whose cross-validated accuracy
    is noisy at tens of slides); classes with a single site add nothing between sites.
    """
    x = np.asarray(features, dtype=np.float64)
    site, y = np.asarray(site).astype(str), np.asarray(y)
    between = total = 0.0
    for c in np.unique(y):
        xc, sc = x[y == c], site[y == c]
        centred = xc - xc.mean(0)
        total += float(np.square(centred).sum())
        for s in np.unique(sc):
            part = centred[sc == s]
            between += float(len(part) * np.square(part.mean(0)).sum())
    return between / total if total > 0 else float("nan")
