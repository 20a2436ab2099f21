"""Controls that make a claim about an SAE unit believable.

- Seed stability: Hungarian matching of decoder atoms across two seeds (|cos| after matching).
- Permutation nulls. Permuting whole rows changes nothing an SAE sees (the set of feature vectors
  is the same), so the nulls permute each feature dimension independently: this keeps every
  dimension's marginal distribution and destroys the joint structure that dictionary atoms are
  supposed to capture.
  * ``between``: each dimension permuted over all rows. No co-activation structure is left at
    all; an SAE's FVU here is what sparsity plus marginals alone buy.
  * ``within``: each dimension permuted among the tiles of the same slide. Slide-level shifts
    (scanner, site, stain batch, per-slide means) survive, tile-level morphology does not, so a
    unit that still tracks a confounder here is a slide-level artefact.
- Concept coverage: for each concept (phenotype, confounder value, label), the best single unit's
  AUROC and how many units pass 0.9, beside a null where the concept is shuffled (across slides
  for slide-level concepts, across tiles within slides otherwise). The best of thousands of units
  is biased upwards; the null says by how much.
- The random-weights encoder twin is handled by the stage (it needs the run's feature store).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.stats import rankdata
from torch import Tensor

AUROC_PASS = 0.9


def match_decoders(w_a: Tensor, w_b: Tensor) -> dict[str, float]:
    """Hungarian matching of two dictionaries' atoms (rows) by absolute cosine similarity."""
    a = torch.nn.functional.normalize(w_a.detach().double().cpu(), dim=1)
    b = torch.nn.functional.normalize(w_b.detach().double().cpu(), dim=1)
    similarity = (a @ b.t()).abs().numpy()
    rows, cols = linear_sum_assignment(similarity, maximize=True)
    matched = similarity[rows, cols]
    return {
        "n_atoms": len(matched),
        "mean_cosine": float(matched.mean()),
        "median_cosine": float(np.median(matched)),
        "fraction_above_0.9": float((matched > 0.9).mean()),
        "fraction_above_0.7": float((matched > 0.7).mean()),
    }


def best_cosines(w_other: Tensor, w_ref: Tensor) -> np.ndarray:
    """For each reference atom, its largest |cos| with any atom of the other dictionary.

    Unlike the Hungarian matching, two reference atoms may share their best match: a direction
    the other seed learned once (or split in two) still counts as found for both.
    """
    other = torch.nn.functional.normalize(w_other.detach().double().cpu(), dim=1)
    ref = torch.nn.functional.normalize(w_ref.detach().double().cpu(), dim=1)
    return (ref @ other.t()).abs().amax(dim=1).numpy()


def seed_cosines(w_other: Tensor, w_ref: Tensor, match: str) -> np.ndarray:
    """Per reference atom, its cosine with the other seed's dictionary under ``match``
    (``hungarian``: one-to-one; ``best``: the nearest atom)."""
    if match == "hungarian":
        return matched_cosines(w_other, w_ref)
    if match == "best":
        return best_cosines(w_other, w_ref)
    raise ValueError(f"unknown match {match!r}: use 'best' or 'hungarian'")


def matched_cosines(w_est: Tensor, w_true: Tensor) -> np.ndarray:
    """For each true atom, |cos| with the estimated atom the Hungarian matching pairs it with."""
    est = torch.nn.functional.normalize(w_est.detach().double().cpu(), dim=1)
    true = torch.nn.functional.normalize(w_true.detach().double().cpu(), dim=1)
    similarity = (true @ est.t()).abs().numpy()
    rows, cols = linear_sum_assignment(similarity, maximize=True)
    out = np.zeros(true.shape[0])
    out[rows] = similarity[rows, cols]
    return out


RANK_BLOCK = 256  # columns ranked at once: 256 x 20k float32 is 20 MB
PERMUTE_BLOCK = 64  # columns gathered at once: 64 x 200k float32 is 51 MB


def permute_per_dimension(
    x: np.ndarray, seed: int, groups: np.ndarray | None = None, overwrite: bool = False
) -> np.ndarray:
    """``x`` with each column permuted independently (within ``groups`` if given): a copy, or
    ``x`` itself permuted in place with ``overwrite`` (a writeable array the caller owns).

    The draws are one ``rng.permutation`` per column (per group, groups in sorted order), in
    column order. Columns are gathered in blocks made contiguous first: a strided gather of one
    column of a C-order array touches a cache line per element, which made this the slowest
    part of the permutation controls at 200k rows.
    """
    rng = np.random.default_rng(seed)
    # In place is safe: every block is copied out before its permuted values are written back.
    out = x if overwrite and x.flags.writeable else np.empty_like(x)
    if groups is None:
        for start in range(0, x.shape[1], PERMUTE_BLOCK):
            block = np.ascontiguousarray(x[:, start:start + PERMUTE_BLOCK].T)
            for column in block:
                column[:] = column[rng.permutation(len(column))]
            out[:, start:start + PERMUTE_BLOCK] = block.T
        return out
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    members = np.argsort(inverse, kind="stable")
    bounds = np.flatnonzero(np.diff(inverse[members])) + 1
    for rows in np.split(members, bounds):
        block = np.ascontiguousarray(x[rows].T)
        for column in block:
            column[:] = column[rng.permutation(len(rows))]
        out[rows] = block.T
    return out


