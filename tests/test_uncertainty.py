"""Patient-level bootstrap intervals: coverage, clustering, determinism, and their columns in the
effect table, the SAE-ception rows and the leakage table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from planted_bags import planted_bags
from scipy.stats import norm

from pathosae.config import UncertaintyConfig, load_config
from pathosae.confounders.leakage import leakage_table, probe_leakage
from pathosae.downstream import DownstreamConfig, train_downstream
from pathosae.downstream.metrics import auroc, balanced_accuracy, task_metrics
from pathosae.downstream.splits import Splits
from pathosae.edit.effects import Candidate, effect_table
from pathosae.uncertainty import (
    auroc_replicates,
    bacc_replicates,
    bootstrap_interval,
    patient_resamples,
    percentile_interval,
    random_band,
    scalar_replicates,
    slides_needed,
    worst_group_bacc_replicates,
)

TASK = ("auroc", "bacc", "worst_site_bacc")


# ---- the bootstrap itself ---------------------------------------------------------------------
def _clustered_scores(rng: np.random.Generator, n_patients: int, per_patient: int, mu: float,
                      sd_patient: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each patient one class; slide score = mu·y + patient effect + slide noise (SD 1)."""
    y_patient = rng.integers(0, 2, n_patients)
    effect = sd_patient * rng.normal(size=n_patients)
    groups = np.repeat(np.arange(n_patients), per_patient)
    y = y_patient[groups]
    score = mu * y + effect[groups] + rng.normal(size=len(groups))
    return y, score, groups


def test_intervals_cover_the_true_value_at_about_the_nominal_rate() -> None:
    """Known truth: AUROC = Φ(mu / √(2(σ_p² + 1))) for slide pairs of different patients, and
    balanced accuracy of the rule score > mu/2 is Φ(mu / 2 / √(σ_p² + 1))."""
    rng = np.random.default_rng(0)
    mu, sd_p = 1.0, 0.7
    true_auc = norm.cdf(mu / np.sqrt(2 * (sd_p**2 + 1)))
    true_bacc = norm.cdf(mu / 2 / np.sqrt(sd_p**2 + 1))
    hits = {"auroc": 0, "bacc": 0}
    repeats = 200
    for r in range(repeats):
        y, score, groups = _clustered_scores(rng, 60, 3, mu, sd_p)
        low, high = bootstrap_interval(auroc_replicates, y, score, groups, 500, 0.95, seed=r)
        hits["auroc"] += low <= true_auc <= high
        pred = (score > mu / 2).astype(int)
        low, high = bootstrap_interval(bacc_replicates, y, pred, groups, 500, 0.95, seed=r)
        hits["bacc"] += low <= true_bacc <= high
    for name, hit in hits.items():
        assert 0.9 <= hit / repeats <= 0.99, (name, hit / repeats)


def test_patients_are_resampled_with_all_their_slides() -> None:
    """With strong patient clustering, treating slides as independent understates the width."""
    rng = np.random.default_rng(1)
    y, score, groups = _clustered_scores(rng, 20, 6, 1.0, 2.0)
    slide_ids = np.arange(len(y))
    by_patient = bootstrap_interval(auroc_replicates, y, score, groups, 1000, 0.95, seed=0)
    by_slide = bootstrap_interval(auroc_replicates, y, score, slide_ids, 1000, 0.95, seed=0)
    assert by_patient[1] - by_patient[0] > 1.5 * (by_slide[1] - by_slide[0])
    res = patient_resamples(groups, 50, 0)
    weights = res.row_weights()
    for g in np.unique(groups):  # every slide of a patient is drawn as often as the patient
        rows = weights[:, groups == g]
        assert (rows == rows[:, :1]).all()
    assert (res.counts.sum(1) == len(np.unique(groups))).all()


def test_vectorised_metrics_equal_sklearn_on_the_drawn_slides() -> None:
    rng = np.random.default_rng(2)
    n = 50
    y = rng.integers(0, 3, n)
    proba = rng.dirichlet(np.ones(3), n).round(1)  # rounded: ties in the scores
    proba /= proba.sum(1, keepdims=True)
    site = rng.choice(["a", "b"], n)
    res = patient_resamples(rng.integers(0, 20, n), 100, 3)
    slow_auroc = scalar_replicates(auroc)(res, y, proba)
    np.testing.assert_allclose(auroc_replicates(res, y, proba), slow_auroc, atol=1e-12)
    np.testing.assert_allclose(auroc_replicates(res, (y == 2).astype(int), proba[:, :2]),
                               scalar_replicates(auroc)(res, (y == 2).astype(int), proba[:, :2]),
                               atol=1e-12)

    def bacc_all_classes(yy: np.ndarray, pp: np.ndarray) -> float:
        return balanced_accuracy(yy, pp.argmax(1)) if len(set(yy)) == 3 else float("nan")

    np.testing.assert_allclose(bacc_replicates(res, y, proba),
                               scalar_replicates(bacc_all_classes)(res, y, proba), atol=1e-12)

    def worst(yy: np.ndarray, pp: np.ndarray) -> float:  # the last column carries the row
        s = site[pp[:, -1].astype(int)]
        return task_metrics(yy, pp[:, :-1], s)["worst_site_bacc"] if len(set(s)) == 2 else np.nan

    with_rows = np.column_stack([proba, np.arange(n)])
    np.testing.assert_allclose(worst_group_bacc_replicates(res, y, proba, site),
                               scalar_replicates(worst)(res, y, with_rows), atol=1e-12)


