"""Permutation p-values for the association scan, with as many permutations as a test needs.

At tens of slides the F (and t) tails are far too light for SAE units: a sparse unit ranked over
slides is a lump of tied zeros and a few distinct values, and with a small site (five slides) the
F test gave p = 7e-8 where the permutation distribution gives 2e-5. Those far tails are exactly
where Benjamini–Hochberg looks (p ≈ alpha / number of tests), so the permuted-metadata null
passed FDR in several times more repeats than alpha. Moment-matched beta tails (tensorQTL's fix)
were still off by up to 300× on these discrete configurations, so the scan uses the permutation
p-value itself, which is exact under exchangeable slides whatever the unit's distribution.

Sequential rounds (Besag & Clifford): every unit starts with ``FIRST_ROUND`` permutations; a unit
stops once ``MIN_EXCEEDANCES`` permuted statistics reach its observed one (its p is then known to
about ±30%), the others go on with ten times more, up to ``max_permutations``. Units still short of
the count at the end get (exceedances + 1) / (permutations + 1): a valid p-value whose floor,
1 / (max_permutations + 1), is the scan's resolution. Only the few strong hits pay for the long
rounds.

The permutations are shared by all units of a round. Covariates stay adjusted (Freedman–Lane):
the residual R of the units after the covariates is permuted and residualised again; permuting
R's rows is the same as permuting the rows of the fixed bases, so a batch of permutations is one
matrix product with the unit block, never a permuted copy of the data.
"""

from __future__ import annotations

import numpy as np

FIRST_ROUND = 1000
MIN_EXCEEDANCES = 10  # stop a unit once this many permutations reach its statistic
_BATCH = 512  # permutations per matrix product
_REL_TIES = 1e-9  # permuted statistics this close to the observed one count as reaching it


def permutation_pvalues(
    x: np.ndarray, basis: np.ndarray, effect_basis: np.ndarray, max_permutations: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Permutation p-values of the units in ``x`` (rows × units, centred) and the number of
    permutations each used.

    ``basis`` spans [1, covariates] on the rows, ``effect_basis`` the residualised variable
    design (both orthonormal, as in :class:`pathosae.confounders.scan.Design`).
    """
    resid = x - basis @ (basis.T @ x)
    ss_resid = np.einsum("ij,ij->j", resid, resid)
    proj = effect_basis.T @ resid
    observed = _eta2(np.einsum("ij,ij->j", proj, proj), ss_resid)
    bases = np.hstack([basis[:, 1:], effect_basis])  # the intercept is unchanged by a permutation
    n_cov = basis.shape[1] - 1
    exceed = np.zeros(x.shape[1], dtype=np.int64)
    used = np.zeros(x.shape[1], dtype=np.int64)
    active = np.isfinite(observed)
    rng = np.random.default_rng(seed)
    round_size, done = min(FIRST_ROUND, max_permutations), 0
    while active.any() and round_size > 0:
        cols = np.flatnonzero(active)
        for start in range(0, round_size, _BATCH):
            orders = rng.permuted(np.tile(np.arange(len(x)), (min(_BATCH, round_size - start), 1)),
                                  axis=1)
            eta = _permuted_eta2(resid[:, cols], ss_resid[cols], bases, n_cov, orders)
            exceed[cols] += (eta >= observed[cols] * (1 - _REL_TIES)).sum(axis=0)
        used[cols] += round_size
        done += round_size
        active &= exceed < MIN_EXCEEDANCES
        round_size = min(done * 9, max_permutations - done)  # ten times the total so far
    pvalue = (exceed + 1) / (used + 1)
    return np.where(np.isfinite(observed), pvalue, np.nan), used


def _permuted_eta2(
    resid: np.ndarray, ss_resid: np.ndarray, bases: np.ndarray, n_cov: int, orders: np.ndarray
) -> np.ndarray:
    """eta² of every unit under each permutation in ``orders`` (permutations × units)."""
    stacked = bases[orders].transpose(0, 2, 1).reshape(-1, bases.shape[0])
    squares = np.square(stacked @ resid).reshape(len(orders), bases.shape[1], -1)
    # Freedman–Lane: the permuted residual is residualised on the covariates again
    ss_total = ss_resid - squares[:, :n_cov].sum(axis=1)
    return _eta2(squares[:, n_cov:].sum(axis=1), ss_total)


def _eta2(ss_effect: np.ndarray, ss_total: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ss_total > 0, ss_effect / ss_total, np.nan)
