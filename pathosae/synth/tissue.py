"""H&E tissue as stain concentration maps (hematoxylin and eosin) at level 0.

Per phenotype: tumour (dense, large irregular vesicular nuclei on purple-pink cytoplasm), stroma
(wavy eosin fibres, sparse spindle nuclei), lymphocyte aggregates (small round dark nuclei packed
tightly), necrosis (smudgy pale-pink eosin with nuclear debris), fat (empty vacuoles with thin
pink walls). Glass has a faint optical density of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pathosae.synth.layout import (
    CLASS_NAMES,
    MAP_DOWNSAMPLE,
    level0_classes,
    phenotype_map,
    smooth_noise,
    tissue_mask,
    upsample_bilinear,
    upsample_classes,
)
from pathosae.synth.nuclei import STYLES, grid_centres, stamp_nuclei
from pathosae.synth.params import PHENOTYPES

# Base (non-nuclear) stain per class, index = class id: background first.
_E_BASE = np.array([0.0, 0.30, 0.22, 0.13, 0.36, 0.0], dtype=np.float32)
_E_MOTTLE = np.array([0.0, 0.08, 0.05, 0.04, 0.13, 0.0], dtype=np.float32)
_E_FIBRE = np.array([0.0, 0.06, 0.50, 0.02, 0.0, 0.0], dtype=np.float32)
_H_BASE = np.array([0.0, 0.11, 0.03, 0.07, 0.11, 0.0], dtype=np.float32)
_H_GRAIN = np.array([0.0, 0.02, 0.0, 0.02, 0.08, 0.0], dtype=np.float32)
_FAT = CLASS_NAMES.index("fat")


@dataclass
class TissueMaps:
    """A slide's biology before staining: class map and level-0 stain concentrations."""

    classes: np.ndarray  # uint8 phenotype map, MAP_DOWNSAMPLE coarser than level 0
    pixel_class: np.ndarray  # uint8 level-0 class per pixel (the ground truth)
    c_h: np.ndarray  # float32 level-0 hematoxylin concentration
    c_e: np.ndarray  # float32 level-0 eosin concentration
    od_glass: np.ndarray  # float32 level-0 optical density of the glass and mountant


def draw_tissue(
    rng: np.random.Generator, map_shape: tuple[int, int], cover: float, target: dict[str, float]
) -> TissueMaps:
    """Draw one slide's tissue: layout, phenotype regions, textures and nuclei."""
    mask = tissue_mask(rng, map_shape, cover)
    classes = phenotype_map(rng, mask, target)
    shape = (map_shape[0] * MAP_DOWNSAMPLE, map_shape[1] * MAP_DOWNSAMPLE)
    pixel_class = level0_classes(classes)

    flow_map = _flow_field(rng, map_shape)
    mottle = upsample_bilinear(smooth_noise(rng, map_shape, 0.7), MAP_DOWNSAMPLE)
    grain = rng.standard_normal(shape, dtype=np.float32)  # the scanner's optics smooth it
    fibres = _fibres(flow_map, mottle, rng)

    # Base stains are interpolated from the map, so region and tissue edges are soft ramps instead
    # of MAP_DOWNSAMPLE-pixel stairs; textures keep the exact class of each pixel.
    c_e = _smooth_lookup(_E_BASE, classes) + _smooth_lookup(_E_MOTTLE, classes) * mottle
    c_e += _smooth_lookup(_E_FIBRE, classes) * fibres
    c_h = _smooth_lookup(_H_BASE, classes) + _H_GRAIN[pixel_class] * grain
    del grain, fibres
    _add_fat_walls(rng, pixel_class, c_e)

    nuclei = np.zeros(shape, dtype=np.float32)
    for k, name in enumerate(PHENOTYPES, start=1):
        style = STYLES[name]
        centres = grid_centres(rng, classes, k, style)
        orientation = _fibre_angle(flow_map, centres) if style.along_field else None
        nuclei += stamp_nuclei(rng, shape, centres, style, orientation)
    np.clip(nuclei, 0, 1.8, out=nuclei)
    c_e *= 1 - 0.6 * np.minimum(nuclei, 1)  # nuclei displace cytoplasm and fibres
    c_h += nuclei
    np.clip(c_e, 0, None, out=c_e)
    np.clip(c_h, 0, None, out=c_h)
    od_glass = upsample_classes(0.035 + 0.006 * smooth_noise(rng, map_shape, 10.0))
    return TissueMaps(classes, pixel_class, c_h=c_h, c_e=c_e, od_glass=od_glass)


