"""One synthetic slide: biology from the label, stain from the site, imaging from the scanner."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pathosae.synth.design import SlidePlan, slide_render_rng
from pathosae.synth.effects import CohortEffects
from pathosae.synth.layout import MAP_DOWNSAMPLE, class_fractions
from pathosae.synth.params import PHENOTYPES, SynthParams
from pathosae.synth.stain import apply_scanner, render_rgb, slide_stain
from pathosae.synth.tissue import draw_tissue


@dataclass
class RenderedSlide:
    image: np.ndarray  # uint8 (H, W, 3) level 0
    classes: np.ndarray  # uint8 level-0 phenotype map (class per pixel)
    record: dict[str, object]  # ground truth of this slide (effects applied, fractions)


def target_fractions(rng: np.random.Generator, label: str, params: SynthParams) -> dict[str, float]:
    """Tissue fractions per phenotype: the label phenotype's from the label, the rest at random."""
    low, high = params.high_fraction if label == "high" else params.low_fraction
    main = rng.uniform(low, high)
    others = [name for name in PHENOTYPES if name != params.label_phenotype]
    # Stroma dominates the remainder, as in most resections.
    weights = {"tumour": 3.0, "stroma": 5.0, "lymphocyte": 2.0, "necrosis": 1.2, "fat": 1.5}
    rest = rng.dirichlet([weights[name] for name in others]) * (1 - main)
    fractions = dict(zip(others, rest.tolist(), strict=True))
    fractions[params.label_phenotype] = main
    return {name: fractions[name] for name in PHENOTYPES}


def render_slide(
    plan: SlidePlan, seed: int, params: SynthParams, effects: CohortEffects
) -> RenderedSlide:
    rng = slide_render_rng(seed, plan.index)
    cells = [
        int(rng.integers(params.slide_px_min, params.slide_px_max + 1)) // MAP_DOWNSAMPLE
        for _ in range(2)
    ]
    map_shape = (cells[0], cells[1])
    cover = rng.uniform(*params.tissue_cover)
    target = target_fractions(rng, plan.label, params)
    stain = slide_stain(effects.batch[(plan.site, plan.stain_batch)], rng, params)
    scanner = effects.scanner[plan.scanner]

    tissue = draw_tissue(rng, map_shape, cover, target)
    rgb = render_rgb(tissue.c_h, tissue.c_e, tissue.od_glass, stain)
    del tissue.c_h, tissue.c_e, tissue.od_glass
    image = apply_scanner(rgb, scanner, rng)

    actual = class_fractions(tissue.pixel_class)
    record: dict[str, object] = {
        "width": image.shape[1],
        "height": image.shape[0],
        "tissue_fraction": float((tissue.pixel_class > 0).mean()),
        **{f"frac_{name}": actual[name] for name in PHENOTYPES},
        **{f"target_frac_{name}": target[name] for name in PHENOTYPES},
        **stain.as_record(),
        **scanner.as_record(),
    }
    return RenderedSlide(image=image, classes=tissue.pixel_class, record=record)
