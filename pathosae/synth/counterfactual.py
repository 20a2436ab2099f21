"""Counterfactual tiles: the same tissue re-rendered with chosen confounder effects switched off.

A synthetic slide is a deterministic function of the cohort's seed, parameters and the slide's
index (all in ``ground_truth/params.json``), so any tile can be rendered again: as planted, or
without the site stain (site and its nested stain batches at strength 0; the slide's own
section-thickness jitter stays), or without the scanner (neutral colour response, no blur, base
sensor noise, the best JPEG quality). Every variant shares the tissue, the jitter and the sensor
noise, so the paired difference of two variants is the switched-off effect and nothing else.

Tiles go through what the pipeline does to them: JPEG at the scanner's quality (the slide file's
compression, with the same codec) and the resize from the level-0 footprint to ``tile_px``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from pathosae.errors import PathosaeError
from pathosae.io import read_json
from pathosae.synth.design import SlidePlan, plan_cohort
from pathosae.synth.effects import CohortEffects, cohort_effects
from pathosae.synth.params import SynthParams
from pathosae.synth.slide import render_slide_regions

Effect = Literal["site", "scanner"]
EFFECT_STRENGTH = {"site": "site_stain_strength", "scanner": "scanner_strength"}
DEFAULT_VARIANTS: dict[str, tuple[Effect, ...]] = {
    "planted": (),
    "no_site": ("site",),
    "no_scanner": ("scanner",),
}


@dataclass(frozen=True)
class SynthDesign:
    """What re-rendering a synthetic cohort needs, read from its ground_truth folder."""

    params: SynthParams
    seed: int
    plans: dict[str, SlidePlan]

    @classmethod
    def load(cls, gt_dir: str | Path) -> SynthDesign:
        path = Path(gt_dir) / "params.json"
        if not path.is_file():
            raise PathosaeError(
                f"{path} is missing. Fix: pass the 'ground_truth' folder written by "
                "`pathosae synth`."
            )
        info = read_json(path)
        params = SynthParams.model_validate(info["params"])
        seed, n_slides = int(info["seed"]), int(info["n_slides"])
        plans = {p.slide_id: p for p in plan_cohort(n_slides, seed, params)}
        return cls(params, seed, plans)

    def plan(self, slide_id: str) -> SlidePlan:
        if slide_id not in self.plans:
            raise PathosaeError(
                f"slide {slide_id!r} is not in this synthetic cohort ({len(self.plans)} slides). "
                "Fix: pass a slide_id from the cohort.csv beside this ground_truth folder."
            )
        return self.plans[slide_id]

    def effects_without(self, off: Sequence[Effect]) -> CohortEffects:
        """The cohort's effects with the named ones at strength 0."""
        unknown = sorted(set(off) - set(EFFECT_STRENGTH))
        if unknown:
            raise PathosaeError(f"unknown effect(s) {unknown}; use {sorted(EFFECT_STRENGTH)}.")
        params = self.params.model_copy(update={EFFECT_STRENGTH[e]: 0.0 for e in off})
        return cohort_effects(self.seed, params)


def render_tiles(
    design: SynthDesign,
    slide_id: str,
    coords: np.ndarray,
    tile_size_level0: float,
    tile_px: int,
    variants: Mapping[str, Sequence[Effect]] | None = None,
) -> dict[str, np.ndarray]:
    """Tiles of ``slide_id`` at level-0 ``coords`` (N×2, top-left) under each variant.

    ``variants`` maps a name to the effects switched off (default: planted, no_site,
    no_scanner). Returns uint8 (N, tile_px, tile_px, 3) per variant.
    """
    variants = DEFAULT_VARIANTS if variants is None else variants
    plan = design.plan(slide_id)
    effects = {name: design.effects_without(off) for name, off in variants.items()}
    edge = max(1, round(tile_size_level0))
    regions = render_slide_regions(plan, design.seed, design.params, effects, coords, edge)
    out = {}
    for name, tiles in regions.items():
        quality = effects[name].scanner[plan.scanner].jpeg_quality
        out[name] = np.stack([_as_read(t, quality, tile_px) for t in tiles]) if len(tiles) else (
            np.zeros((0, tile_px, tile_px, 3), np.uint8))
    return out


def _as_read(tile: np.ndarray, quality: int, tile_px: int) -> np.ndarray:
    """JPEG round trip at the scanner's quality, then the tiling reader's resize."""
    import imagecodecs

    tile = np.asarray(imagecodecs.jpeg8_decode(imagecodecs.jpeg8_encode(tile, level=quality)))
    if tile.shape[0] != tile_px:
        from pathosae.tiling.reader import RESIZE_FILTER

        tile = np.asarray(Image.fromarray(tile).resize((tile_px, tile_px), RESIZE_FILTER)).copy()
    return tile
