"""How well a cycle's SAE codes separate the classes: clustering metrics and monosemanticity."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import (
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
    silhouette_score,
)


def clustering_metrics(codes: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Silhouette, Davies–Bouldin and Calinski–Harabasz of the codes grouped by class, and the
    ARI between k-means clusters (k = number of classes) and the classes."""
    codes = np.asarray(codes, dtype=np.float64)
    n_classes = len(np.unique(labels))
    nan = float("nan")
    if n_classes < 2 or len(codes) <= n_classes:
        return {"silhouette": nan, "davies_bouldin": nan, "calinski_harabasz": nan, "kmeans_ari": nan}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        clusters = KMeans(n_clusters=n_classes, n_init=10, random_state=seed).fit_predict(codes)
    return {
        "silhouette": float(silhouette_score(codes, labels, random_state=seed)),
        "davies_bouldin": float(davies_bouldin_score(codes, labels)),
        "calinski_harabasz": float(calinski_harabasz_score(codes, labels)),
        "kmeans_ari": float(adjusted_rand_score(labels, clusters)),
    }


def _entropy(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.nansum(np.where(p > 0, p * np.log(p), 0.0), axis=0)


def monosemanticity(codes: np.ndarray, labels: np.ndarray, threshold: float = 0.0) -> np.ndarray:
    """Per unit: I(active; class) / H(active), active = code > threshold.

    1 means the unit fires exactly for one set of classes; 0 means firing says nothing about the
    class. NaN for units that always or never fire (zero entropy).
    """
    active = np.asarray(codes) > threshold
    classes = np.unique(labels)
    p_class = np.array([(labels == c).mean() for c in classes])  # (C,)
    p_on = active.mean(0)  # (U,)
    # joint p(active=a, class=c): (2, C, U)
    on_given = np.stack([active[labels == c].mean(0) for c in classes])  # (C, U)
    joint = np.stack([p_class[:, None] * (1 - on_given), p_class[:, None] * on_given])
    marg_a = np.stack([1 - p_on, p_on])  # (2, U)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = joint / (marg_a[:, None, :] * p_class[None, :, None])
        mi = np.nansum(np.where(joint > 0, joint * np.log(ratio), 0.0), axis=(0, 1))
    h = _entropy(marg_a)
    out = np.full(active.shape[1], np.nan)
    alive = h > 1e-12
    out[alive] = mi[alive] / h[alive]
    return out
