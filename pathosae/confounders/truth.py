"""Scoring the flagged units (and the findings) against the effects planted in a synthetic cohort.

For a sample of tiles (at most ``MAX_TILES``, spread evenly over the slides) the generator renders
each tile twice more: without the site stain and without the scanner
(:mod:`pathosae.synth.counterfactual`). The two are embedded exactly as the embedding stage embeds
(same device, precision and memory layout) and encoded with the SAE; the planted version is the
stored features of the same tiles. Slide means of the codes per variant give, for every unit, the
paired change that the site (or scanner) causes, and ``groundtruth.true_effect_units`` turns it
into the set of true site (scanner) units. Precision and recall of the scan's flagged units and of
the findings follow. The cosine between a few re-rendered planted tiles' features and the stored
features checks that the render is the slide the pipeline read.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pathosae.config import PathosaeConfig
from pathosae.confounders.collect import CodeModel, Collected, SlideFeatures, codes_and_recon
from pathosae.confounders.groundtruth import (
    effect_ratio,
    finding_units,
    flagged_units,
    unit_scores,
)
from pathosae.embedding.device import forward_batch, plan_inference, prepare_model
from pathosae.encoders import build_encoder, get_spec
from pathosae.progress import bar
from pathosae.run import RunDir
from pathosae.schema import SLIDE_ID
from pathosae.tiling.reader import load_tiles

TruthScorer = Callable[[Collected, pd.DataFrame], tuple[pd.DataFrame, dict[str, Any]]]

MAX_TILES = 768
MAX_SLIDES = 64
MIN_EFFECT = 0.5  # true unit: between-level spread of the planted change ≥ 0.5 planted SDs
EFFECT_COLUMNS = {"site": "no_site", "scanner": "no_scanner"}  # variable -> counterfactual
CHECK_TILES_PER_SLIDE = 2  # re-rendered tiles per slide compared with the stored features


def truth_scorer(
    run: RunDir, gt_dir: Path, cfg: PathosaeConfig, store: SlideFeatures, sae: CodeModel
) -> TruthScorer:
    """Scores the analysis's flagged units against the effects planted in ``gt_dir``: the atoms
    and directions of a ``synth-features`` cohort, else the image-level counterfactual renders."""
    # Only a synthetic cohort's run gets here (the config names its ground truth folder).
    from pathosae.synth.feature_groundtruth import is_feature_truth

    if is_feature_truth(gt_dir):
        from pathosae.synth.feature_scorer import feature_truth_scorer

        return feature_truth_scorer(gt_dir, cfg, store, sae)

    def score(data: Collected, associations: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
        return score_ground_truth(run, gt_dir, cfg, data.slides, store.load,
                                  lambda x: codes_and_recon(sae, x)[0], associations)

    return score


def score_ground_truth(
    run: RunDir,
    gt_dir: Path,
    cfg: PathosaeConfig,
    slides: pd.DataFrame,
    load_features: Callable[[str], tuple[np.ndarray, np.ndarray]],
    encode: Callable[[np.ndarray], np.ndarray],
    associations: pd.DataFrame,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """groundtruth.parquet rows (unit × effect) and the summary figures."""
    # Only a synthetic cohort's run gets here (the config names its ground truth folder).
    from pathosae.synth.counterfactual import DEFAULT_VARIANTS, SynthDesign, render_tiles

    ccfg = cfg.confounders
    design = SynthDesign.load(gt_dir)
    rng = np.random.default_rng(ccfg.seed + 7)
    chosen = slides if len(slides) <= MAX_SLIDES else slides.iloc[
        np.sort(rng.choice(len(slides), MAX_SLIDES, replace=False))]
    chosen = chosen.reset_index(drop=True)
    per_slide = max(1, MAX_TILES // len(chosen))
    embed = _embedder(cfg)
    counterfactuals = {name: off for name, off in DEFAULT_VARIANTS.items() if off}
    means: dict[str, list[np.ndarray]] = {name: [] for name in DEFAULT_VARIANTS}
    cosines, n_tiles = [], 0
    for sid in bar(chosen[SLIDE_ID].astype(str), "ground truth: counterfactual renders",
                   unit="slide"):
        stored, coords = load_features(sid)
        pick = np.sort(rng.choice(len(coords), min(per_slide, len(coords)), replace=False))
        _, geom = load_tiles(run, sid)
        tiles = render_tiles(design, sid, coords[pick], geom.tile_size_level0, geom.tile_px,
                             counterfactuals)
        # The planted slide is the stored one: its codes come from the stored features, and a
        # few re-rendered tiles check that the render reproduces them.
        planted = np.asarray(stored[pick], np.float32)
        check = render_tiles(design, sid, coords[pick[:CHECK_TILES_PER_SLIDE]],
                             geom.tile_size_level0, geom.tile_px, {"planted": ()})["planted"]
        cosines.append(_cosine(embed(check), planted[:CHECK_TILES_PER_SLIDE]))
        feats = {"planted": planted, **{name: embed(t) for name, t in tiles.items()}}
        for name, x in feats.items():
            means[name].append(encode(x).mean(axis=0))
        n_tiles += len(pick)
    slide_codes = {name: np.vstack(v) for name, v in means.items()}
    rows, figures = [], {}
    n_units = slide_codes["planted"].shape[1]
    for variable, counterfactual in EFFECT_COLUMNS.items():
        if variable not in chosen or variable not in set(associations["variable"]):
            continue
        ratio = effect_ratio(slide_codes["planted"], slide_codes[counterfactual], chosen[variable])
        truth = np.where(np.isfinite(ratio), ratio >= MIN_EFFECT, False)
        flagged = flagged_units(associations, variable, ccfg.fdr_alpha, n_units)
        figures[variable] = unit_scores(associations, variable, ccfg.fdr_alpha, truth)
        findings = finding_units(associations, variable, n_units)
        rows.append(pd.DataFrame({"unit": np.arange(n_units), "effect": variable,
                                  "effect_ratio": ratio, "true_unit": truth, "flagged": flagged,
                                  **({} if findings is None else {"finding": findings})}))
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    summary = {
        **figures,
        "n_slides": len(chosen), "n_tiles": n_tiles, "min_effect": MIN_EFFECT,
        "planted_vs_stored_cosine": round(float(np.mean(np.concatenate(cosines))), 4),
        "truth": "unit whose slide-mean change (planted minus counterfactual render) differs "
                 f"between levels by >= {MIN_EFFECT} SD of its planted slide means",
    }
    return table, summary


def _embedder(cfg: PathosaeConfig) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 tiles -> features, exactly as the embedding stage computes them (device, precision,
    memory layout, batch size)."""
    emb = cfg.embedding
    encoder = build_encoder(emb.encoder, emb.weights, random_weights=emb.random_weights,
                            seed=cfg.seed)
    plan = plan_inference(emb, get_spec(emb.encoder))
    model = prepare_model(encoder, plan)

    def embed(tiles: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(tiles)
        return np.concatenate([forward_batch(model, tensor[start:start + emb.batch_size], plan)
                               for start in range(0, len(tiles), emb.batch_size)])

    return embed


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.einsum("ij,ij->i", a, b) / np.maximum(norms, 1e-12)
