"""Baselines and controls of the confounder analysis: stain-normalised and random-weights features,
the permuted-metadata null, counterfactual renders of synthetic tiles and ground-truth scoring."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from pathosae.confounders.controls import permuted_null_repeats, summarise_null
from pathosae.embedding.stain import HEStainNormaliser
from pathosae.synth import SynthParams, plan_cohort
from pathosae.synth.counterfactual import SynthDesign, render_tiles
from pathosae.synth.effects import cohort_effects
from pathosae.synth.slide import render_slide, render_slide_regions

PARAMS = SynthParams(slide_px_min=600, slide_px_max=700)
COORDS = np.array([[96, 128], [300, 250]])


def _design(params: SynthParams, n_slides: int = 4, seed: int = 1) -> SynthDesign:
    plans = {p.slide_id: p for p in plan_cohort(n_slides, seed, params)}
    return SynthDesign(params, seed, plans)


# ---- counterfactual renders ---------------------------------------------------------------------
def test_planted_regions_equal_the_full_slide_render() -> None:
    design = _design(PARAMS)
    plan = design.plan("synth_0001")
    effects = cohort_effects(design.seed, PARAMS)
    full = render_slide(plan, design.seed, PARAMS, effects).image
    corners, edge = np.array([[96, 128], [0, 0], [full.shape[1] - 40, 10]]), 64
    regions = render_slide_regions(plan, design.seed, PARAMS, {"planted": effects}, corners,
                                   edge)["planted"]
    for (x, y), region in zip(corners, regions, strict=True):
        inside = full[y:y + edge, x:x + edge]
        np.testing.assert_array_equal(region[:inside.shape[0], :inside.shape[1]], inside)
    assert (regions[2][:, 40:] == 255).all()  # beyond the slide's right edge: white, as read


def test_counterfactual_without_site_equals_planted_only_when_site_strength_is_zero() -> None:
    for strength, same in ((0.0, True), (1.0, False)):
        params = PARAMS.model_copy(update={"site_stain_strength": strength})
        tiles = render_tiles(_design(params), "synth_0002", COORDS, 112, 112)
        assert tiles["planted"].shape == (2, 112, 112, 3)
        assert np.array_equal(tiles["planted"], tiles["no_site"]) is same
    # The scanner counterfactual changes pixels whatever the site strength.
    assert not np.array_equal(tiles["planted"], tiles["no_scanner"])


def test_planted_tiles_match_the_slide_file(small_synth_cohort: Path) -> None:
    import openslide

    from pathosae.tiling.reader import TileGeometry, read_tile

    design = SynthDesign.load(small_synth_cohort.parent / "ground_truth")
    geom = TileGeometry("synth_0000", "", 0.5, 0.5, 224, 224.0, 0, 224, 0.5, "x", "test")
    coords = np.array([[224, 224], [448, 224]])
    rendered = render_tiles(design, "synth_0000", coords, 224, 224, {"planted": ()})["planted"]
    slide = openslide.OpenSlide(small_synth_cohort.parent / "slides" / "synth_0000.tiff")
    read = np.stack([read_tile(slide, x, y, geom) for x, y in coords])
    assert np.abs(rendered.astype(int) - read.astype(int)).mean() < 0.5  # JPEG block phase only
    with pytest.raises(Exception, match="not in this synthetic cohort"):
        design.plan("synth_9999")


# ---- stain normalisation -------------------------------------------------------------------------
def test_stain_normalisation_reduces_the_site_colour_difference() -> None:
    params = PARAMS.model_copy(update={"site_stain_strength": 2.0, "scanner_strength": 0.0})
    tiles = render_tiles(_design(params), "synth_0002", COORDS, 112, 112)
    normalise = HEStainNormaliser(min_stained_pixels=64)
    before, after = [], []
    for planted, reference in zip(tiles["planted"], tiles["no_site"], strict=True):
        (a, ok_a), (b, ok_b) = normalise(planted), normalise(reference)
        assert ok_a and ok_b and not np.array_equal(a, planted)
        before.append(np.abs(planted.mean((0, 1)) - reference.mean((0, 1))).sum())
        after.append(np.abs(a.astype(float).mean((0, 1)) - b.astype(float).mean((0, 1))).sum())
    assert np.mean(after) < 0.8 * np.mean(before)  # per-tile Macenko: reduced, not removed
    blank = np.full((32, 32, 3), 250, np.uint8)
    out, ok = normalise(blank)
    assert not ok and np.array_equal(out, blank)


# ---- permuted null ---------------------------------------------------------------------------------
def test_permuted_null_passes_about_the_expected_rate() -> None:
    rng = np.random.default_rng(0)
    n = 60
    slides = pd.DataFrame({"site": rng.choice(["A", "B", "C"], n), "label": rng.choice(["x", "y"], n)})
    codes = {"mean": rng.normal(size=(n, 400))}
    codes["mean"][:, :20] += (slides["site"] == "A").to_numpy()[:, None] * 2.0  # real effects
    null = permuted_null_repeats(codes, slides, ["site", "label"], [], {}, 0.05, seed=1, repeats=10)
    figures = summarise_null(null, 0.05)
    assert figures["repeats"] == 10 and null["n_tests"].eq(800).all()
    assert 0.03 < figures["frac_p_below_alpha"] < 0.07
    assert figures["repeats_with_any_fdr_pass"] <= 3


# ---- the stages on a tiny synthetic run ---------------------------------------------------------------
def _normaliser_fallbacks(run, manifest: Path) -> tuple[int, int]:
    """(tiles, tiles the stain normaliser returns unchanged) over the run's tiles, read here."""
    import openslide

    from pathosae.tiling.reader import load_tiles, read_tile

    normalise = HEStainNormaliser()
    slides = pd.read_csv(manifest)
    n_tiles = n_fallback = 0
    for sid, path in zip(slides["slide_id"], slides["path"], strict=True):
        coords, geom = load_tiles(run, sid)
        with openslide.OpenSlide(manifest.parent / path) as slide:
            for x, y in coords:
                n_fallback += not normalise(read_tile(slide, int(x), int(y), geom))[1]
        n_tiles += len(coords)
    return n_tiles, n_fallback


