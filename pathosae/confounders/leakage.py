"""Leakage beyond single units: cross-validated linear probes that predict a confounder.

A confounder spread thinly over many units, or left in the SAE's reconstruction error, shows up
here even when no single unit passes the association scan. Folds are split by patient (a
patient's slides never sit on both sides); leave-one-site-out is added where it applies. Each
score comes with a chance level measured the same way on permuted labels.

The table adds a patient-level bootstrap interval of each AUROC (``auroc_low`` / ``auroc_high``:
the out-of-fold scores resampled by patient, probes not refitted) and the permutation null's
spread: ``chance_auroc`` is the mean AUROC over ``n_null`` label permutations (each through the
same folds) and ``chance_auroc_high`` its upper percentile (the 95th at level 0.95). A variable
is told apart from chance when ``auroc_low > chance_auroc_high``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import LeaveOneGroupOut, StratifiedGroupKFold

from pathosae.config import UncertaintyConfig
from pathosae.errors import PathosaeError
from pathosae.probe import StandardisedLogistic
from pathosae.progress import bar
from pathosae.schema import PATIENT_ID
from pathosae.uncertainty import Resamples, auroc_replicates, patient_resamples, percentile_interval

Split = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class ProbeScore:
    """Out-of-fold scores of one probe and the same probe on permuted labels.

    ``auroc_low`` / ``auroc_high``: patient-level bootstrap interval of the AUROC (NaN without
    bootstrap settings); ``chance_auroc`` / ``chance_balanced_accuracy``: means over the label
    permutations; ``chance_auroc_high``: the permutations' AUROC at the upper percentile.
    """

    balanced_accuracy: float
    auroc: float
    chance_balanced_accuracy: float
    chance_auroc: float
    n: int
    n_classes: int
    n_folds: int
    auroc_low: float = float("nan")
    auroc_high: float = float("nan")
    chance_auroc_high: float = float("nan")

    def as_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


def make_probe(seed: int = 0, c: float = 1.0) -> StandardisedLogistic:
    """Standardised L2 logistic regression: the linear probe used everywhere in this package
    (fitted in the training rows' span when they are fewer than the columns; see probe.py)."""
    return StandardisedLogistic(C=c, max_iter=2000, random_state=seed)


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
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scored targets, their out-of-fold probabilities, the classes and the scored-row mask."""
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
        probe = make_probe(seed).fit(xk[train], target[train])
        cols = np.searchsorted(classes, probe.classes_)
        proba[np.ix_(test, cols)] = probe.predict_proba(xk[test])
    scored = np.isfinite(proba).any(axis=1)
    proba = np.nan_to_num(proba[scored])
    return target[scored], proba, classes, scored


def _auroc_replicates(
    res: Resamples, target: np.ndarray, proba: np.ndarray, classes: np.ndarray
) -> np.ndarray:
    """:func:`_scores`' AUROC on every bootstrap replicate of the scored rows."""
    if len(np.unique(target)) < 2:
        return np.full(res.n_boot, np.nan)
    if len(classes) == 2:
        return auroc_replicates(res, (target == classes[1]).astype(int), proba[:, 1])
    present = np.isin(classes, np.unique(target))
    p = proba[:, present] / np.clip(proba[:, present].sum(axis=1, keepdims=True), 1e-12, None)
    return auroc_replicates(res, np.searchsorted(classes[present], target), p)


def _scores(target: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> tuple[float, float]:
    if len(target) == 0:  # a permuted null whose every fold trained on one class
        return float("nan"), float("nan")
    predicted = classes[np.argmax(proba, axis=1)]
    bacc = balanced_accuracy_score(target, predicted)
    if len(np.unique(target)) < 2:
        return float(bacc), float("nan")
    if len(classes) == 2:
        auroc = roc_auc_score(target == classes[1], proba[:, 1])
    else:
        present = np.isin(classes, np.unique(target))
        p = proba[:, present] / np.clip(proba[:, present].sum(axis=1, keepdims=True), 1e-12, None)
        if present.sum() == 2:  # two of several levels in this fold: a binary AUROC
            auroc = roc_auc_score(target == classes[present][1], p[:, 1])
        else:
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
    uncertainty: UncertaintyConfig | None = None,
) -> ProbeScore | None:
    """Cross-validated probe of a categorical ``target`` from ``x`` (samples × features).

    ``groups`` (patient ids) keep a patient in one fold; ``splits`` overrides the folds (e.g.
    leave-one-site-out). The chance level is the same probe on ``n_null`` label permutations
    (the same folds; seeded). ``uncertainty`` adds the AUROC's patient-level bootstrap interval
    and sets the null's upper percentile (its ``level``; 0.95 without it).
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
    scored_target, proba, classes, scored = _out_of_fold(x, target, splits, seed)
    bacc, auroc = _scores(scored_target, proba, classes)
    rng = np.random.default_rng(seed)
    null = [_scores(*_out_of_fold(x, rng.permutation(target), splits, seed)[:3])
            for _ in range(n_null)]
    null_auroc = np.array([a for _, a in null], dtype=np.float64)
    level = 0.95 if uncertainty is None else uncertainty.level
    low = high = float("nan")
    if uncertainty is not None:
        res = patient_resamples(groups[scored], uncertainty.n_bootstrap, uncertainty.seed)
        low, high = percentile_interval(_auroc_replicates(res, scored_target, proba, classes), level)
    finite_null = null_auroc[np.isfinite(null_auroc)]
    return ProbeScore(
        balanced_accuracy=bacc,
        auroc=auroc,
        chance_balanced_accuracy=_finite_mean([b for b, _ in null]),
        chance_auroc=_finite_mean(null_auroc.tolist()),
        n=len(target),
        n_classes=len(np.unique(target)),
        n_folds=len(splits),
        auroc_low=low,
        auroc_high=high,
        chance_auroc_high=float(np.quantile(finite_null, level)) if finite_null.size else float("nan"),
    )


def _finite_mean(values: list[float]) -> float:
    """Mean of the finite values; NaN (quietly) when a permuted fold had one class only."""
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def leakage_table(  # noqa: PLR0913 - the probes' inputs and the null's and bootstrap's knobs
    representations: dict[str, np.ndarray],
    metadata: pd.DataFrame,
    variables: list[str],
    group_column: str = PATIENT_ID,
    site_column: str | None = "site",
    n_folds: int = 5,
    seed: int = 0,
    n_null: int = 20,
    uncertainty: UncertaintyConfig | None = None,
) -> pd.DataFrame:
    """Probe every categorical variable from every representation, by patient folds and LOSO.

    One row per representation × variable × scheme with balanced accuracy, AUROC and its
    patient-level bootstrap interval (``uncertainty``; None: the config's defaults), and the
    chance levels over ``n_null`` label permutations (``chance_auroc_high``: their upper
    percentile).
    """
    uncertainty = uncertainty or UncertaintyConfig()
    rows = []
    for variable in bar(variables, "confounders: leakage probes", unit="variable"):
        known = metadata[variable].notna().to_numpy()
        target = metadata[variable].astype(str).to_numpy()
        groups = metadata[group_column].astype(str).to_numpy()
        for scheme, splits in _schemes(metadata, variable, known, site_column):
            for name, x in representations.items():
                score = probe_leakage(x[known], target[known], groups[known], n_folds, seed, splits,
                                      n_null, uncertainty)
                if score is not None:
                    rows.append({"representation": name, "variable": variable, "scheme": scheme,
                                 **score.as_dict()})
    return pd.DataFrame(rows)


def _schemes(
    metadata: pd.DataFrame,
    variable: str,
    known: np.ndarray,
    site_column: str | None,
) -> Iterator[tuple[str, list[Split] | None]]:
    yield "patient_folds", None
    if site_column and site_column in metadata.columns and variable != site_column:
        sites = metadata[site_column].astype(str).to_numpy()[known]
        target = metadata[variable].astype(str).to_numpy()[known]
        splits = leave_one_group_out(target, sites)
        if splits:
            yield "leave_one_site_out", splits
