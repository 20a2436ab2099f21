"""The synthetic cohort: real slides OpenSlide reads, planted biology and confounders measured back."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import openslide
import pandas as pd
import pytest
from pydantic import ValidationError
from scipy import ndimage
from typer.testing import CliRunner

from pathosae.errors import ConfigError
from pathosae.slides import slide_mpp
from pathosae.synth import (
    CLASS_NAMES,
    PHENOTYPES,
    SynthParams,
    generate_cohort,
    load_phenotype_map,
    plan_cohort,
    tile_phenotype_composition,
)
from pathosae.synth.effects import cohort_effects
from pathosae.synth.slide import render_slide
from pathosae.synth.slide_writer import write_slide

TINY = SynthParams(slide_px_min=600, slide_px_max=700)


def _truth(manifest: Path) -> pd.DataFrame:
    return pd.read_csv(manifest.parent / "ground_truth" / "slides.csv")


def _read_level0(path: Path) -> np.ndarray:
    slide = openslide.OpenSlide(str(path))
    rgba = slide.read_region((0, 0), 0, slide.dimensions)
    return np.asarray(rgba.convert("RGB"))


def _level0(classes: np.ndarray, downsample: int) -> np.ndarray:
    return np.repeat(np.repeat(classes, downsample, axis=0), downsample, axis=1)


# --- slide files --------------------------------------------------------------------------------


def test_openslide_reads_the_slides_as_pyramids_at_half_a_micron(small_synth_cohort):
    cohort = pd.read_csv(small_synth_cohort)
    truth = _truth(small_synth_cohort).set_index("slide_id")
    for row in cohort.itertuples():
        slide = openslide.OpenSlide(str(small_synth_cohort.parent / row.path))
        assert slide.properties["openslide.vendor"] == "generic-tiff"
        assert slide.level_count > 1
        assert slide.dimensions == (truth.loc[row.slide_id, "width"], truth.loc[row.slide_id, "height"])
        assert slide.level_downsamples[1] == pytest.approx(2.0, rel=1e-2)
        assert max(slide.level_dimensions[-1]) < 512
        assert slide_mpp(slide) == pytest.approx(0.5)
        # OpenSlide 4 turns the resolution tags into openslide.mpp-x itself.
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)


def test_glass_is_bright_and_tissue_follows_the_phenotype_map(small_synth_cohort):
    cohort = pd.read_csv(small_synth_cohort)
    gt_dir = small_synth_cohort.parent / "ground_truth"
    row = cohort.iloc[0]
    image = _read_level0(small_synth_cohort.parent / row.path).astype(np.float64)
    classes, names, downsample = load_phenotype_map(gt_dir, row.slide_id)
    pixel_class = _level0(classes, downsample)
    assert pixel_class.shape == image.shape[:2]
    brightness = image.mean(axis=2)
    glass = brightness[pixel_class == 0]
    assert glass.mean() > 225 and np.percentile(glass, 5) > 200
    tissue = brightness[pixel_class > 0]
    assert tissue.mean() < glass.mean() - 30
    means = {names[k]: brightness[pixel_class == k].mean() for k in np.unique(pixel_class) if k}
    if "lymphocyte" in means and "stroma" in means:
        assert means["lymphocyte"] < means["stroma"]  # packed dark nuclei vs pink fibres
    if "fat" in means:
        assert means["fat"] == max(means.values())  # empty vacuoles


# --- determinism ----------------------------------------------------------------------------------


def _cohort_bytes(out: Path) -> dict[str, bytes]:
    files = sorted(p for p in out.rglob("*") if p.is_file() and "records" not in p.parts)
    return {str(p.relative_to(out)): p.read_bytes() for p in files}


def test_same_seed_gives_the_same_bytes_and_another_seed_differs(tmp_path):
    first = generate_cohort(tmp_path / "a", n_slides=2, seed=3, params=TINY).parent
    again = generate_cohort(tmp_path / "b", n_slides=2, seed=3, params=TINY, workers=2).parent
    other = generate_cohort(tmp_path / "c", n_slides=2, seed=4, params=TINY).parent
    assert _cohort_bytes(first) == _cohort_bytes(again)
    slide = "slides/synth_0000.tiff"
    assert (first / slide).read_bytes() != (other / slide).read_bytes()


def test_a_slide_does_not_depend_on_the_cohort_size(tmp_path):
    one = generate_cohort(tmp_path / "one", n_slides=1, seed=5, params=TINY).parent
    two = generate_cohort(tmp_path / "two", n_slides=2, seed=5, params=TINY).parent
    slide = "slides/synth_0000.tiff"
    assert (one / slide).read_bytes() == (two / slide).read_bytes()


def test_rerun_reuses_finished_slides(tmp_path):
    manifest = generate_cohort(tmp_path, n_slides=2, seed=1, params=TINY)
    slide = tmp_path / "slides" / "synth_0001.tiff"
    before = slide.stat().st_mtime_ns
    assert generate_cohort(tmp_path, n_slides=2, seed=1, params=TINY) == manifest
    assert slide.stat().st_mtime_ns == before
    # New settings invalidate the finished slides.
    generate_cohort(tmp_path, n_slides=2, seed=1, params=TINY.model_copy(update={"mpp": 0.25}))
    assert slide.stat().st_mtime_ns != before
    assert slide_mpp(openslide.OpenSlide(str(slide))) == pytest.approx(0.25)


# --- labels, sites and splits ---------------------------------------------------------------------


def test_label_follows_the_planted_phenotype_fraction(small_synth_cohort):
    truth = _truth(small_synth_cohort)
    params = SynthParams()
    gt_dir = small_synth_cohort.parent / "ground_truth"
    assert set(truth["label"]) == {"low", "high"}
    for row in truth.itertuples():
        classes, names, _ = load_phenotype_map(gt_dir, row.slide_id)
        tissue = classes[classes > 0]
        measured = np.mean(tissue == names.index(params.label_phenotype))
        assert measured == pytest.approx(row.frac_tumour, abs=1e-5)
        low, high = params.high_fraction if row.label == "high" else params.low_fraction
        assert low - 0.03 <= measured <= high + 0.03, (row.slide_id, row.label, measured)
        fractions = np.array([getattr(row, f"frac_{name}") for name in PHENOTYPES])
        assert fractions.sum() == pytest.approx(1.0, abs=1e-5)  # CSV keeps 6 digits


def test_manifest_matches_the_design_and_patients_keep_one_label(small_synth_cohort):
    cohort = pd.read_csv(small_synth_cohort)
    assert list(cohort.columns) == [
        "slide_id", "path", "patient_id", "label", "site", "scanner", "stain_batch", "split"
    ]
    assert "mpp" not in cohort.columns  # the slides carry their own resolution
    plans = plan_cohort(len(cohort), 0, SynthParams(slide_px_min=900, slide_px_max=1100))
    assert list(cohort["slide_id"]) == [p.slide_id for p in plans]
    assert list(cohort["label"]) == [p.label for p in plans]
    per_patient = cohort.groupby("patient_id")[["label", "site", "split"]].nunique()
    assert (per_patient == 1).all().all()


def _site_match_rate(frame: pd.DataFrame) -> float:
    return float(frame["site_matches_label"].mean())


def _cramers_v(frame: pd.DataFrame) -> float:
    table = pd.crosstab(frame["label"], frame["site"]).to_numpy().astype(float)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    chi2 = ((table - expected) ** 2 / expected).sum()
    return float(np.sqrt(chi2 / (table.sum() * (min(table.shape) - 1))))


def test_train_split_carries_the_planted_confounding_and_test_does_not():
    params = SynthParams(confounding=0.8, n_sites=3)
    design = pd.DataFrame([p.as_row() for p in plan_cohort(900, 11, params)])
    train = design[design["split"] == "train"]
    test = design[design["split"] == "test"]
    assert _site_match_rate(train) == pytest.approx(0.8 + 0.2 / 3, abs=0.04)
    assert _site_match_rate(test) == pytest.approx(1 / 3, abs=0.07)
    assert _cramers_v(train) > 0.6 > 0.15 > _cramers_v(test)
    assert len(test) / len(design) == pytest.approx(params.test_fraction, abs=0.05)
    assert train["label"].value_counts(normalize=True).min() > 0.4


def test_reversed_test_split_flips_the_label_site_link():
    params = SynthParams(confounding=0.9, n_sites=2, test_shift="reversed")
    design = pd.DataFrame([p.as_row() for p in plan_cohort(600, 2, params)])
    train = design[design["split"] == "train"]
    test = design[design["split"] == "test"]
    assert _site_match_rate(train) > 0.85
    assert _site_match_rate(test) < 0.15


def test_no_confounding_makes_site_independent_of_label():
    design = pd.DataFrame([p.as_row() for p in plan_cohort(900, 0, SynthParams(confounding=0))])
    train = design[design["split"] == "train"]
    assert _site_match_rate(train) == pytest.approx(1 / 3, abs=0.06)
    assert _cramers_v(train) < 0.15


# --- confounders measured in the pixels ----------------------------------------------------------


def _render_to_file(tmp_path: Path, plan, params: SynthParams, seed: int = 7) -> tuple[np.ndarray, dict]:
    rendered = render_slide(plan, seed, params, cohort_effects(seed, params))
    path = tmp_path / f"{plan.slide_id}_{plan.site}_{plan.scanner}.tiff"
    write_slide(path, rendered.image, params.mpp, int(rendered.record["scanner_jpeg_quality"]), "t")
    return _read_level0(path).astype(np.float64), {"classes": rendered.classes, **rendered.record}


def test_site_changes_the_stain_by_the_planted_amount(tmp_path):
    """Same tissue (same slide stream) at each site, scanner effect off: unmixing the mean optical
    density of the tissue with each slide's recorded stain vectors recovers the planted scales."""
    params = TINY.model_copy(update={"scanner_strength": 0.0, "slide_stain_jitter": 0.0})
    plan = plan_cohort(1, 7, params)[0]
    measured, planted = [], []
    for site in range(params.n_sites):
        image, record = _render_to_file(tmp_path, dataclasses.replace(plan, site=site), params)
        tissue = record["classes"] > 0
        od = -np.log(np.clip(image[tissue], 1, 255) / 255).mean(axis=0)
        od -= -np.log(np.clip(image[~tissue], 1, 255) / 255).mean(axis=0)  # glass
        stains = np.array([[record[f"h_vector_{c}"], record[f"e_vector_{c}"]] for c in "rgb"])
        amounts, *_ = np.linalg.lstsq(stains, od, rcond=None)
        measured.append(amounts)
        planted.append([record["stain_h_scale"], record["stain_e_scale"]])
    measured_log, planted_log = np.log(measured), np.log(planted)
    assert np.ptp(planted_log, axis=0).max() > 0.2  # the sites really differ
    # Differences between sites, measured in the pixels, equal the planted ones.
    np.testing.assert_allclose(
        measured_log - measured_log[0], planted_log - planted_log[0], atol=0.05
    )


