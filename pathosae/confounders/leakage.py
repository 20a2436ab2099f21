"""Leakage beyond single units: cross-validated linear probes that predict a confounder.

A confounder spread thinly over many units, or left in the SAE's reconstruction error, shows up
here even when no single unit passes the association scan. Folds are split by patient (a
patient's slides never sit on both sides); leave-one-site-out is added where it applies. Each
score comes with a chance level measured the same way on permuted labels.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import LeaveOneGroupOut, StratifiedGroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from pathosae.errors import PathosaeError

Split = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class ProbeScore:
    """Out-of-fold scores of one probe and the same probe on permuted labels."""

    balanced_accuracy: float
    auroc: float
    chance_balanced_accuracy: float
    chance_auroc: float
    n: int
    n_classes: int
    n_folds: int

    def as_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


def make_probe(seed: int = 0, c: float = 1.0, n_features: int | None = None) -> Pipeline:
    """Standardised L2 logistic regression: the linear probe used everywhere in this package.

    Newton-Cholesky is several times faster on narrow inputs; L-BFGS scales to wide ones
    (thousands of SAE units) where a d × d Hessian would not fit.
    """
    solver = "newton-cholesky" if n_features is not None and n_features <= 256 else "lbfgs"
    return make_pipeline(
        StandardScaler(),
        LogisticRegression(C=c, max_iter=2000, random_state=seed, solver=solver),
    )


def patient_folds(
    target: np.ndarray, groups: np.ndarray, n_folds: int, seed: int
) -> list[Split]:
    """Stratified folds that keep every patient on one side; fewer folds if patients are few."""
    n_groups = len(np.unique(groups))
    min_class = int(pd.Series(target).value_counts().min())
    folds = min(n_folds, n_groups, max(min_class, 2))
    if folds < 2 or n_groups < 2:
        return []
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(target)), target, groups))


def leave_one_group_out(target: np.ndarray, sites: np.ndarray) -> list[Split]:
    """One fold per site, kept only where training still holds every class of the target."""
    if len(np.unique(sites)) < 3:
        return []
    classes = set(np.unique(target))
    splits = LeaveOneGroupOut().split(np.zeros(len(target)), target, sites)
    return [(tr, te) for tr, te in splits if set(np.unique(target[tr])) == classes]


def _out_of_fold(
    x: np.ndarray, target: np.ndarray, splits: list[Split], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    classes = np.unique(target)
    proba = np.full((len(target), len(classes)), np.nan)
    for train, test in splits:
        if len(np.unique(target[train])) < 2:
            continue  # a permuted null can leave a fold with one class: it scores nothing
        # Columns constant on the training rows (dead SAE units) standardise to zeros and keep a
        # zero weight: dropping them gives the same probe, much faster on wide sparse codes.
        keep = np.ptp(x[train], axis=0) > 0
        if not keep.any():
            keep[:] = True
        xk = x[:, keep]
        probe = make_probe(seed, n_features=xk.shape[1]).fit(xk[train], target[train])
        cols = np.searchsorted(classes, probe.classes_)
        proba[np.ix_(test, cols)] = probe.predict_proba(xk[test])
    scored = np.isfinite(proba).any(axis=1)
    proba = np.nan_to_num(proba[scored])
    return target[scored], proba, classes


def _scores(target: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> tuple[float, float]:
    predicted = classes[np.argmax(proba, axis=1)]
    bacc = balanced_accuracy_score(target, predicted)
    if len(np.unique(target)) < 2:
        return float(bacc), float("nan")
    if len(classes) == 2:
        auroc = roc_auc_score(target == classes[1], proba[:, 1])
    else:
        present = np.isin(classes, np.unique(target))
        p = proba[:, present] / np.clip(proba[:, present].sum(axis=1, keepdims=True), 1e-12, None)
        auroc = roc_auc_score(target, p, multi_class="ovr", labels=classes[present])
    return float(bacc), float(auroc)


def probe_leakage(
    x: np.ndarray,
    target: np.ndarray | pd.Series,
    groups: np.ndarray | pd.Series,
    n_folds: int = 5,
    seed: int = 0,
    splits: list[Split] | None = None,
    n_null: int = 1,
) -> ProbeScore | None:
    """Cross-validated probe of a categorical ``target`` from ``x`` (samples × features).

    ``groups`` (patient ids) keep a patient in one fold; ``splits`` overrides the folds (e.g.
    leave-one-site-out). The chance level is the same probe on ``n_null`` label permutations.
    None when there are too few samples or classes to cross-validate.
    """
    x = np.asarray(x, dtype=np.float64)
    target = np.asarray(target).astype(str)
    groups = np.asarray(groups).astype(str)
    if x.shape[0] != len(target) or len(groups) != len(target):
        raise PathosaeError(
            f"probe inputs disagree: {x.shape[0]} rows, {len(target)} labels, {len(groups)} groups."
        )
    if not np.isfinite(x).all():
        raise PathosaeError("probe input holds NaN or inf values. Fix: check the features.")
    if len(np.unique(target)) < 2:
        return None
    splits = patient_folds(target, groups, n_folds, seed) if splits is None else splits
    if not splits:
        return None
    bacc, auroc = _scores(*_out_of_fold(x, target, splits, seed))
    rng = np.random.default_rng(seed)
    null = [_scores(*_out_of_fold(x, rng.permutation(target), splits, seed)) for _ in range(n_null)]
    return ProbeScore(
        balanced_accuracy=bacc,
        auroc=auroc,
        chance_balanced_accuracy=float(np.mean([b for b, _ in null])),
        chance_auroc=_finite_mean([a for _, a in null]),
        n=len(target),
        n_classes=len(np.unique(target)),
        n_folds=len(splits),
    )


def _finite_mean(values: list[float]) -> float:
    """Mean of the finite values; NaN (quietly) when a permuted fold had one class only."""
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def leakage_table(
    representations: dict[str, np.ndarray],
    metadata: pd.DataFrame,
    variables: list[str],
    group_column: str = "patient_id",
    site_column: str | None = "site",
    n_folds: int = 5,
    seed: int = 0,
) -> pd.DataFrame:
    """Probe every categorical variable from every representation, by patient folds and LOSO.

    One row per representation × variable × scheme with balanced accuracy, AUROC and the
    permuted-label chance levels.
    """
    rows = []
    for variable in variables:
        known = metadata[variable].notna().to_numpy()
        target = metadata[variable].astype(str).to_numpy()
        groups = metadata[group_column].astype(str).to_numpy()
        for scheme, splits in _schemes(metadata, variable, known, site_column, n_folds, seed):
            for name, x in representations.items():
                score = probe_leakage(x[known], target[known], groups[known], n_folds, seed, splits)
                if score is not None:
                    rows.append({"representation": name, "variable": variable, "scheme": scheme,
                                 **score.as_dict()})
    return pd.DataFrame(rows)


def _schemes(
    metadata: pd.DataFrame,
    variable: str,
    known: np.ndarray,
    site_column: str | None,
    n_folds: int,
    seed: int,
) -> Iterator[tuple[str, list[Split] | None]]:
    yield "patient_folds", None
    if site_column and site_column in metadata.columns and variable != site_column:
        sites = metadata[site_column].astype(str).to_numpy()[known]
        target = metadata[variable].astype(str).to_numpy()[known]
        splits = leave_one_group_out(target, sites)
        if splits:
            yield "leave_one_site_out", splits
