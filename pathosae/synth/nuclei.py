"""Nuclei: hematoxylin blobs placed on a jittered grid per phenotype and stamped all at once.

Each nucleus is an ellipse whose radius wobbles with angle (irregular outline), with a soft edge,
coarse chromatin, optionally a darker rim and a nucleolus. Stamps are accumulated with one
``np.bincount`` per phenotype, so tens of thousands of nuclei cost a few vectorised passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pathosae.synth.layout import MAP_DOWNSAMPLE


@dataclass(frozen=True)
class NucleusStyle:
    """How the nuclei of one phenotype look (lengths in level-0 px at 0.5 µm/px)."""

    spacing: float  # grid pitch between candidate nuclei
    keep: float  # fraction of grid points that get a nucleus
    radius: tuple[float, float]  # semi-major axis range
    aspect: tuple[float, float]  # minor/major axis ratio range
    irregular: float  # amplitude of the angular radius wobble
    darkness: tuple[float, float]  # hematoxylin concentration range
    rim: float  # extra darkness at the rim (vesicular chromatin)
    nucleolus: float  # probability of a dark nucleolus
    along_field: bool = False  # orient along the fibre field (spindle cells)


STYLES: dict[str, NucleusStyle] = {
    "tumour": NucleusStyle(27, 0.95, (8.0, 13.0), (0.6, 0.95), 0.14, (0.6, 1.0), 0.45, 0.5),
    "stroma": NucleusStyle(46, 0.35, (9.0, 15.0), (0.18, 0.3), 0.05, (0.8, 1.1), 0.0, 0.0, True),
    "lymphocyte": NucleusStyle(15, 0.9, (4.8, 6.2), (0.85, 1.0), 0.04, (1.15, 1.45), 0.0, 0.0),
    "necrosis": NucleusStyle(13, 0.4, (1.2, 3.5), (0.5, 1.0), 0.3, (0.8, 1.3), 0.0, 0.0),
    "fat": NucleusStyle(120, 0.15, (7.0, 10.0), (0.25, 0.35), 0.05, (0.7, 0.9), 0.0, 0.0),
}


def grid_centres(
    rng: np.random.Generator, classes: np.ndarray, class_id: int, style: NucleusStyle
) -> np.ndarray:
    """(N, 2) float (y, x) level-0 centres of nuclei that fall in cells of ``class_id``."""
    rows, cols = classes.shape[0] * MAP_DOWNSAMPLE, classes.shape[1] * MAP_DOWNSAMPLE
    ys = np.arange(style.spacing / 2, rows, style.spacing)
    xs = np.arange(style.spacing / 2, cols, style.spacing)
    centres = np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1).reshape(-1, 2)
    centres += rng.uniform(-0.4, 0.4, centres.shape) * style.spacing
    np.clip(centres, 0, [rows - 1, cols - 1], out=centres)
    keep = rng.random(len(centres)) < style.keep
    cells = (centres // MAP_DOWNSAMPLE).astype(np.int64)
    keep &= classes[cells[:, 0], cells[:, 1]] == class_id
    return centres[keep]


def stamp_nuclei(
    rng: np.random.Generator,
    shape: tuple[int, int],
    centres: np.ndarray,
    style: NucleusStyle,
    orientation: np.ndarray | None = None,
) -> np.ndarray:
    """Hematoxylin concentration (float32 ``shape``) of the nuclei at ``centres``."""
    out = np.zeros(shape[0] * shape[1], dtype=np.float64)
    n = len(centres)
    if n == 0:
        return out.reshape(shape).astype(np.float32)
    half = int(np.ceil(style.radius[1] * (1 + style.irregular) + 1.5))
    offsets = np.arange(-half, half + 1, dtype=np.float32)
    top_left = np.floor(centres).astype(np.int64)
    frac = (centres - top_left).astype(np.float32)
    dy = offsets[None, :, None] - frac[:, 0, None, None]  # (n, S, 1)
    dx = offsets[None, None, :] - frac[:, 1, None, None]  # (n, 1, S)

    radius = rng.uniform(*style.radius, n).astype(np.float32)
    minor = radius * rng.uniform(*style.aspect, n).astype(np.float32)
    if orientation is not None and style.along_field:
        angle = orientation.astype(np.float32) + rng.normal(0, 0.15, n).astype(np.float32)
    else:
        angle = rng.uniform(0, np.pi, n).astype(np.float32)
    cos_a, sin_a = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    u = (dx * cos_a + dy * sin_a) / radius[:, None, None]
    v = (dy * cos_a - dx * sin_a) / minor[:, None, None]
    rho = np.sqrt(u * u + v * v)
    outline = _wobble(rng, u / (rho + 1e-6), v / (rho + 1e-6), style.irregular)
    # Soft edge about a pixel wide whatever the nucleus size.
    edge = 1 / (1 + np.exp(-(outline - rho) * minor[:, None, None] * 1.6))
    texture = 1 + 0.22 * rng.standard_normal(edge.shape, dtype=np.float32)
    rim = 1 + style.rim * np.clip(rho / outline, 0, 1) ** 4
    value = edge * texture * rim * rng.uniform(*style.darkness, n).astype(np.float32)[:, None, None]
    if style.nucleolus > 0:
        has = (rng.random(n) < style.nucleolus).astype(np.float32)[:, None, None]
        spot = np.exp(-((u * radius[:, None, None] - 1.5) ** 2 + (v * minor[:, None, None]) ** 2) / 3)
        value = value + 0.9 * has * spot * edge

    rows = top_left[:, 0, None, None] + np.arange(-half, half + 1)[None, :, None]
    cols = top_left[:, 1, None, None] + np.arange(-half, half + 1)[None, None, :]
    rows, cols = np.broadcast_arrays(rows, cols)
    inside = (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1]) & (value > 1e-3)
    flat = rows[inside] * shape[1] + cols[inside]
    out += np.bincount(flat, weights=value[inside], minlength=out.size)
    return out.reshape(shape).astype(np.float32)


def _wobble(rng: np.random.Generator, cos_t: np.ndarray, sin_t: np.ndarray, amount: float) -> np.ndarray:
    """Outline radius factor 1 + a2 cos(2t + p2) + a3 cos(3t + p3), from cos t and sin t (no atan2)."""
    n = cos_t.shape[0]
    phases = rng.uniform(0, 2 * np.pi, (2, n, 1, 1)).astype(np.float32)
    amps = (amount * rng.uniform(0.3, 1.0, (2, n, 1, 1))).astype(np.float32)
    cos2, sin2 = cos_t * cos_t - sin_t * sin_t, 2 * cos_t * sin_t
    cos3, sin3 = cos_t * (4 * cos_t * cos_t - 3), sin_t * (3 - 4 * sin_t * sin_t)
    wave2 = cos2 * np.cos(phases[0]) - sin2 * np.sin(phases[0])
    wave3 = cos3 * np.cos(phases[1]) - sin3 * np.sin(phases[1])
    return 1 + amps[0] * wave2 + amps[1] * wave3
