"""One synthetic slide: biology from the label, stain from the site, imaging from the scanner."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from pathosae.synth.design import SlidePlan, slide_render_rng
from pathosae.synth.effects import CohortEffects
from pathosae.synth.layout import MAP_DOWNSAMPLE, class_fractions
from pathosae.synth.params import PHENOTYPES, SynthParams
from pathosae.synth.stain import (
    apply_scanner,
    blur_margin,
    render_rgb,
    sensor_noise,
    slide_stain,
)
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


def render_slide_regions(
    plan: SlidePlan,
    seed: int,
    params: SynthParams,
    variants: Mapping[str, CohortEffects],
    corners: np.ndarray,
    edge: int,
) -> dict[str, np.ndarray]:
    """Square level-0 regions of one slide, rendered under each set of cohort effects.

    ``corners`` is (N, 2) int: x, y of each region's top-left corner in level-0 px. Every variant shares the
    slide's tissue, its slide-level stain jitter and its sensor noise (the same draws as
    :func:`render_slide`), so two variants differ only by their effects: the variant with the
    cohort's own effects gives exactly the pixels of :func:`render_slide`, and one built with a
    strength set to 0 is the counterfactual slide without that effect. Pixels beyond the slide
    are white, as OpenSlide composites them. Returns uint8 (N, edge, edge, 3) per variant.
    """
    rng = slide_render_rng(seed, plan.index)
    cells = [
        int(rng.integers(params.slide_px_min, params.slide_px_max + 1)) // MAP_DOWNSAMPLE
        for _ in range(2)
    ]
    cover = rng.uniform(*params.tissue_cover)
    target = target_fractions(rng, plan.label, params)
    before_jitter = rng.bit_generator.state
    stains = {}
    for name, effects in variants.items():  # the same jitter draws under every variant
        rng.bit_generator.state = before_jitter
        stains[name] = slide_stain(effects.batch[(plan.site, plan.stain_batch)], rng, params)
    tissue = draw_tissue(rng, (cells[0], cells[1]), cover, target)
    noise = rng.standard_normal(tissue.c_h.shape, dtype=np.float32)  # apply_scanner's own draw
    channel_noise = [sensor_noise(noise, c) for c in range(3)]
    height, width = tissue.c_h.shape
    out: dict[str, list[np.ndarray]] = {name: [] for name in variants}
    for x, y in np.asarray(corners, dtype=np.int64).reshape(-1, 2):
        for name, effects in variants.items():
            scanner = effects.scanner[plan.scanner]
            margin = blur_margin(scanner)
            x0, y0 = max(0, x - margin), max(0, y - margin)
            x1, y1 = min(width, x + edge + margin), min(height, y + edge + margin)
            tile = np.full((edge, edge, 3), 255, np.uint8)
            if x0 < x1 and y0 < y1:
                box = (slice(y0, y1), slice(x0, x1))
                rgb = render_rgb(tissue.c_h[box], tissue.c_e[box], tissue.od_glass[box],
                                 stains[name])
                field = np.stack([n[box] for n in channel_noise], axis=-1)
                image = apply_scanner(rgb, scanner, rng, channel_noise=field)
                inner = image[max(0, y) - y0 : min(height, y + edge) - y0,
                              max(0, x) - x0 : min(width, x + edge) - x0]
                tile[max(0, y) - y : max(0, y) - y + inner.shape[0],
                     max(0, x) - x : max(0, x) - x + inner.shape[1]] = inner
            out[name].append(tile)
    return {name: np.stack(tiles) if tiles else np.zeros((0, edge, edge, 3), np.uint8)
            for name, tiles in out.items()}