def column_ranks(codes: np.ndarray, overwrite: bool = False) -> np.ndarray:
    """Tied (average) ranks of every column, float32, with the zeros of sparse codes as one tie.

    SAE codes are mostly exact zeros, so only a column's non-zero entries are sorted: the zeros
    share the average of their rank positions. The ranks do not depend on any concept, so one
    call serves every concept and every shuffled null. Columns are ranked a block at a time
    (made contiguous, since each is read whole, many times); ``overwrite`` writes the ranks over
    a float32 ``codes`` the caller no longer needs, so no second rows × units matrix is held.
    """
    codes = np.asarray(codes)
    n_rows, n_cols = codes.shape
    in_place = overwrite and codes.dtype == np.float32 and codes.flags.writeable
    ranks = codes if in_place else np.empty((n_rows, n_cols), dtype=np.float32)
    for start in range(0, n_cols, RANK_BLOCK):
        block = np.ascontiguousarray(codes[:, start : start + RANK_BLOCK].T)
        out = np.empty(block.shape, dtype=np.float32)
        for j, column in enumerate(block):
            nonzero = np.flatnonzero(column)
            values = column[nonzero]
            n_zero = n_rows - len(nonzero)
            out[j] = int((values < 0).sum()) + (n_zero + 1) / 2
            if len(nonzero):
                out[j, nonzero] = rankdata(values) + np.where(values > 0, n_zero, 0)
        ranks[:, start : start + RANK_BLOCK] = out.T
    return ranks


def aurocs_from_ranks(ranks: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """AUROC of every column as a detector of ``positive`` rows (Mann-Whitney from tied ranks)."""
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return np.full(ranks.shape[1], np.nan)
    # float32 sums (no float64 copy of the ranks): AUROC error ~1e-6 at tens of thousands of rows
    rank_sums = positive.astype(ranks.dtype) @ ranks
    return (rank_sums - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def unit_aurocs(codes: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """AUROC of every unit (column) as a detector of ``positive`` rows, with tied ranks."""
    return aurocs_from_ranks(column_ranks(codes), positive)


def _shuffled_concept(positive: np.ndarray, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shuffle across groups when the concept is constant within each group, else within."""
    positive = np.asarray(positive, dtype=bool)
    frame_groups, inverse = np.unique(groups, return_inverse=True)
    per_group_any = np.bincount(inverse, weights=positive, minlength=len(frame_groups))
    sizes = np.bincount(inverse, minlength=len(frame_groups))
    if np.all((per_group_any == 0) | (per_group_any == sizes)):
        group_value = per_group_any > 0
        return rng.permutation(group_value)[inverse]
    out = positive.copy()
    for g in range(len(frame_groups)):
        rows = np.flatnonzero(inverse == g)
        out[rows] = positive[rng.permutation(rows)]
    return out


def concept_coverage(
    codes: np.ndarray,
    concepts: dict[str, np.ndarray],
    groups: np.ndarray | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, dict[str, Any]]:
    """Best unit's AUROC per concept, the count of units above 0.9, and a shuffled null
    (``overwrite``: ``codes`` may be replaced by their ranks, see :func:`column_ranks`)."""
    rng = np.random.default_rng(seed)
    ranks = column_ranks(codes, overwrite)
    out: dict[str, dict[str, Any]] = {}
    for name, positive in concepts.items():
        aurocs = aurocs_from_ranks(ranks, positive)
        if np.all(np.isnan(aurocs)):
            out[name] = {"status": "skipped", "reason": "concept is constant on these rows"}
            continue
        entry: dict[str, Any] = {
            "n_positive": int(np.sum(positive)),
            "best_unit": int(np.nanargmax(aurocs)),
            "best_auroc": float(np.nanmax(aurocs)),
            "n_units_above_0.9": int(np.sum(aurocs > AUROC_PASS)),
        }
        if groups is not None:
            null = aurocs_from_ranks(ranks, _shuffled_concept(positive, groups, rng))
            entry["null_best_auroc"] = float(np.nanmax(null))
            entry["null_n_units_above_0.9"] = int(np.sum(null > AUROC_PASS))
        out[name] = entry
    return out


def concepts_from_metadata(index: Any, columns: list[str], max_levels: int = 20) -> dict[str, np.ndarray]:
    """One-vs-rest binary concepts ``column=value`` from categorical metadata columns."""
    concepts: dict[str, np.ndarray] = {}
    for column in columns:
        if column not in index.columns:
            continue
        values = index[column].astype("string").fillna("<missing>").to_numpy()
        levels = np.unique(values)
        if len(levels) < 2 or len(levels) > max_levels:
            continue
        for level in levels:
            concepts[f"{column}={level}"] = values == level
    return concepts
