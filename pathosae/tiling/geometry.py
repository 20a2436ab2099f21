"""Exact tile geometry: from a slide's level-0 resolution to tiles at a target resolution.

All positions are level-0 pixels. A tile of ``tile_px`` pixels at ``target_mpp`` covers
``tile_px * target_mpp / source_mpp`` level-0 pixels (a float); the grid steps by that footprint
rounded to an integer, so adjacent tiles neither overlap nor leave a gap of more than one pixel and
the step never drifts along a row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pathosae.types import MicronsPerPixel

# OpenSlide reports downsamples such as 4.0003 for pyramids built from odd sizes; a level within
# this relative tolerance of the needed factor counts as "not exceeding" it (the resulting
# upsampling is below 1 % and avoids reading a 4x larger level).
LEVEL_TOLERANCE = 0.01


@dataclass(frozen=True)
class ReadPlan:
    """Where and how much to read for one tile."""

    read_level: int
    level_downsample: float
    read_size_px: int  # edge read at read_level
    tile_size_level0: float  # footprint edge in level-0 px (exact, a float)
    step_level0: int  # grid step in level-0 px

    @property
    def read_extent_level0(self) -> float:
        """Level-0 px actually covered by a read (read_size_px at read_level)."""
        return self.read_size_px * self.level_downsample


def best_level(
    level_downsamples: Sequence[float], wanted_downsample: float, tolerance: float = LEVEL_TOLERANCE
) -> int:
    """The level with the largest downsample not exceeding ``wanted_downsample``.

    Reading at that level gives at least the needed resolution, so tiles are only ever
    downsampled (never upsampled, beyond the rounding tolerance). Level 0 when the wanted
    downsample is below 1 (target finer than the scan).
    """
    limit = wanted_downsample * (1.0 + tolerance)
    best = 0
    for level, downsample in enumerate(level_downsamples):
        if downsample <= limit and downsample > level_downsamples[best]:
            best = level
    return best


def plan_reads(
    level_downsamples: Sequence[float],
    source_mpp: MicronsPerPixel | float,
    target_mpp: MicronsPerPixel | float,
    tile_px: int,
) -> ReadPlan:
    """The read level, read size and grid step for tiles of ``tile_px`` at ``target_mpp``."""
    if source_mpp <= 0 or target_mpp <= 0 or tile_px <= 0:
        raise ValueError("source_mpp, target_mpp and tile_px must be positive")
    scale = float(target_mpp) / float(source_mpp)  # level-0 px per target px
    level = best_level(level_downsamples, scale)
    downsample = float(level_downsamples[level])
    tile_size_level0 = tile_px * scale
    return ReadPlan(
        read_level=level,
        level_downsample=downsample,
        read_size_px=max(1, round(tile_px * scale / downsample)),
        tile_size_level0=tile_size_level0,
        step_level0=max(1, round(tile_size_level0)),
    )


def grid_coords(width: int, height: int, plan: ReadPlan) -> np.ndarray:
    """Top-left corners (x, y), row-major, of every tile lying fully inside the slide.

    A tile must fit both its exact footprint and what is actually read (they differ by rounding).
    """
    extent = max(plan.tile_size_level0, plan.read_extent_level0)
    xs = _axis_starts(width, extent, plan.step_level0)
    ys = _axis_starts(height, extent, plan.step_level0)
    if xs.size == 0 or ys.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")  # row-major: y outer, x inner
    return np.stack([grid_x.ravel(), grid_y.ravel()], axis=1).astype(np.int64)


def _axis_starts(length: int, extent: float, step: int) -> np.ndarray:
    # Largest n with (n - 1) * step + extent <= length; the epsilon absorbs float noise only.
    if extent > length + 1e-9:
        return np.zeros(0, dtype=np.int64)
    count = math.floor((length - extent) / step + 1e-9) + 1
    return np.arange(count, dtype=np.int64) * step


def tissue_fractions(
    mask: np.ndarray, coords: np.ndarray, tile_size_level0: float, scale_xy: tuple[float, float]
) -> np.ndarray:
    """Exact area fraction of ``mask`` under each tile's footprint.

    ``mask`` is a boolean image where one pixel covers ``scale_xy`` (x, y) level-0 px. The
    footprint edges rarely fall on mask-pixel edges, so partial mask pixels are weighted by their
    covered area: bilinear interpolation of the summed-area table is exact for a piecewise-constant
    image.
    """
    if coords.size == 0:
        return np.zeros(0, dtype=np.float64)
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.float64)
    table[1:, 1:] = np.cumsum(np.cumsum(mask.astype(np.float64), axis=0), axis=1)
    sx, sy = scale_xy
    x0 = coords[:, 0] / sx
    x1 = (coords[:, 0] + tile_size_level0) / sx
    y0 = coords[:, 1] / sy
    y1 = (coords[:, 1] + tile_size_level0) / sy
    area = (
        _sat_at(table, y1, x1) - _sat_at(table, y0, x1) - _sat_at(table, y1, x0)
        + _sat_at(table, y0, x0)
    )
    return np.clip(area / ((x1 - x0) * (y1 - y0)), 0.0, 1.0)


def _sat_at(table: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Summed-area table at fractional (row, col), clamped to the mask, by bilinear interpolation."""
    rows = np.clip(rows, 0, table.shape[0] - 1)
    cols = np.clip(cols, 0, table.shape[1] - 1)
    r0 = np.minimum(np.floor(rows).astype(np.int64), table.shape[0] - 2)
    c0 = np.minimum(np.floor(cols).astype(np.int64), table.shape[1] - 2)
    r0 = np.maximum(r0, 0)
    c0 = np.maximum(c0, 0)
    fr = rows - r0
    fc = cols - c0
    top = table[r0, c0] * (1 - fc) + table[r0, c0 + 1] * fc
    bottom = table[r0 + 1, c0] * (1 - fc) + table[r0 + 1, c0 + 1] * fc
    return top * (1 - fr) + bottom * fr