def test_scanner_changes_colour_sharpness_and_noise(tmp_path):
    params = TINY.model_copy(update={"site_stain_strength": 0.0, "slide_stain_jitter": 0.0})
    plan = plan_cohort(1, 7, params)[0]
    effects = cohort_effects(7, params).scanner
    measured = {}
    for scanner in (0, 1):
        image, record = _render_to_file(tmp_path, dataclasses.replace(plan, scanner=scanner), params)
        glass = image[record["classes"] == 0]
        open_glass = ~ndimage.binary_dilation(record["classes"] > 0, iterations=12)
        steps = np.diff(image, axis=1)[open_glass[:, 1:] & open_glass[:, :-1]]
        tissue = record["classes"] > 0
        pairs = tissue[:, 1:] & tissue[:, :-1]
        measured[scanner] = {
            "glass_rgb": glass.mean(axis=0),
            "glass_noise": steps.std(axis=0).mean() / np.sqrt(2),
            "sharpness": np.abs(np.diff(image.mean(axis=2), axis=1))[pairs].mean(),
        }
    sharp, blurry = sorted((0, 1), key=lambda j: effects[j].blur_sigma_px)
    assert effects[blurry].blur_sigma_px > effects[sharp].blur_sigma_px + 0.5
    assert measured[blurry]["sharpness"] < 0.8 * measured[sharp]["sharpness"]
    # Sensor noise survives JPEG only in part, yet the noisier scanner stays clearly noisier.
    assert measured[blurry]["glass_noise"] > 1.3 * measured[sharp]["glass_noise"]
    assert effects[blurry].jpeg_quality < effects[sharp].jpeg_quality
    # Colour response: glass through each scanner's gain and gamma, as planted.
    for j in (0, 1):
        e = effects[j]
        glass_in = 255 * np.exp(-0.035)
        expected = 255 * np.array([e.gain_r, e.gain_g, e.gain_b]) * (glass_in / 255) ** e.gamma
        np.testing.assert_allclose(measured[j]["glass_rgb"], np.minimum(expected, 255), atol=2.5)
    ratio = measured[0]["glass_rgb"] / measured[1]["glass_rgb"]
    assert np.ptp(ratio) > 0.02  # the scanners tint the glass differently


