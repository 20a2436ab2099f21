"""Permutation p-values of the association scan: exact against enumeration, valid where the
parametric F test is not (sparse units, a small site, tens of slides), and reproducible."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats

from pathosae.confounders.calibrate import permutation_pvalues
from pathosae.confounders.scan import add_qvalues, association_scan


def _sparse_null_units(n: int, n_units: int, nonzero: int, seed: int) -> np.ndarray:
    """Units zero on all but ``nonzero`` random slides: the SAE codes' typical shape."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, n_units))
    for unit in range(n_units):
        x[rng.choice(n, nonzero, replace=False), unit] = rng.exponential(size=nonzero)
    return x


def test_permutation_p_matches_exact_enumeration() -> None:
    groups = np.array(["a"] * 4 + ["b"] * 4)
    x = np.array([[0.0, 0.1, 0.0, 0.0, 0.9, 1.5, 2.0, 0.3]]).T
    table = association_scan(x, pd.DataFrame({"g": groups}), ["g"], correlation="spearman",
                             min_nonzero=0.0, max_permutations=200_000)
    ranks = stats.rankdata(x[:, 0])
    observed = abs(ranks[groups == "a"].sum() - ranks.sum() / 2)
    # every way to pick group a's four slides; two-sided rank-sum statistic, as eta² orders them
    reached = [abs(ranks[list(a)].sum() - ranks.sum() / 2) >= observed - 1e-9
               for a in combinations(range(8), 4)]
    exact = np.mean(reached)
    assert exact == 2 / 70  # only the observed split and its mirror image
    assert abs(table.loc[0, "p"] - exact) < 0.4 * exact
    assert table.loc[0, "p_parametric"] != table.loc[0, "p"]


def test_sparse_unit_in_a_small_site_gets_its_exact_tail_not_the_f_tail() -> None:
    # 40 slides, a site of 5; the unit is non-zero on 8 slides, 5 of them the small site's with
    # the 1st, 2nd, 4th, 5th and 7th largest values: the demo's false positives looked like this.
    site = np.array(["A"] * 35 + ["C"] * 5)
    x = np.zeros((40, 1))
    x[[35, 36, 37, 38, 39], 0] = [8.0, 7.0, 5.0, 4.0, 2.0]
    x[[0, 1, 2], 0] = [6.0, 3.0, 1.0]
    table = association_scan(x, pd.DataFrame({"site": site}), ["site"], correlation="spearman",
                             max_permutations=200_000, seed=0)
    # Exact: only 5-subsets of the 8 non-zero slides reach the observed rank sum (186 of ranks
    # 33..40); 11 of them do, out of C(40, 5) ways to place the small site.
    nonzero_ranks = np.arange(33, 41)
    hits = sum(sum(c) >= 186 for c in combinations(nonzero_ranks, 5))
    exact = hits / 658_008
    assert hits == 11
    assert exact / 3 < table.loc[0, "p"] < exact * 3
    assert table.loc[0, "p_parametric"] < exact / 20  # the F tail is far too light here


def test_sparse_null_units_stay_uniform() -> None:
    site = np.array(["A"] * 17 + ["B"] * 18 + ["C"] * 5)
    x = _sparse_null_units(40, 3000, nonzero=8, seed=3)
    table = association_scan(x, pd.DataFrame({"site": site}), ["site"], correlation="spearman",
                             max_permutations=20_000, seed=1)
    p = table["p"].to_numpy()
    assert 15 <= (p <= 0.01).sum() <= 50  # ~30 expected of 3,000 null units
    assert (p <= 1e-3).sum() <= 10
    assert table.loc[p > 0.1, "n_permutations"].eq(0).all()  # far from FDR: parametric kept


def test_strong_effects_keep_their_power_and_use_more_permutations() -> None:
    rng = np.random.default_rng(0)
    n = 40
    site = rng.choice(["A", "B"], n)
    x = rng.normal(size=(n, 200))
    x[:, :10] += (site == "A")[:, None] * 3.0
    table = add_qvalues(association_scan(x, pd.DataFrame({"site": site}), ["site"],
                                         max_permutations=50_000))
    assert (table.loc[:9, "q"] <= 0.05).all()
    assert (table.loc[:9, "n_permutations"] == 50_000).all()  # no permutation reaches them
    assert table.loc[:9, "p"].eq(1 / 50_001).all()  # the resolution floor
    assert table.loc[10:, "n_permutations"].isin([0, 1000, 10_000, 50_000]).all()
    assert (table.loc[10:, "q"] > 0.05).mean() > 0.95


def test_permutations_respect_covariates_and_are_reproducible() -> None:
    rng = np.random.default_rng(1)
    n = 60
    label = rng.choice(["x", "y"], n)
    site = np.where(rng.random(n) < 0.8, label, np.where(label == "x", "y", "x"))  # confounded
    x = rng.normal(size=(n, 50)) + (label == "x")[:, None] * 2.0  # label units only
    meta = pd.DataFrame({"site": site, "label": label})
    runs = [association_scan(x, meta, ["site"], covariates=["label"], max_permutations=2000,
                             seed=3) for _ in range(2)]
    pd.testing.assert_frame_equal(runs[0], runs[1])
    # With the label held, site is null: p-values spread, not piled near zero.
    assert (runs[0]["p"] <= 0.01).sum() <= 3
    unadjusted = association_scan(x, meta, ["site"], max_permutations=2000, seed=3)
    assert (unadjusted["p"] <= 0.01).sum() > 20  # site carries the label without the covariate


def test_permutation_pvalues_skip_constant_units() -> None:
    x = np.zeros((10, 2))
    x[:, 1] = np.arange(10) - 4.5
    basis = np.ones((10, 1)) / np.sqrt(10)
    effect = np.r_[np.ones(5), -np.ones(5)][:, None] / np.sqrt(10)
    p, used = permutation_pvalues(x, basis, effect, 5000, seed=0)
    assert np.isnan(p[0]) and used[0] == 0
    assert 0 < p[1] < 0.05 and used[1] >= 1000