def test_both_auroc_paths_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """Few rows: cumulative weights along the sorted scores; many: the patient-space form."""
    import pathosae.uncertainty as unc

    rng = np.random.default_rng(5)
    y, score, groups = _clustered_scores(rng, 25, 3, 1.0, 1.0)
    score = score.round(1)  # ties
    res = patient_resamples(groups, 200, 0)
    by_rows = auroc_replicates(res, y, score)
    monkeypatch.setattr(unc, "_BLOCK_CELLS", 10)  # patient space, one patient column per block
    np.testing.assert_allclose(auroc_replicates(res, y, score), by_rows, atol=1e-12)
    np.testing.assert_allclose(by_rows, scalar_replicates(auroc)(res, y, np.c_[-score, score]),
                               atol=1e-12)


def test_seeded_reruns_repeat_and_zero_replicates_give_nan() -> None:
    rng = np.random.default_rng(3)
    y, score, groups = _clustered_scores(rng, 15, 2, 1.0, 0.5)
    first = bootstrap_interval(auroc_replicates, y, score, groups, 300, 0.9, seed=7)
    assert first == bootstrap_interval(auroc_replicates, y, score, groups, 300, 0.9, seed=7)
    assert first != bootstrap_interval(auroc_replicates, y, score, groups, 300, 0.9, seed=8)
    assert np.isnan(bootstrap_interval(auroc_replicates, y, score, groups, 0, 0.9, seed=7)).all()


def test_undefined_replicates_are_dropped_and_too_many_give_nan() -> None:
    values = np.array([0.5, 0.6, np.nan, 0.7])
    assert percentile_interval(values, 0.5) == pytest.approx((0.55, 0.65))
    assert np.isnan(percentile_interval(np.array([0.5, np.nan, np.nan]), 0.95)).all()
    # One positive patient among two: about half the draws hold a single class.
    y, score, groups = np.array([0, 0, 1]), np.array([0.1, 0.2, 0.9]), np.array(["a", "a", "b"])
    reps = auroc_replicates(patient_resamples(groups, 1000, 0), y, score)
    assert 0.4 < np.isnan(reps).mean() < 0.6
    assert np.nanmin(reps) == np.nanmax(reps) == 1.0


def test_random_band_and_slides_needed() -> None:
    assert random_band([0.1, 0.2, 0.3, np.nan], 0.5) == pytest.approx((0.15, 0.25))
    assert np.isnan(random_band([np.nan], 0.95)).all()
    assert slides_needed(0.2, 14, 0.1) == 56  # half the width: four times the slides
    assert slides_needed(0.1, 14, 0.1) == 14
    assert slides_needed(float("nan"), 14, 0.1) is None


def test_the_config_section_has_the_documented_defaults() -> None:
    cfg = load_config(None).uncertainty
    assert (cfg.n_bootstrap, cfg.level, cfg.seed) == (1000, 0.95, 0)
    with pytest.raises(ValueError, match="greater than or equal"):
        UncertaintyConfig(n_bootstrap=-1)


# ---- the tables -------------------------------------------------------------------------------
def _with_patients(bags: object, per_patient: int) -> object:
    bags.patient = np.array([f"{p[:-1]}p{i // per_patient}" for i, p in enumerate(bags.patient)])
    return bags


@pytest.fixture(scope="module")
def splits() -> Splits:
    return Splits(planted_bags(60, 1, "train", 0.9), _with_patients(planted_bags(30, 2, "val", 0.9), 2),
                  _with_patients(planted_bags(24, 3, "test", 0.1), 2))