def _smooth_lookup(table: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Level-0 field of a per-class value, bilinearly interpolated from the phenotype map."""
    return upsample_bilinear(table[classes], MAP_DOWNSAMPLE)


def _flow_field(rng: np.random.Generator, map_shape: tuple[int, int]) -> np.ndarray:
    """A smooth field whose contour lines trace collagen fibres: a tilted ramp (mostly parallel
    bundles) plus noise (waves and swirls)."""
    rows, cols = map_shape
    angle = rng.uniform(0, np.pi)
    y = np.arange(rows, dtype=np.float32)[:, None]
    x = np.arange(cols, dtype=np.float32)[None, :]
    ramp = (np.cos(angle) * x + np.sin(angle) * y) / np.float32(12.0)
    return ramp + 1.0 * smooth_noise(rng, map_shape, 12.0)


def _fibres(flow_map: np.ndarray, mottle: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Wavy collagen fibres: thin bright bands along contour lines, broken up by the mottle."""
    flow = upsample_bilinear(flow_map, MAP_DOWNSAMPLE)
    period = np.float32(rng.uniform(0.3, 0.45))  # field units: about 6-10 px between fibres
    # Two incommensurate periods: fibres of uneven thickness and spacing, not a fingerprint.
    stripes = 0.5 + 0.25 * np.cos(flow * (2 * np.pi / period))
    stripes += 0.25 * np.cos(flow * (2 * np.pi / (period * 1.618)) + mottle)
    stripes *= stripes
    stripes *= np.clip(0.55 + 0.6 * mottle, 0, 1)
    return stripes


def _fibre_angle(flow_map: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Angle (radians, x towards y) of the fibre direction at each centre: along the contours."""
    grad_y, grad_x = np.gradient(flow_map)
    cells = (centres // MAP_DOWNSAMPLE).astype(np.int64)
    gy, gx = grad_y[cells[:, 0], cells[:, 1]], grad_x[cells[:, 0], cells[:, 1]]
    return np.arctan2(gx, -gy)


def _add_fat_walls(rng: np.random.Generator, pixel_class: np.ndarray, c_e: np.ndarray) -> None:
    """Adipocytes: Voronoi cells of a jittered grid; thin eosin walls where two cells meet."""
    ys, xs = np.nonzero(pixel_class == _FAT)
    if ys.size == 0:
        return
    spacing = rng.uniform(90, 130)
    n_rows = int(pixel_class.shape[0] // spacing) + 3
    n_cols = int(pixel_class.shape[1] // spacing) + 3
    seeds = (np.stack(np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij"), -1) - 1
             + rng.uniform(0.1, 0.9, (n_rows, n_cols, 2))) * spacing
    cy, cx = (ys // spacing).astype(np.int64) + 1, (xs // spacing).astype(np.int64) + 1
    best = np.full(ys.shape, np.inf, dtype=np.float32)
    second = np.full(ys.shape, np.inf, dtype=np.float32)
    for oy in (-1, 0, 1):
        for ox in (-1, 0, 1):
            seed = seeds[cy + oy, cx + ox]
            dist = np.hypot(seed[:, 0] - ys, seed[:, 1] - xs).astype(np.float32)
            second = np.minimum(second, np.maximum(best, dist))
            best = np.minimum(best, dist)
    wall = np.exp(-(((second - best) / 2.2) ** 2))
    c_e[ys, xs] += 0.55 * wall

