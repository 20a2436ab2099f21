"""Patient-level bootstrap intervals, the random-draw null band and the slides a question needs.

Test cohorts hold tens of slides, so an accuracy moves by several points when one patient is
swapped. Every compared number gets a percentile interval from a *cluster* bootstrap: patients
are drawn with replacement and each drawn patient brings all of its slides, so slides of one
patient (which share biology, scanner and site) are never treated as independent evidence.

Resampling is done in patient space: replicate ``b`` is a vector of counts ``C[b, g]`` (how often
patient ``g`` was drawn), and each metric is computed from per-patient sums, so 1000 replicates
cost a few small matrix products and the model is never re-evaluated. Two intervals computed
from the same groups and seed use the same resamples, so differences between them are paired.

A replicate where the metric is undefined (a class of the full sample, or for the worst site a
site, missing from the draw) is dropped; when more than half are undefined the bounds are NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Seed = int | Sequence[int]
# A vectorised metric: (resamples, y, scores) -> one value per replicate (NaN where undefined).
ReplicateMetric = Callable[["Resamples", np.ndarray, np.ndarray], np.ndarray]
ScalarMetric = Callable[[np.ndarray, np.ndarray], float]

# Cells of a working array (replicates × rows, or rows × patients) above which the AUROC is
# computed in patient space / in blocks, to bound memory.
_BLOCK_CELLS = 4_000_000


@dataclass(frozen=True)
class Resamples:
    """Patient-level bootstrap draws of a set of slides.

    ``counts[b, g]``: how many times replicate ``b`` drew patient ``g``; ``patient[i]``: the
    patient index of slide (or row) ``i``.
    """

    counts: np.ndarray  # (n_boot, n_patients) float64 counts
    patient: np.ndarray  # (n_rows,) int64 patient index

    @property
    def n_boot(self) -> int:
        return int(self.counts.shape[0])

    @property
    def n_patients(self) -> int:
        return int(self.counts.shape[1])

    def per_patient(self, values: np.ndarray) -> np.ndarray:
        """Sums of row ``values`` (rows × k) per patient (patients × k)."""
        values = np.asarray(values, dtype=np.float64).reshape(len(self.patient), -1)
        out = np.zeros((self.n_patients, values.shape[1]))
        np.add.at(out, self.patient, values)
        return out

    def weighted_sums(self, values: np.ndarray) -> np.ndarray:
        """Per replicate, the sums of row ``values`` (rows × k) over the drawn rows (n_boot × k)."""
        return self.counts @ self.per_patient(values)

    def row_weights(self) -> np.ndarray:
        """How often each row is drawn in each replicate (n_boot × n_rows)."""
        return self.counts[:, self.patient]


def patient_resamples(groups: np.ndarray | Sequence[object], n_boot: int, seed: Seed = 0) -> Resamples:
    """``n_boot`` draws of the patients (``groups``, one entry per row) with replacement, each
    as many patients as there are. Deterministic for the groups and ``seed``."""
    _, patient = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    n_patients = int(patient.max()) + 1 if len(patient) else 0
    n_boot = max(int(n_boot), 0)
    if n_patients == 0 or n_boot == 0:
        return Resamples(np.zeros((n_boot, n_patients)), patient.astype(np.int64))
    draws = np.random.default_rng(seed).integers(0, n_patients, size=(n_boot, n_patients))
    offsets = (draws + n_patients * np.arange(n_boot)[:, None]).ravel()
    counts = np.bincount(offsets, minlength=n_boot * n_patients).reshape(n_boot, n_patients)
    return Resamples(counts.astype(np.float64), patient.astype(np.int64))


# ---- vectorised metrics ---------------------------------------------------------------------
def _onehot(codes: np.ndarray, n: int) -> np.ndarray:
    return (np.asarray(codes)[:, None] == np.arange(n)[None, :]).astype(np.float64)


def bacc_replicates(res: Resamples, y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Balanced accuracy of each replicate: the mean recall over the classes of ``y``
    (``pred``: predicted classes, or scores whose argmax is the prediction). NaN where a class
    of ``y`` is not drawn."""
    y, pred = np.asarray(y), _predicted(pred)
    classes, codes = np.unique(y, return_inverse=True)
    if res.n_boot == 0 or len(classes) == 0:
        return np.full(res.n_boot, np.nan)
    member = _onehot(codes, len(classes))
    total = res.weighted_sums(member)
    hits = res.weighted_sums(member * (pred == y)[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = hits / total
    return np.where((total > 0).all(1), recall.mean(1), np.nan)


def worst_group_bacc_replicates(
    res: Resamples, y: np.ndarray, pred: np.ndarray, group: np.ndarray
) -> np.ndarray:
    """The lowest per-group (e.g. per-site) balanced accuracy of each replicate; within a group
    the recall is averaged over the classes drawn there. NaN where a group is not drawn."""
    y, pred = np.asarray(y), _predicted(pred)
    groups, gcodes = np.unique(np.asarray(group).astype(str), return_inverse=True)
    classes, ccodes = np.unique(y, return_inverse=True)
    if res.n_boot == 0 or len(groups) == 0:
        return np.full(res.n_boot, np.nan)
    n_g, n_c = len(groups), len(classes)
    member = _onehot(gcodes * n_c + ccodes, n_g * n_c)
    total = res.weighted_sums(member).reshape(res.n_boot, n_g, n_c)
    hits = res.weighted_sums(member * (pred == y)[:, None]).reshape(res.n_boot, n_g, n_c)
    drawn = total > 0
    recall = np.divide(hits, total, out=np.zeros_like(hits), where=drawn)
    n_drawn = drawn.sum(2)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_group = np.where(n_drawn > 0, recall.sum(2) / n_drawn, np.nan)
    return per_group.min(1)  # NaN (undefined) as soon as one group is missing


def auroc_replicates(res: Resamples, y: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """AUROC of each replicate, as :func:`pathosae.downstream.metrics.auroc` computes it: on
    the positive class's column for two columns, else the one-vs-rest macro mean over the
    columns (``y`` holds column indices). NaN where a class is not drawn."""
    y = np.asarray(y)
    proba = np.asarray(proba, dtype=np.float64)
    if res.n_boot == 0 or len(np.unique(y)) < 2:
        return np.full(res.n_boot, np.nan)
    if proba.ndim == 1:  # scores of the positive (larger) label
        return _binary_auroc_replicates(res, y == np.unique(y)[-1], proba)
    columns = [1] if proba.shape[1] == 2 else range(proba.shape[1])
    per_class = [_binary_auroc_replicates(res, y == c, proba[:, c]) for c in columns]
    return np.mean(per_class, axis=0)


def _binary_auroc_replicates(res: Resamples, positive: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Weighted Mann-Whitney AUROC: the pair (positive i, negative j) weighs w_i·w_j, w the
    rows' draw counts. Few rows: cumulative negative weight along the sorted scores, per
    replicate. Many rows: in patient space, the quadratic form Cᵀ H C with H[g, h] the pair wins
    of patient g's positives against patient h's negatives."""
    n_pos = res.weighted_sums(positive)[:, 0]
    n_neg = res.weighted_sums(~positive)[:, 0]
    if not positive.any() or positive.all():
        return np.full(res.n_boot, np.nan)
    if res.n_boot * len(score) <= _BLOCK_CELLS:
        numerator = _sorted_wins(res.row_weights(), positive, score)
    else:
        wins = _pair_wins(res, positive, score)
        numerator = ((res.counts @ wins) * res.counts).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = numerator / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), value, np.nan)


def _sorted_wins(weights: np.ndarray, positive: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Per replicate (rows of ``weights``), the weighted count of positive-over-negative pairs,
    ties one half: along the distinct scores, positive weight × (negative weight below + half
    the negative weight level with it)."""
    _, level = np.unique(score, return_inverse=True)
    order = np.argsort(level, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(level[order]) > 0])
    w = weights[:, order]
    pos = np.add.reduceat(w * positive[order], starts, axis=1)
    neg = np.add.reduceat(w * ~positive[order], starts, axis=1)
    return (pos * (np.cumsum(neg, axis=1) - 0.5 * neg)).sum(1)


def _pair_wins(res: Resamples, positive: np.ndarray, score: np.ndarray) -> np.ndarray:
    """H[g, h]: over positives of patient g and negatives of patient h, the count of pairs where
    the positive scores higher, ties counting one half."""
    s_neg, g_neg = score[~positive], res.patient[~positive]
    order = np.argsort(s_neg, kind="stable")
    s_neg, g_neg = s_neg[order], g_neg[order]
    s_pos, g_pos = score[positive], res.patient[positive]
    below = np.searchsorted(s_neg, s_pos, side="left")
    upto = np.searchsorted(s_neg, s_pos, side="right")
    wins = np.zeros((res.n_patients, res.n_patients))
    block = max(1, _BLOCK_CELLS // max(len(s_neg), 1))
    for start in range(0, res.n_patients, block):
        cols = np.arange(start, min(start + block, res.n_patients))
        cum = np.vstack([np.zeros((1, len(cols))), np.cumsum(g_neg[:, None] == cols[None, :], 0)])
        per_pos = 0.5 * (cum[below] + cum[upto])  # strictly below + half the ties
        np.add.at(wins[:, start:start + len(cols)], g_pos, per_pos)
    return wins


def _predicted(pred: np.ndarray) -> np.ndarray:
    pred = np.asarray(pred)
    return pred.argmax(1) if pred.ndim == 2 else pred


def scalar_replicates(metric: ScalarMetric) -> ReplicateMetric:
    """Any ``metric(y, scores) -> float`` as a replicate metric: it is called once per replicate
    on the drawn rows (slow next to the vectorised ones; for metrics that have none). A
    replicate where it raises ``ValueError`` is undefined."""

    def replicates(res: Resamples, y: np.ndarray, scores: np.ndarray) -> np.ndarray:
        weights = res.row_weights().astype(np.int64)
        rows = np.arange(len(res.patient))
        out = np.full(res.n_boot, np.nan)
        for b in range(res.n_boot):
            idx = np.repeat(rows, weights[b])
            try:
                out[b] = float(metric(np.asarray(y)[idx], np.asarray(scores)[idx]))
            except ValueError:
                continue
        return out

    return replicates


# ---- intervals ------------------------------------------------------------------------------
def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of the defined replicates; NaN bounds when
    there are none or more than half are undefined."""
    values = np.asarray(replicates, dtype=np.float64).ravel()
    finite = values[np.isfinite(values)]
    if values.size == 0 or 2 * finite.size < values.size:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(low), float(high)


def bootstrap_interval(
    metric: ReplicateMetric,
    y: np.ndarray,
    proba_or_pred: np.ndarray,
    groups: np.ndarray | Sequence[object],
    n_boot: int = 1000,
    level: float = 0.95,
    seed: Seed = 0,
) -> tuple[float, float]:
    """Patient-level percentile bootstrap interval of ``metric`` (e.g. :func:`auroc_replicates`,
    :func:`bacc_replicates`, or any scalar metric through :func:`scalar_replicates`).
    ``n_boot == 0`` gives NaN bounds."""
    res = patient_resamples(groups, n_boot, seed)
    return percentile_interval(metric(res, np.asarray(y), np.asarray(proba_or_pred)), level)


def random_band(values: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The null band: the central ``level`` interval of the point estimates of random-draw edits
    (random units of the same size). An edit whose number lies inside does no better than
    chance edits of its size. NaN when no draw has a finite value."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(low), float(high)


def slides_needed(observed_width: float, n_slides: int, target_width: float) -> int | None:
    """About how many test slides give an interval of half-width ``target_width``, when
    ``n_slides`` gave ``observed_width`` (both half-widths, or both full widths).

    Assumes the width shrinks as 1/√n: more slides from the same population (same mix of
    classes, sites and slides per patient) and the same effect. Bootstrap intervals of
    accuracies follow this closely once there are tens of patients; it says nothing about
    bias (a confounded cohort stays confounded with more slides). None when a width is not a
    positive finite number.
    """
    ok = all(math.isfinite(w) and w > 0 for w in (observed_width, target_width))
    if not ok or n_slides <= 0:
        return None
    return math.ceil(n_slides * (observed_width / target_width) ** 2)