def _drop_site_axis(splits: Splits) -> Splits:
    def clean(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[:, 1] = 0.0  # planted_bags puts the site on axis 1
        return x

    return Splits(*(b.with_x(clean(b.x)) for b in (splits.train, splits.normal, splits.shifted)))


INTERVAL_COLUMNS = [f"{m}_{s}_{b}" for m in TASK for s in ("normal", "shifted")
                    for b in ("low", "high")] + ["delta_bacc_shifted_low", "delta_bacc_shifted_high"]


def test_effect_table_intervals(splits: Splits) -> None:
    cfg = DownstreamConfig(epochs=20, hidden_dim=8, attention_dim=4)
    cands = [Candidate("drop_site", "edit", _drop_site_axis), Candidate("same", "edit", lambda s: s)]
    base = train_downstream(splits.train, cfg, 0)
    table = effect_table(splits, cands, cfg, 0, base, ("applied",), leakage_folds=3,
                         uncertainty=UncertaintyConfig(n_bootstrap=400))
    plain = effect_table(splits, cands, cfg, 0, base, ("applied",), leakage_folds=3)
    assert set(INTERVAL_COLUMNS) <= set(table.columns)
    points = [c for c in plain.columns if c not in (*INTERVAL_COLUMNS, "seconds")]  # not timings
    pd.testing.assert_frame_equal(table[points], plain[points])  # the numbers are unchanged
    assert plain[INTERVAL_COLUMNS].isna().all().all()  # no settings, no intervals
    for m in TASK:
        for s in ("normal", "shifted"):
            low, point, high = (table[f"{m}_{s}_low"], table[f"{m}_{s}"], table[f"{m}_{s}_high"])
            assert low.notna().all(), (m, s)
            assert (low <= point).all() and (point <= high).all(), (m, s)
            assert (high > low).any(), (m, s)
    rows = table.set_index("edit")
    # Paired draws: an edit that changes nothing differs from no edit by exactly zero in every
    # replicate, though its own interval is wide.
    assert rows.loc["same", "delta_bacc_shifted_low"] == rows.loc["same", "delta_bacc_shifted_high"] == 0
    assert rows.loc["same", "bacc_shifted_high"] > rows.loc["same", "bacc_shifted_low"]
    delta = rows.loc["drop_site", "bacc_shifted"] - rows.loc["no_edit", "bacc_shifted"]
    assert rows.loc["drop_site", "delta_bacc_shifted_low"] <= delta
    assert delta <= rows.loc["drop_site", "delta_bacc_shifted_high"]
    # The model learnt the site shortcut; without the site axis the shifted test is fixed
    # beyond what the draws' noise explains.
    assert rows.loc["drop_site", "delta_bacc_shifted_low"] > 0


def test_saeception_rows_carry_intervals(splits: Splits) -> None:
    from pathosae.saeception.config import SAECeptionConfig
    from pathosae.saeception.cycle import base_model

    cfg = SAECeptionConfig(cycles=1, seeds=[0], sae_samples=1024, sae_expansion=2, sae_k=4,
                           eval_max_tiles=100, leakage_folds=3,
                           downstream={"epochs": 3, "hidden_dim": 8, "attention_dim": 4})
    _, _, row = base_model(splits, cfg, 0, uncertainty=UncertaintyConfig(n_bootstrap=200))
    for m in TASK:
        for s in ("normal", "shifted"):
            assert row[f"{m}_{s}_low"] <= row[f"{m}_{s}"] <= row[f"{m}_{s}_high"], (m, s)


# ---- leakage ----------------------------------------------------------------------------------
def test_leakage_chance_level_and_interval() -> None:
    rng = np.random.default_rng(4)
    n = 120
    patients = np.array([f"p{i // 2}" for i in range(n)])  # two slides per patient
    meta = pd.DataFrame({"patient_id": patients,
                         "random": np.repeat(rng.choice(["u", "v"], n // 2), 2),
                         "scanner": np.repeat(rng.choice(["s1", "s2"], n // 2), 2)})
    x = rng.normal(size=(n, 6))
    x[:, 0] += 2.5 * (meta["scanner"] == "s2").to_numpy()
    table = leakage_table({"embedding": x}, meta, ["random", "scanner"], site_column=None,
                          n_folds=4, seed=0, n_null=20)
    assert {"auroc_low", "auroc_high", "chance_auroc", "chance_auroc_high"} <= set(table.columns)
    rows = table.set_index("variable")
    for variable in ("random", "scanner"):
        r = rows.loc[variable]
        assert abs(r["chance_auroc"] - 0.5) < 0.08
        assert r["chance_auroc"] < r["chance_auroc_high"]
        assert r["auroc_low"] <= r["auroc"] <= r["auroc_high"]
    assert rows.loc["scanner", "auroc_low"] > rows.loc["scanner", "chance_auroc_high"]
    assert not rows.loc["random", "auroc_low"] > rows.loc["random", "chance_auroc_high"]
    # Without bootstrap settings probe_leakage leaves the interval NaN (the one-permutation
    # chance level of earlier callers is unchanged).
    score = probe_leakage(x, meta["scanner"], patients, 4, 0)
    assert score is not None and np.isnan(score.auroc_low)
    assert score.chance_auroc_high == score.chance_auroc
