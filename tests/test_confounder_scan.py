"""The vectorised association scan against per-unit statsmodels fits, planted effects and nulls."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf
from scipy import stats
from statsmodels.stats.multitest import multipletests

from pathosae.confounders.aggregate import aggregate_by_group, summarise_tiles
from pathosae.confounders.confirm import mixed_model_p, permutation_p
from pathosae.confounders.findings import add_findings
from pathosae.confounders.groundtruth import (
    permuted_null,
    precision_recall,
    ranking_auroc,
    score_against_truth,
    true_effect_units,
    unit_scores,
)
from pathosae.confounders.scan import Kind, add_qvalues, association_scan, benjamini_hochberg
from pathosae.errors import PathosaeError
from pathosae.schema import PATIENT_ID


def _cohort(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "site": rng.choice(["A", "B", "C"], n),
        "scanner": rng.choice(["s1", "s2"], n),
        "age": rng.normal(60, 10, n),
        "label": rng.choice(["tumour", "normal"], n),
    })


@pytest.fixture(scope="module")
def planted() -> tuple[np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(1)
    meta = _cohort(120, 1)
    x = rng.gamma(2.0, 1.0, size=(120, 12))
    x[:, 0] += 1.5 * (meta["site"] == "B")
    x[:, 1] += 0.08 * meta["age"]
    x[:, 2] -= 1.2 * (meta["scanner"] == "s2")
    x[:, 3] += 2.0 * (meta["label"] == "tumour")
    return x, meta


def _rel_close(a: float, b: float) -> None:
    assert a == pytest.approx(b, rel=1e-8, abs=1e-14)


@pytest.mark.parametrize("covariates", [[], ["label"], ["label", "age"]])
def test_categorical_f_matches_statsmodels_anova(planted, covariates) -> None:
    x, meta = planted
    table = association_scan(x, meta, ["site", "scanner"], covariates).set_index(["variable", "unit"])
    cov_terms = " + ".join(f"C({c})" if c == "label" else c for c in covariates) or "1"
    for unit in range(6):
        data = meta.assign(y=x[:, unit])
        for var in ("site", "scanner"):
            full = smf.ols(f"y ~ {cov_terms} + C({var})", data).fit()
            anova = sm.stats.anova_lm(full, typ=2).loc[f"C({var})"]
            row = table.loc[(var, unit)]
            _rel_close(row["statistic"], anova["F"])
            _rel_close(row["p"], anova["PR(>F)"])
            eta = anova["sum_sq"] / (anova["sum_sq"] + full.ssr)
            _rel_close(row["effect"], eta)


def test_continuous_and_binary_p_match_per_unit_ols(planted) -> None:
    x, meta = planted
    table = association_scan(x, meta, ["age", "scanner"], ["label", "site"]).set_index(
        ["variable", "unit"])
    for unit in range(x.shape[1]):
        data = meta.assign(y=x[:, unit])
        fit_age = smf.ols("y ~ C(label) + C(site) + age", data).fit()
        _rel_close(table.loc[("age", unit), "p"], fit_age.pvalues["age"])
        _rel_close(table.loc[("age", unit), "slope"], fit_age.params["age"])
        assert np.sign(table.loc[("age", unit), "signed_effect"]) == np.sign(fit_age.params["age"])
        fit_sc = smf.ols("y ~ C(label) + C(site) + C(scanner)", data).fit()
        name = "C(scanner)[T.s2]"
        _rel_close(table.loc[("scanner", unit), "p"], fit_sc.pvalues[name])
        _rel_close(table.loc[("scanner", unit), "slope"], fit_sc.params[name])
        _rel_close(table.loc[("scanner", unit), "statistic"], fit_sc.tvalues[name] ** 2)


def test_spearman_without_covariates_matches_scipy(planted) -> None:
    x, meta = planted
    table = association_scan(x, meta, ["age"], correlation="spearman")
    for unit in range(4):
        rho, p = stats.spearmanr(x[:, unit], meta["age"])
        _rel_close(table.loc[unit, "signed_effect"], rho)
        _rel_close(table.loc[unit, "p"], p)


def test_bh_matches_multipletests_and_skips_nan() -> None:
    p = np.random.default_rng(0).uniform(size=200) ** 2
    np.testing.assert_allclose(benjamini_hochberg(p), multipletests(p, method="fdr_bh")[1])
    with_nan = p.copy()
    with_nan[[3, 50]] = np.nan
    q = benjamini_hochberg(with_nan)
    assert np.isnan(q[[3, 50]]).all()
    finite = np.isfinite(with_nan)
    np.testing.assert_allclose(q[finite], multipletests(with_nan[finite], method="fdr_bh")[1])


def test_planted_effects_are_found_with_direction(planted) -> None:
    x, meta = planted
    table = add_qvalues(association_scan(x, meta, ["site", "age", "scanner", "label"]))
    hits = table[table["q"] <= 0.05]
    found = set(zip(hits["unit"], hits["variable"], strict=True))
    assert {(0, "site"), (1, "age"), (2, "scanner"), (3, "label")} <= found
    assert len(found) <= 6  # 48 tests, 4 planted: few false positives
    row = table[(table["unit"] == 0) & (table["variable"] == "site")].iloc[0]
    assert row["direction"] == "B"
    row = table[(table["unit"] == 2) & (table["variable"] == "scanner")].iloc[0]
    assert row["direction"] == "s1" and row["signed_effect"] < 0


def test_null_gives_uniform_p_and_few_fdr_passes() -> None:
    rng = np.random.default_rng(5)
    meta = _cohort(150, 5)
    x = rng.normal(size=(150, 400))
    table = add_qvalues(association_scan(x, meta, ["site", "scanner", "age"], ["label"]))
    assert stats.kstest(table["p"], "uniform").pvalue > 0.01
    assert (table["q"] <= 0.05).sum() <= 2
    null = permuted_null(x, meta, ["site", "scanner"], ["label"], seed=1)
    assert null["n_tests"] == 800 and abs(null["frac_p_below_alpha"] - 0.05) < 0.03


def test_dead_units_get_nan_and_bad_inputs_raise(planted) -> None:
    x, meta = planted
    x = x.copy()
    x[:, 5] = 3.0
    table = association_scan(x, meta, ["site"])
    assert np.isnan(table.loc[5, "p"]) and table["p"].drop(5).notna().all()
    with pytest.raises(PathosaeError, match="no column"):
        association_scan(x, meta, ["hospital"])
    with pytest.raises(PathosaeError, match="rows"):
        association_scan(x[:10], meta, ["site"])


def test_missing_values_drop_rows_per_variable(planted) -> None:
    x, meta = planted
    meta = meta.copy()
    meta.loc[:9, "age"] = np.nan
    table = association_scan(x, meta, ["age", "site"]).set_index(["variable", "unit"])
    assert table.loc[("age", 0), "n"] == 110 and table.loc[("site", 0), "n"] == 120
    fit = smf.ols("y ~ age", meta.assign(y=x[:, 1]).dropna()).fit()
    _rel_close(table.loc[("age", 1), "p"], fit.pvalues["age"])


def test_aggregation_per_slide() -> None:
    codes = np.array([[0.0, 1.0], [2.0, 0.0], [4.0, 0.0], [1.0, 1.0]])
    groups, agg = aggregate_by_group(codes, ["s1", "s1", "s2", "s2"], quantile=0.5)
    assert groups == ["s1", "s2"]
    np.testing.assert_allclose(agg["mean"], [[1.0, 0.5], [2.5, 0.5]])
    np.testing.assert_allclose(agg["frac_active"], [[0.5, 0.5], [1.0, 0.5]])
    np.testing.assert_allclose(agg["quantile"], [[1.0, 0.5], [2.5, 0.5]])
    with pytest.raises(PathosaeError, match="at least one tile"):
        summarise_tiles(np.zeros((0, 3)))


def test_confirmation_agrees_with_scan() -> None:
    rng = np.random.default_rng(3)
    n_slides, tiles = 30, 8
    slides = pd.DataFrame({"slide_id": [f"s{i}" for i in range(n_slides)],
                           "site": np.repeat(["A", "B"], n_slides // 2),
                           "label": np.tile(["t", "n"], n_slides // 2)})
    slide_effect = rng.normal(0, 0.5, n_slides) + 1.5 * (slides["site"] == "B").to_numpy()
    tile_frame = slides.loc[np.repeat(np.arange(n_slides), tiles)].reset_index(drop=True)
    tile_frame["v"] = np.repeat(slide_effect, tiles) + rng.normal(0, 1, len(tile_frame))
    tile_frame["w"] = np.repeat(rng.normal(0, 0.5, n_slides), tiles) + rng.normal(
        0, 1, len(tile_frame))
    assert mixed_model_p(tile_frame, "v", "site", "categorical", {"label": "categorical"})[
        "mm_p"] < 1e-3
    assert mixed_model_p(tile_frame, "w", "site", "categorical")["mm_p"] > 0.01
    slide_values = tile_frame.groupby("slide_id", sort=False)[["v", "w"]].mean().to_numpy()
    perm = permutation_p(slide_values, slides, "site", "categorical", {"label": "categorical"},
                         n_permutations=199, seed=0)
    assert perm[0] <= 0.01 and perm[1] > 0.05


def test_ground_truth_scoring() -> None:
    rng = np.random.default_rng(2)
    n, units = 90, 20
    site = np.repeat(["A", "B", "C"], n // 3)
    clean = rng.gamma(2.0, 1.0, size=(n, units))
    planted = clean.copy()
    planted[:, :4] += 1.5 * (site == "C")[:, None]  # four true site units
    planted[:, 4] += 1.5  # moves at every site equally: not a site unit
    truth = true_effect_units(planted, clean, site)
    assert truth.tolist() == [True] * 4 + [False] * (units - 4)
    table = add_qvalues(association_scan(planted, pd.DataFrame({"site": site}), ["site"]))
    scores = score_against_truth(table, "site", truth)
    assert scores["recall"] == 1.0 and scores["precision"] >= 0.8
    assert precision_recall(np.zeros(3, bool), np.ones(3, bool))["recall"] == 0.0
    ranking = ranking_auroc(table, "site", truth)
    assert ranking["auroc"] > 0.95 and ranking["n_true_tested"] == 4
    assert ranking_auroc(table, "site", ~truth)["auroc"] < 0.1  # the ranking is not symmetric


def test_ground_truth_scores_the_findings_and_their_effects() -> None:
    rng = np.random.default_rng(3)
    n, units = 120, 12
    site = np.tile(["A", "B", "C"], n // 3)
    label = np.repeat(["x", "y"], n // 2)
    codes = rng.gamma(2.0, 1.0, size=(n, units))
    codes[:, :3] += 3.0 * (site == "C")[:, None]  # three true site units
    codes[:, 3] += 0.5 * (site == "C")  # a small site effect: not a finding at min_effect 0.2
    codes[:, 4] += 3.0 * (label == "y")  # the label's unit
    meta = pd.DataFrame({"site": site, "label": label, PATIENT_ID: [f"p{i}" for i in range(n)]})
    table = add_qvalues(association_scan(codes, meta, ["site", "label"]))
    table = table.assign(aggregation="mean", level="slide", flagged=table["q"] <= 0.05)
    kinds: dict[str, Kind] = {"site": "categorical", "label": "categorical"}
    table = add_findings(table, {"mean": codes}, meta, ["site"], "label", [], kinds, "spearman",
                         n_permutations=20, seed=0, min_effect=0.2, stability=None)
    truth = np.zeros(units, dtype=bool)
    truth[:3] = True
    scores = unit_scores(table, "site", 0.05, truth)
    assert scores["findings"] == {"n_findings": 3, "true_positives": 3, "precision": 1.0,
                                  "recall": 1.0}
    assert scores["effect_auroc"] == 1.0 and scores["recall"] == 1.0
    wrong = np.zeros(units, dtype=bool)
    wrong[4] = True  # the label's unit called the site's: no finding hits it
    assert unit_scores(table, "site", 0.05, wrong)["findings"]["recall"] == 0.0
    assert "findings" not in unit_scores(table.drop(columns="finding"), "site", 0.05, truth)


def test_rank_scan_is_calibrated_on_heavy_tailed_null_units():
    """The default rank-based scan keeps its nominal rate where outlier slides abound."""
    rng = np.random.default_rng(11)
    n_slides, n_units = 30, 3000
    meta = pd.DataFrame({"site": rng.choice(["a", "b", "c"], n_slides),
                         "label": rng.choice(["x", "y"], n_slides)})
    heavy = np.exp(3 * rng.standard_normal((n_slides, n_units)))  # log-normal, outlier slides
    heavy[rng.random((n_slides, n_units)) < 0.4] = 0.0  # sparse, like SAE codes
    table = add_qvalues(association_scan(heavy, meta, ["site"], ["label"], correlation="spearman"))
    p = table["p"].dropna().to_numpy()
    assert len(p) > 0.9 * n_units
    assert 0.03 <= (p <= 0.05).mean() <= 0.07
    assert (table["q"] <= 0.05).sum() == 0