def test_zero_strength_leaves_no_site_or_scanner_effect():
    params = SynthParams(site_stain_strength=0.0, scanner_strength=0.0)
    effects = cohort_effects(0, params)
    assert len({(e.h_scale, e.e_scale, e.h_hue_deg) for e in effects.batch.values()}) == 1
    assert len({dataclasses.astuple(e) for e in effects.scanner.values()}) == 1


# --- ground-truth composition --------------------------------------------------------------------


def test_tile_composition_is_exact_and_sums_to_one_on_tissue(small_synth_cohort):
    gt_dir = small_synth_cohort.parent / "ground_truth"
    truth = _truth(small_synth_cohort).iloc[1]
    classes, _, downsample = load_phenotype_map(gt_dir, truth.slide_id)
    pixel_class = _level0(classes, downsample)
    size = 224
    grid = np.arange(0, max(truth.width, truth.height), 150)  # off the 4-px cells, off the edge
    coords = np.array([(x, y) for y in grid for x in grid if x < truth.width and y < truth.height])
    frame = tile_phenotype_composition(gt_dir, truth.slide_id, coords, size)
    assert list(frame.columns) == ["x", "y", "tissue_fraction", *PHENOTYPES, "dominant"]
    on_tissue = frame["tissue_fraction"] > 0
    assert on_tissue.any() and (~on_tissue).any()
    np.testing.assert_allclose(frame.loc[on_tissue, list(PHENOTYPES)].sum(axis=1), 1.0)
    assert frame.loc[~on_tissue, list(PHENOTYPES)].isna().all().all()
    assert (frame.loc[~on_tissue, "dominant"] == "background").all()
    # Independent count on the level-0 class image.
    for row in frame.itertuples():
        box = pixel_class[row.y : row.y + size, row.x : row.x + size]
        counts = np.bincount(box.ravel(), minlength=len(CLASS_NAMES))
        assert row.tissue_fraction == pytest.approx(counts[1:].sum() / size**2, abs=1e-9)
        if counts[1:].sum():
            expected = counts[1:] / counts[1:].sum()
            got = np.array([getattr(row, name) for name in PHENOTYPES])
            np.testing.assert_allclose(got, expected, atol=1e-9)