TINY = {
    "embedding": {"batch_size": 16, "num_workers": 0},
    "sae": {"expansion": 2, "k": 8, "n_samples": 4096, "batch_size": 128, "dead_window": 2048,
            "init_samples": 512, "eval_max_rows": 2000,
            "controls": {"random_encoder": True, "permuted": False, "seed_stability": False,
                         "concept_coverage": False}},
    "confounders": {"n_confirm": 0, "n_permutations": 9, "cv_folds": 2, "k_neighbors": 3},
}


@pytest.mark.slow
def test_tiny_run_writes_baselines_controls_and_ground_truth(
    small_synth_cohort: Path, tmp_path: Path
) -> None:
    from pathosae.schema import RANDOM_ENCODER_SAE
    from pathosae.workflow import prepare_run, run_pipeline

    config = tmp_path / "config.yaml"
    # Ground-truth scoring happens only when the config names the synthetic cohort's folder.
    truth_dir = small_synth_cohort.parent / "ground_truth"
    config.write_text(yaml.safe_dump({**TINY, "ground_truth": str(truth_dir)}), encoding="utf-8")
    run, cfg = prepare_run(small_synth_cohort, tmp_path / "run", config)
    run_pipeline(run, cfg, until="confounders", echo=lambda _: None)
    embed = run.read_state()["stages"]["embed"]["summary"]
    assert set(embed["baselines"]) == {"random_weights", "stain_normalised"}
    # The fallback count is the number of tiles the normaliser cannot handle, counted here
    # tile by tile from the slides.
    n_tiles, n_fallback = _normaliser_fallbacks(run, small_synth_cohort)
    stain = embed["baselines"]["stain_normalised"]
    assert stain["normaliser_fallback_tiles"] == n_fallback < n_tiles
    assert stain["tiles"] == n_tiles

    encoder = cfg.embedding.encoder
    sid = sorted(p.stem for p in run.features_dir(encoder).glob("*.h5"))[0]
    with h5py.File(run.features_path(encoder, sid)) as raw, \
            h5py.File(run.features_path(f"{encoder}_stainnorm", sid)) as norm, \
            h5py.File(run.features_path(f"{encoder}_random", sid)) as rand:
        assert raw["features"].shape == norm["features"].shape == rand["features"].shape
        assert not np.allclose(raw["features"][:], norm["features"][:])
        assert "NormalizeHEStains" in norm.attrs["pixel_transform"] and rand.attrs["random_weights"]
    assert (run.sae_dir("topk") / RANDOM_ENCODER_SAE / "sae.safetensors").is_file()

    out = run.root / "confounders"
    summary = yaml.safe_load((out / "summary.json").read_text())
    assert {b["status"] for b in summary["baselines"].values()} == {"scored"}
    leakage = pd.read_parquet(out / "leakage.parquet")
    assert {"embedding_stainnorm", "embedding_random", "sae_codes_random"} <= set(
        leakage["representation"])
    controls = pd.read_parquet(out / "controls.parquet")
    assert set(controls["representation"]) == {"sae", "sae_random"}
    assert (controls["control"] == "permuted_null").sum() == 2 * 20
    truth = pd.read_parquet(out / "groundtruth.parquet")
    assert set(truth["effect"]) == {"site", "scanner"}
    gt = summary["ground_truth"]
    assert gt["planted_vs_stored_cosine"] > 0.99  # the render is the slide the pipeline read
    # Precision and recall follow from the scan's q-values and the true units, counted here.
    assoc = pd.read_parquet(out / "associations.parquet")
    alpha = cfg.confounders.fdr_alpha
    for effect in ("site", "scanner"):
        rows = truth[truth["effect"] == effect].sort_values("unit")
        assert rows["unit"].tolist() == list(range(len(rows)))  # one row per SAE unit
        hits = assoc[(assoc["variable"] == effect) & (assoc["q"] <= alpha)]
        flagged = set(hits["unit"].astype(int))
        assert set(rows.loc[rows["flagged"], "unit"]) == flagged
        true_units = set(rows.loc[rows["true_unit"], "unit"])
        both = len(flagged & true_units)
        figures = gt[effect]
        assert figures["n_true"] == len(true_units) > 0
        assert figures["n_flagged"] == len(flagged) and figures["true_positives"] == both
        assert figures["recall"] == pytest.approx(both / len(true_units), abs=1e-4)
        slide_level = assoc[(assoc["variable"] == effect) & (assoc["level"] == "slide")]
        assert figures["n_tested"] == slide_level.loc[slide_level["p"].notna(), "unit"].nunique()
        if flagged:
            assert figures["precision"] == pytest.approx(both / len(flagged), abs=1e-4)
        else:
            assert figures["precision"] is None  # undefined with nothing flagged: null
        # The findings (what the report headlines) are scored the same way.
        is_finding = assoc["finding"].fillna(False).astype(bool)
        found = set(assoc.loc[(assoc["variable"] == effect) & is_finding, "unit"].astype(int))
        assert set(rows.loc[rows["finding"], "unit"]) == found
        assert figures["findings"]["n_findings"] == len(found)
        assert figures["findings"]["true_positives"] == len(found & true_units)
    again = run_pipeline(run, cfg, stages=["confounders"], echo=lambda _: None)
    assert again["confounders"].get("skipped")
