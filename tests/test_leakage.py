"""Leakage probes and PathoROB metrics on cases with a known answer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pathosae.confounders.leakage import leakage_table, leave_one_group_out, probe_leakage
from pathosae.confounders.pathorob import clustering_score, pathorob_table, robustness_index
from pathosae.confounders.scan import add_qvalues, association_scan


def _spread_confounder(
    n: int, d: int, seed: int, shift: float = 0.2
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Site shift along a contrast direction hidden under a large shared factor.

    Every unit carries a shared factor (SD 3) plus small own noise (SD 0.3); site B moves the
    units by ±``shift`` with signs that sum to zero. Unit by unit the shift is ~0.07 SD, but
    along the contrast the shared factor cancels and the sites separate.
    """
    rng = np.random.default_rng(seed)
    site = np.repeat(["A", "B"], n // 2)
    direction = np.tile([1.0, -1.0], d // 2)
    shared = 3.0 * rng.normal(size=(n, 1))
    x = shared + 0.3 * rng.normal(size=(n, d)) + shift * np.outer(site == "B", direction)
    patients = np.array([f"p{i // 2}" for i in range(n)])  # two slides per patient
    return x, site, patients


def test_probe_finds_confounder_no_single_unit_carries() -> None:
    x, site, patients = _spread_confounder(200, 40, 0)
    scan = add_qvalues(association_scan(x, pd.DataFrame({"site": site}), ["site"]))
    assert (scan["q"] <= 0.05).sum() == 0  # the unit-by-unit scan sees nothing
    score = probe_leakage(x, site, patients, n_folds=5, seed=0)
    assert score is not None
    assert score.auroc > 0.9 and score.balanced_accuracy > 0.8
    assert abs(score.chance_auroc - 0.5) < 0.15


def test_probe_at_chance_on_null() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(150, 30))
    site = rng.choice(["A", "B", "C"], 150)
    score = probe_leakage(x, site, np.arange(150), n_folds=5, seed=0)
    assert score is not None and score.n_classes == 3
    assert abs(score.auroc - 0.5) < 0.1 and abs(score.balanced_accuracy - 1 / 3) < 0.1


def test_patient_folds_never_split_a_patient() -> None:
    from pathosae.confounders.leakage import patient_folds

    target = np.tile(["a", "b"], 30)
    groups = np.repeat(np.arange(20), 3)
    for train, test in patient_folds(target, groups, 5, 0):
        assert not set(groups[train]) & set(groups[test])


def test_leave_one_site_out_and_table() -> None:
    rng = np.random.default_rng(2)
    n = 120
    meta = pd.DataFrame({"site": np.repeat(["A", "B", "C", "D"], n // 4),
                         "scanner": np.tile(["s1", "s2"], n // 2),
                         "patient_id": [f"p{i}" for i in range(n)]})
    x = rng.normal(size=(n, 10))
    x[:, 0] += 2.0 * (meta["scanner"] == "s2")
    splits = leave_one_group_out(meta["scanner"].to_numpy(), meta["site"].to_numpy())
    assert len(splits) == 4
    table = leakage_table({"embedding": x}, meta, ["scanner", "site"], n_folds=4, seed=0)
    schemes = set(zip(table["variable"], table["scheme"], strict=True))
    assert ("scanner", "leave_one_site_out") in schemes
    assert ("site", "leave_one_site_out") not in schemes
    row = table[(table["variable"] == "scanner") & (table["scheme"] == "leave_one_site_out")]
    assert row["auroc"].iloc[0] > 0.9


def _brute_force_ri(x: np.ndarray, label: np.ndarray, centre: np.ndarray, k: int) -> float:
    so = os_ = 0
    for i in range(len(x)):
        dist = np.linalg.norm(x - x[i], axis=1)
        dist[i] = np.inf
        for j in np.argsort(dist, kind="stable")[:k]:
            so += label[j] == label[i] and centre[j] != centre[i]
            os_ += label[j] != label[i] and centre[j] == centre[i]
    return so / (so + os_)


def test_robustness_index_known_cases() -> None:
    rng = np.random.default_rng(3)
    label = np.repeat(["t", "n"], 40)
    centre = np.tile(np.repeat(["c1", "c2"], 20), 2)
    by_label = rng.normal(size=(80, 5)) * 0.1 + 5.0 * (label == "t")[:, None]
    by_centre = rng.normal(size=(80, 5)) * 0.1 + 5.0 * (centre == "c1")[:, None]
    # neighbours follow the biology: every neighbour with a different attribute is SO -> RI = 1
    assert robustness_index(by_label, label, centre, k=5) > 0.95
    # neighbours follow the centre: only OS -> RI = 0
    assert robustness_index(by_centre, label, centre, k=5) < 0.05
    mixed = rng.normal(size=(80, 3))
    assert robustness_index(mixed, label, centre, k=7) == pytest.approx(
        _brute_force_ri(mixed, label, centre, 7))


def test_clustering_score_known_cases() -> None:
    rng = np.random.default_rng(4)
    label = np.repeat(["t", "n"], 50)
    centre = np.tile(["c1", "c2"], 50)
    by_label = rng.normal(size=(100, 4)) * 0.1 + 4.0 * (label == "t")[:, None]
    score = clustering_score(by_label, label, centre)
    assert score["ari_label"] == pytest.approx(1.0) and score["clustering_score"] > 0.95
    by_centre = rng.normal(size=(100, 4)) * 0.1 + 4.0 * (centre == "c1")[:, None]
    assert clustering_score(by_centre, label, centre)["clustering_score"] < -0.95


def test_pathorob_table_columns() -> None:
    x, site, patients = _spread_confounder(80, 20, 5, shift=1.0)
    meta = pd.DataFrame({"site": site, "label": np.tile(["t", "n"], 40), "patient_id": patients})
    table = pathorob_table({"embedding": x}, meta, "label", ["site"], k=5, n_folds=3)
    assert set(table.columns) >= {"robustness_index", "clustering_score", "confounder_auroc"}
    assert table["confounder_auroc"].iloc[0] > 0.7
