"""Findings that hold up: specific beyond the label, large enough, stable across SAE seeds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pathosae.confounders.findings import add_findings, permute_within_strata, specific_effects
from pathosae.sae.controls import best_cosines, matched_cosines, seed_cosines
from pathosae.verdict import flagged_units


def _cohort(n_patients: int = 120, seed: int = 0) -> pd.DataFrame:
    """Two slides per patient; site strongly linked to the label (as in a confounded cohort)."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n_patients)
    site = np.where(rng.random(n_patients) < 0.8, label, 1 - label) + 2 * rng.integers(0, 2, n_patients)
    patients = pd.DataFrame({"patient_id": [f"p{i}" for i in range(n_patients)],
                             "label": np.array(["low", "high"])[label],
                             "site": np.array(["A", "B", "C", "D"])[site]})
    return patients.loc[patients.index.repeat(2)].reset_index(drop=True).assign(
        slide_id=lambda f: [f"s{i}" for i in range(len(f))])


def _units(meta: pd.DataFrame, seed: int = 1) -> np.ndarray:
    """Unit 0 follows the site within label; unit 1 follows the label only; unit 2 is noise."""
    rng = np.random.default_rng(seed)
    n = len(meta)
    site_effect = meta["site"].map({"A": 0.0, "B": 1.0, "C": 2.0, "D": 3.0}).to_numpy()
    label_effect = (meta["label"] == "high").to_numpy(float) * 3.0
    return np.column_stack([site_effect + 0.3 * rng.normal(size=n),
                            label_effect + 0.3 * rng.normal(size=n),
                            rng.normal(size=n)]) + 5.0


def test_permutation_within_label_keeps_the_label_site_link_and_patients_together():
    meta = _cohort()
    shuffled = permute_within_strata(meta, "site", "label", np.random.default_rng(3))
    assert not shuffled.equals(meta["site"])
    for level in ("low", "high"):  # same sites within each label level, only reassigned
        rows = meta["label"] == level
        assert sorted(shuffled[rows]) == sorted(meta.loc[rows, "site"])
    per_patient = pd.DataFrame({"p": meta["patient_id"], "s": shuffled}).groupby("p")["s"].nunique()
    assert (per_patient == 1).all()


def test_a_unit_that_follows_the_label_is_not_specific_to_the_site():
    meta = _cohort()
    codes = _units(meta)
    kinds = {"site": "categorical", "label": "categorical"}
    effect, null = specific_effects(codes, meta, "site", "label", [], kinds, "spearman",
                                    n_permutations=30, seed=0)
    assert np.isfinite(null) and 0 < null < 0.3
    assert effect[0] > 0.8 and effect[0] > null  # the site unit: specific
    assert effect[1] <= null  # the label unit: its site link is the label's
    assert effect[2] <= null  # noise


def test_findings_need_flag_specificity_size_and_stability():
    meta = _cohort()
    codes = {"mean": _units(meta)}
    table = pd.DataFrame({"unit": [0, 1, 2, 0], "variable": ["site", "site", "site", "label"],
                          "aggregation": "mean", "level": "slide", "q": [1e-9, 1e-9, 0.5, 1e-9],
                          "flagged": [True, True, False, True]})
    kinds = {"site": "categorical", "label": "categorical"}
    stable = pd.Series([True, True, True], index=[0, 1, 2])
    out = add_findings(table, codes, meta, ["site"], "label", [], kinds, "spearman", 30, 0,
                       min_effect=0.1, stability=stable)
    assert out["finding"].tolist()[:3] == [True, False, False]
    assert pd.isna(out.loc[3, "finding"])  # the label is not a confounder of itself
    unstable = add_findings(table, codes, meta, ["site"], "label", [], kinds, "spearman", 30, 0,
                            min_effect=0.1, stability=pd.Series([False, True, True]))
    assert not unstable.loc[0, "finding"]
    too_small = add_findings(table, codes, meta, ["site"], "label", [], kinds, "spearman", 30, 0,
                             min_effect=0.99, stability=stable)
    assert not too_small.loc[0, "finding"]
    # the verdict counts only the findings as units that hold up
    assert flagged_units("site", out) == ([0, 1], [0])


def test_unit_stability_against_a_hand_built_permutation_of_decoder_atoms():
    gen = torch.Generator().manual_seed(0)
    main = torch.nn.functional.normalize(torch.randn(12, 16, generator=gen), dim=1)
    order = torch.randperm(12, generator=gen)
    signs = torch.where(torch.arange(12) % 2 == 0, 1.0, -1.0)[:, None]
    other = main[order] * signs  # the same atoms in another order, some sign-flipped
    other[order == 5] = torch.nn.functional.normalize(torch.randn(1, 16, generator=gen), dim=1)
    cosine = matched_cosines(other, main)
    assert np.allclose(np.delete(cosine, 5), 1.0)
    assert cosine[5] < 0.7  # the atom replaced by a random one has no match


def test_a_direction_the_other_seed_learned_once_is_stable_for_both_duplicates():
    gen = torch.Generator().manual_seed(1)
    main = torch.nn.functional.normalize(torch.randn(6, 32, generator=gen), dim=1)
    main[1] = torch.nn.functional.normalize(main[0] + 0.2 * main[2], dim=0)  # a near-duplicate
    other = main.clone()
    other[1] = torch.nn.functional.normalize(torch.randn(32, generator=gen), dim=0)
    best = seed_cosines(other, main, "best")
    hungarian = seed_cosines(other, main, "hungarian")
    # one-to-one, the duplicate's partner is taken; the nearest atom still finds the direction
    assert hungarian[1] < 0.7 <= best[1]
    assert np.allclose(np.delete(best, 1), 1.0) and np.allclose(np.delete(hungarian, 1), 1.0)
    assert np.allclose(best, best_cosines(other, main))
    with pytest.raises(ValueError, match="best"):
        seed_cosines(other, main, "nearest")


def test_a_site_unit_is_not_a_scanner_finding_where_the_scanner_follows_the_site():
    meta = _cohort()
    rng = np.random.default_rng(5)
    follows = meta["site"].isin(["A", "B"]).to_numpy() ^ (rng.random(len(meta)) < 0.15)
    meta = meta.assign(scanner=np.where(follows, "s1", "s2"))
    meta["scanner"] = meta.groupby("patient_id")["scanner"].transform("first")
    codes = _units(meta)
    codes[:, 2] += 2.0 * (meta["scanner"] == "s1").to_numpy()  # unit 2: a scanner unit
    table = pd.DataFrame({"unit": [0, 2, 0, 2], "variable": ["scanner", "scanner", "site", "site"],
                          "aggregation": "mean", "level": "slide", "q": 1e-9, "flagged": True})
    kinds = {"site": "categorical", "label": "categorical", "scanner": "categorical"}
    stable = pd.Series([True, True, True], index=[0, 1, 2])

    def findings(beyond: bool) -> dict[tuple[str, int], bool]:
        out = add_findings(table, {"mean": codes}, meta, ["site", "scanner"], "label", [], kinds,
                           "spearman", 30, 0, min_effect=0.1, stability=stable,
                           beyond_other_confounders=beyond)
        return {(v, u): bool(f) for v, u, f in zip(out["variable"], out["unit"], out["finding"],
                                                   strict=True)}

    label_only = findings(beyond=False)
    assert label_only[("scanner", 0)]  # beyond the label only, the site unit "is" a scanner unit
    held = findings(beyond=True)
    assert not held[("scanner", 0)] and held[("scanner", 2)]
    assert held[("site", 0)] and not held[("site", 2)]
