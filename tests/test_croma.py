"""croma's robustness metrics (RI, MaRI, CRoMa): against PathoROB's own RI, on planted
embeddings, on small cohorts, in the confounder stage and in the effect table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from planted_bags import planted_bags

from pathosae.confounders.pathorob import pathorob_table, robustness_index
from pathosae.confounders.robustness import (
    CROMA_COLUMNS,
    croma_metrics,
    croma_ri,
    croma_scoreable,
    robustness_table,
)
from pathosae.downstream.bags import Bags
from pathosae.downstream.config import DownstreamConfig
from pathosae.downstream.splits import Splits
from pathosae.edit.effects import Candidate, effect_table
from pathosae.edit.robustness import EDIT_ROBUSTNESS_COLUMNS, pooled_robustness


def _tiles(site_strength: float, n_slides: int = 48, per: int = 12, dim: int = 16,
           seed: int = 0, offset: float = 0.0) -> tuple[np.ndarray, pd.DataFrame]:
    """Tiles of slides (one per patient) over 3 sites, the label balanced within each site:
    x = label direction + site_strength · site direction + noise (+ a common offset)."""
    rng = np.random.default_rng(seed)
    slide_label = np.tile(["tumour", "normal"], n_slides // 2)
    slide_site = np.repeat(["A", "B", "C"], n_slides // 3)
    meta = pd.DataFrame({
        "label": np.repeat(slide_label, per), "site": np.repeat(slide_site, per),
        "patient_id": np.repeat([f"p{i:02d}" for i in range(n_slides)], per),
    })
    bio = np.eye(dim)[0] * (meta["label"] == "tumour").to_numpy()[:, None]
    site = np.eye(dim)[1 + pd.factorize(meta["site"])[0]]
    x = rng.normal(size=(len(meta), dim)) * 0.5 + bio + site_strength * site + offset
    return x, meta


# ---- PathoROB's RI against croma's ---------------------------------------------------------
def test_pathorob_ri_equals_croma_ri_only_on_unit_vectors_without_groups() -> None:
    """The SO/OS count is the same; the distance and the group exclusion are not."""
    x, meta = _tiles(0.7, offset=1.5)
    label, site = meta["label"].to_numpy(), meta["site"].to_numpy()
    patient = meta["patient_id"].to_numpy()
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    for k in (5, 10):
        # L2-normalised rows, every row its own group: identical to numerical precision
        assert robustness_index(unit, label, site, k) == pytest.approx(
            croma_ri(unit, label, site, None, k)[0], abs=1e-12)
    # A site that scales the vectors (a brighter scanner): Euclidean neighbours follow it, cosine
    # neighbours (croma normalises) do not see it at all.
    scaled = x * meta["site"].map({"A": 1.0, "B": 1.6, "C": 2.2}).to_numpy()[:, None]
    assert robustness_index(scaled, label, site, 10) < 0.2
    assert croma_ri(scaled, label, site, None, 10)[0] == pytest.approx(
        croma_ri(x, label, site, None, 10)[0], abs=1e-9)
    assert croma_ri(scaled, label, site, None, 10)[0] > 0.6
    # Tiles of a slide alike (a slide effect): with only the tile itself excluded its neighbours
    # are its own slide's tiles (same class, same site: they count for nothing); croma leaves
    # the patient out, so almost every tile has informative neighbours and the index moves.
    slide_effect = np.random.default_rng(1).normal(size=(48, x.shape[1]))
    alike = x + np.repeat(slide_effect, 12, axis=0)
    own, own_support = croma_ri(alike, label, site, None, 10)
    grouped, grouped_support = croma_ri(alike, label, site, patient, 10)
    assert robustness_index(alike, label, site, 10) == pytest.approx(
        croma_ri(alike / np.linalg.norm(alike, axis=1, keepdims=True), label, site, None, 10)[0],
        abs=0.1)
    assert own_support < 0.5 < 0.8 < grouped_support
    assert abs(own - grouped) > 0.03, (own, grouped)


def test_pathorob_table_reports_croma_ri_with_patients_excluded() -> None:
    x, meta = _tiles(0.7, offset=1.5)
    table = pathorob_table({"embedding": x}, meta, "label", ["site"], k=7, n_folds=3)
    row = table.iloc[0]
    ri, support = croma_ri(x, meta["label"].to_numpy(), meta["site"].to_numpy(),
                           meta["patient_id"].to_numpy(), 7)
    assert row["robustness_index"] == pytest.approx(ri, abs=1e-12)
    assert row["robustness_index_support"] == pytest.approx(support)
    assert row["robustness_index"] != pytest.approx(
        robustness_index(x, meta["label"].to_numpy(), meta["site"].to_numpy(), 7), abs=0.02)


# ---- the table on planted embeddings -------------------------------------------------------
def test_robustness_table_sees_a_planted_site() -> None:
    planted, meta = _tiles(3.0)
    clean, _ = _tiles(0.0)
    table = robustness_table({"planted": planted, "clean": clean}, meta, "label", ["site"])
    assert set(CROMA_COLUMNS) <= set(table.columns)
    got = table.set_index("representation")
    # site-driven neighbourhoods: almost only OS neighbours, every tile's margin negative
    assert got.loc["planted", "ri"] < 0.1 and got.loc["planted", "mari"] < 0.1
    assert got.loc["planted", "croma"] < -0.2 and got.loc["planted", "croma_f0"] > 0.9
    # biology-driven: SO outweighs OS, the median margin positive
    assert got.loc["clean", "ri"] > 0.7 and got.loc["clean", "mari"] > 0.7
    assert got.loc["clean", "croma"] > 0.02 and got.loc["clean", "croma_f0"] < 0.5
    assert (got["croma_support"] == 1.0).all() and (got["croma_reason"] == "").all()
    # a strong site makes most neighbours same-site same-class (SS): they carry no evidence
    assert got.loc["clean", "ri_support"] > 0.9 and got.loc["planted", "ri_support"] < 0.9
    assert (got["n"] == len(meta)).all()


def test_small_cohorts_give_nan_with_a_reason_never_an_error() -> None:
    x, meta = _tiles(1.0, n_slides=12, per=4)
    one_site = meta.assign(site="A")
    row = robustness_table({"x": x}, one_site, "label", ["site"]).iloc[0]
    assert np.isnan(row["ri"]) and np.isnan(row["croma"]) and "2+ classes" in row["croma_reason"]
    # two sites of two slides (one per class) of 4 tiles: 4 SO and 4 OS candidates, not m = 5
    rows = np.r_[0:8, 16:24]
    few = croma_metrics(x[rows], meta["label"][rows], meta["site"][rows], meta["patient_id"][rows])
    assert np.isnan(few["croma"]) and few["croma_support"] == 0.0 and np.isfinite(few["ri"])
    assert "CRoMa: no sample" in str(few["croma_reason"])
    # site C holds one class only: its tiles have no OS candidate, the rest are scored
    skew = meta.copy()
    skew.loc[(skew["site"] == "C"), "label"] = "tumour"
    row = robustness_table({"x": x}, skew, "label", ["site"]).iloc[0]
    assert 0 < row["croma_support"] < 1 and np.isfinite(row["croma"])
    assert row["croma_n"] == round(row["croma_support"] * len(meta))
    assert "CRoMa on the" in row["croma_reason"]
    keep = croma_scoreable(skew["label"].to_numpy(), skew["site"].to_numpy(),
                           skew["patient_id"].to_numpy())
    assert not keep[(skew["site"] == "C").to_numpy()].any()
    # a collapsed representation: zero margins, reported not raised
    flat = croma_metrics(np.ones((len(meta), 4)), meta["label"], meta["site"], meta["patient_id"])
    assert np.isnan(flat["croma"]) and "zero margin" in str(flat["croma_reason"])
    nan_x = x.copy()
    nan_x[0, 0] = np.nan
    assert "NaN" in str(croma_metrics(nan_x, meta["label"], meta["site"])["croma_reason"])


def test_robustness_table_is_deterministic_for_a_seed() -> None:
    x, meta = _tiles(1.0)
    first = robustness_table({"x": x}, meta, "label", ["site"], max_samples=300, seed=3)
    again = robustness_table({"x": x}, meta, "label", ["site"], max_samples=300, seed=3)
    other = robustness_table({"x": x}, meta, "label", ["site"], max_samples=300, seed=4)
    pd.testing.assert_frame_equal(first, again)
    assert first["n"].iloc[0] == 300
    assert first["ri"].iloc[0] != other["ri"].iloc[0]


def test_robustness_table_computes_representations_for_the_drawn_rows_only() -> None:
    # A function of the drawn rows (how the stage passes SAE codes) gives the same table as
    # whole matrices, and is asked for no more rows than the cap.
    x, meta = _tiles(1.0)
    meta.loc[5, "site"] = None  # rows without a level are never drawn
    asked: list[np.ndarray] = []

    def reps_of(rows: np.ndarray) -> dict[str, np.ndarray]:
        asked.append(rows)
        return {"x": x[rows], "twice": 2 * x[rows]}

    whole = robustness_table({"x": x, "twice": 2 * x}, meta, "label", ["site"],
                             max_samples=300, seed=3)
    lazy = robustness_table(reps_of, meta, "label", ["site"], max_samples=300, seed=3)
    pd.testing.assert_frame_equal(whole, lazy)
    assert [len(rows) for rows in asked] == [300]
    assert 5 not in asked[0]


# ---- the effect table ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def planted() -> Splits:
    return Splits(planted_bags(40, 1, "train", 0.9), planted_bags(20, 2, "val", 0.9),
                  planted_bags(20, 3, "test", 0.1))


def _drop_site_axis(splits: Splits) -> Splits:
    def clean(bags: Bags) -> Bags:
        x = bags.x.clone()
        x[:, 1] = 0.0  # planted_bags puts the site on axis 1
        return bags.with_x(x)

    return Splits(clean(splits.train), clean(splits.normal), clean(splits.shifted))


def test_effect_table_has_croma_columns_that_see_the_edit(planted: Splits) -> None:
    cfg = DownstreamConfig(epochs=2, hidden_dim=8, attention_dim=4)
    cands = [Candidate("drop_site_axis", "edit", _drop_site_axis)]
    table = effect_table(planted, cands, cfg, seed=0, modes=("applied",), leakage_folds=3)
    assert set(EDIT_ROBUSTNESS_COLUMNS) <= set(table.columns)
    got = table.set_index("edit")
    assert got.loc["drop_site_axis", "ri"] > got.loc["no_edit", "ri"] + 0.1
    assert got.loc["drop_site_axis", "croma"] > got.loc["no_edit", "croma"]
    assert (got["croma_support"] > 0).all()
    without = effect_table(planted, cands, cfg, seed=0, modes=("applied",), leakage_folds=3,
                           robustness=False)
    assert not set(EDIT_ROBUSTNESS_COLUMNS) & set(without.columns)


def test_pooled_robustness_is_seeded(planted: Splits) -> None:
    first = pooled_robustness(planted, seed=0, tiles_per_slide=4)
    assert first == pooled_robustness(planted, seed=0, tiles_per_slide=4)
    assert first["ri"] != pooled_robustness(planted, seed=1, tiles_per_slide=4)["ri"]


# ---- the confounder stage ------------------------------------------------------------------
def test_confounder_stage_writes_the_robustness_table(tmp_path) -> None:
    from test_confounder_stage import _config, _make_run

    from pathosae.confounders.stage import run_stage

    run = _make_run(tmp_path / "run")
    summary = run_stage(run, _config(), "stop")
    table = pd.read_parquet(run.root / "confounders" / "robustness.parquet")
    assert set(CROMA_COLUMNS) <= set(table.columns) and "settings_hash" in table
    assert {"embedding", "sae_codes", "sae_residual"} <= set(table["representation"])
    site = table[table["confounder"] == "site"].set_index("representation")
    assert site["ri"].notna().all() and (site["croma_support"] == 1.0).all()
    # the fixture's scanner follows the label exactly: nothing to compare, said so
    scanner = table[table["confounder"] == "scanner"]
    assert scanner["croma"].isna().all() and scanner["croma_reason"].str.len().gt(0).all()
    assert summary["robustness"]["site/embedding"]["ri"] == pytest.approx(
        site.loc["embedding", "ri"], abs=1e-4)
