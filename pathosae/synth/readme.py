"""The README written beside the ground truth, so the files explain themselves."""

from __future__ import annotations

from pathosae.synth.layout import CLASS_NAMES, MAP_DOWNSAMPLE
from pathosae.synth.params import SynthParams


def ground_truth_readme(params: SynthParams) -> str:
    classes = ", ".join(f"{k} = {name}" for k, name in enumerate(CLASS_NAMES))
    return f"""# Ground truth of a synthetic H&E cohort

Written by `pathosae synth`. Slides are pyramidal tiled TIFFs at {params.mpp} µm/px (level 0).

## Design
- The label follows the biology: a "high" slide has a {params.label_phenotype} tissue fraction
  drawn from {params.high_fraction}, a "low" slide from {params.low_fraction}. Patients keep one
  label across their slides.
- `site` changes the stain (H and E concentration scale, hue rotation of the stain vectors about
  the grey axis in optical-density space), `stain_batch` (nested in site) adds a smaller shift,
  `scanner` changes the colour response (per-channel gain, gamma), blur, noise and JPEG quality.
  None of them depends on the biology.
- Confounding {params.confounding}: in train and val, a patient's site is its label's site
  (label "low" -> site_A, "high" -> site_B) with this probability, else uniform over
  {params.n_sites} sites. The test split is shifted: "{params.test_shift}".

## Files
- `../cohort.csv`: the manifest (slide_id, path relative to the cohort folder, patient_id, label,
  site, scanner, stain_batch, split). No mpp column: the slides record their own resolution.
- `slides.csv`: one row per slide: the design (label, site, scanner, stain_batch, split,
  site_matches_label), the size, the actual tissue fraction of each phenotype (`frac_*`) and its
  target (`target_frac_*`), the stain applied (`stain_h_scale`, `stain_e_scale`,
  `stain_h_hue_deg`, `stain_e_hue_deg`, stain vectors `h_vector_*`, `e_vector_*` in RGB OD) and
  the scanner's effect (`scanner_gain_*`, `scanner_gamma`, `scanner_blur_sigma_px`,
  `scanner_noise_sd` in 8-bit levels, `scanner_jpeg_quality`).
- `effects.json`: the planted effect of each site, stain batch and scanner.
- `params.json`: the generator's parameters, seed and settings hash.
- `phenotypes/<slide_id>.npz`: `classes` (uint8 class of every level-0 pixel, i.e. at
  {params.mpp} µm/px; {classes}), `class_names`, `mpp` (µm per map cell), `downsample` (level-0
  px per map cell, 1 here). Regions are drawn on a {MAP_DOWNSAMPLE}x coarser grid and their edges
  smoothed at level 0.
  Level-0 pixel (x, y) has class `classes[y // downsample, x // downsample]`.
  `pathosae.synth.tile_phenotype_composition(ground_truth_dir, slide_id, coords,
  tile_size_level0)` gives each tile's exact phenotype fractions.
- `records/<slide_id>.json`: per-slide records (the rows of slides.csv) used to resume a run.
"""