def test_fractional_tile_size_matches_pixel_counts_on_a_finer_grid(small_synth_cohort):
    gt_dir = small_synth_cohort.parent / "ground_truth"
    slide_id = pd.read_csv(small_synth_cohort)["slide_id"].iloc[2]
    classes, _, downsample = load_phenotype_map(gt_dir, slide_id)
    frame = tile_phenotype_composition(gt_dir, slide_id, np.array([[101, 203]]), 448.5)
    # Count at 2x finer than level 0: a half-pixel edge is then whole sub-pixels.
    fine = _level0(_level0(classes, downsample), 2)
    box = fine[406 : 406 + 897, 202 : 202 + 897]
    counts = np.bincount(box.ravel(), minlength=len(CLASS_NAMES)).astype(float)
    assert frame["tissue_fraction"].iloc[0] == pytest.approx(counts[1:].sum() / 897**2)


# --- errors and CLI -------------------------------------------------------------------------------


def test_bad_settings_are_clear_errors(tmp_path):
    with pytest.raises(ValidationError, match="extra"):
        SynthParams(n_sities=3)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="slide_px"):
        SynthParams(slide_px_min=3000, slide_px_max=2000)
    with pytest.raises(ConfigError, match="--slides"):
        generate_cohort(tmp_path, n_slides=0)
    with pytest.raises(Exception, match="no phenotype map"):
        tile_phenotype_composition(tmp_path, "nope", np.zeros((1, 2)), 224)


def test_cli_writes_a_cohort_and_reports_it(tmp_path):
    from pathosae.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["synth", "--out", str(tmp_path), "--slides", "2", "--seed", "1",
                                 "--min-px", "600", "--max-px", "700", "--site-strength", "0.5",
                                 "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "cohort.csv" in result.output
    params = pd.read_json(tmp_path / "ground_truth" / "params.json", typ="series")["params"]
    assert params["site_stain_strength"] == 0.5
    assert len(pd.read_csv(tmp_path / "cohort.csv")) == 2
    bad = runner.invoke(app, ["synth", "--out", str(tmp_path / "x"), "--confounding", "2"])
    assert isinstance(bad.exception, ConfigError)
    assert "confounding" in str(bad.exception)
