"""Tissue detection on a low-resolution thumbnail at a fixed resolution (deterministic).

HSV saturation after a median blur, thresholded; small holes filled and small specks dropped
(the CLAM / slideflow recipe). The thumbnail is read at ``detection_mpp`` whatever the slide's
pyramid, so the same tissue is found on a 40x and a 20x scan of one glass slide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import openslide
from PIL import Image
from scipy import ndimage

from pathosae.config import TilingConfig
from pathosae.tiling.geometry import best_level
from pathosae.tiling.reader import read_rgb_image

# Rows of the read level per band, so a single-level gigapixel scan is never held in RAM at once.
_BAND_ROWS = 1024
# Levels up to this many pixels are read whole when two thumbnails need them (about 200 MB RGB).
_WHOLE_LEVEL_MAX_PX = 64_000_000


@dataclass(frozen=True)
class Thumbnail:
    """An RGB image of the whole slide where one pixel covers ``scale_xy`` level-0 px."""

    rgb: np.ndarray
    scale_xy: tuple[float, float]


def read_thumbnails(slide: openslide.OpenSlide, sizes: list[tuple[int, int]]) -> list[Thumbnail]:
    """The whole slide resized to each (w, h) in ``sizes`` by area averaging.

    Each is read from the level with the largest downsample not above what it needs. Sizes that
    share a level whose pixels fit in memory share one read (a single-level scan is decoded once
    for both the detection and the QC thumbnail); larger levels are read band by band.
    """
    width0, height0 = slide.dimensions
    sizes = [(max(1, w), max(1, h)) for w, h in sizes]
    levels = [
        best_level(slide.level_downsamples, min(width0 / w, height0 / h)) for w, h in sizes
    ]
    whole: dict[int, Image.Image] = {}
    thumbs = []
    for (out_w, out_h), level in zip(sizes, levels, strict=True):
        level_w, level_h = slide.level_dimensions[level]
        if levels.count(level) > 1 and level_w * level_h <= _WHOLE_LEVEL_MAX_PX:
            if level not in whole:
                whole[level] = read_rgb_image(slide, (0, 0), level, (level_w, level_h))
            rgb = np.asarray(whole[level].resize((out_w, out_h), Image.Resampling.BOX))
        else:
            rgb = _read_banded(slide, level, (out_w, out_h))
        thumbs.append(Thumbnail(rgb=rgb, scale_xy=(width0 / out_w, height0 / out_h)))
    return thumbs


def _read_banded(slide: openslide.OpenSlide, level: int, size: tuple[int, int]) -> np.ndarray:
    """One level resized to ``size`` band by band; the float resize box keeps the area weights exact."""
    out_w, out_h = size
    level_w, level_h = slide.level_dimensions[level]
    downsample = slide.level_downsamples[level]
    rows_per_out = level_h / out_h  # level rows per output row (float)
    band_out = max(1, math.floor(_BAND_ROWS / rows_per_out))
    bands = []
    for top in range(0, out_h, band_out):
        bottom = min(out_h, top + band_out)
        y0, y1 = top * rows_per_out, bottom * rows_per_out
        r0, r1 = math.floor(y0), min(level_h, math.ceil(y1))
        band = read_rgb_image(slide, (0, round(r0 * downsample)), level, (level_w, r1 - r0))
        box = (0, y0 - r0, level_w, y1 - r0)
        bands.append(np.asarray(band.resize((out_w, bottom - top), Image.Resampling.BOX, box=box)))
    return np.concatenate(bands, axis=0)


def thumbnail_size(dimensions: tuple[int, int], source_mpp: float, mpp: float) -> tuple[int, int]:
    """Pixel size (w, h) of the whole slide at ``mpp``."""
    factor = source_mpp / mpp
    return max(1, round(dimensions[0] * factor)), max(1, round(dimensions[1] * factor))


def tissue_mask(rgb: np.ndarray, mpp: float, cfg: TilingConfig) -> np.ndarray:
    """Boolean tissue mask of an RGB thumbnail whose pixels are ``mpp`` µm wide."""
    saturation = np.asarray(Image.fromarray(rgb).convert("HSV"))[..., 1]
    mask = median_above(saturation, cfg.blur_px, cfg.saturation_threshold)
    pixel_area = mpp * mpp
    mask = _fill_small_holes(mask, cfg.max_hole_area_um2 / pixel_area)
    return _drop_small_objects(mask, cfg.min_tissue_area_um2 / pixel_area)


def median_above(image: np.ndarray, size: int, threshold: int) -> np.ndarray:
    """A square median blur of ``image`` (edges mirrored, as ``ndimage`` mode "reflect"), then
    ``> threshold``, computed exactly without the median.

    A median commutes with a monotone map such as a threshold, so the blurred-then-thresholded
    mask is a majority vote of the thresholded pixels in each window: one box sum (integral image)
    instead of a rank filter.
    """
    radius = size // 2  # an even size is taken as the next odd one
    if radius == 0:
        return image > threshold
    window = 2 * radius + 1
    above = np.pad(image > threshold, radius, mode="symmetric").astype(np.int32)
    integral = np.zeros((above.shape[0] + 1, above.shape[1] + 1), dtype=np.int32)
    integral[1:, 1:] = above.cumsum(axis=0).cumsum(axis=1)
    counts = (integral[window:, window:] - integral[:-window, window:]
              - integral[window:, :-window] + integral[:-window, :-window])
    return counts > (window * window) // 2


def _drop_small_objects(mask: np.ndarray, min_pixels: float) -> np.ndarray:
    """Remove 8-connected components smaller than ``min_pixels``."""
    if min_pixels <= 1 or not mask.any():
        return mask
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = sizes >= min_pixels
    keep[0] = False
    return keep[labels]


def _fill_small_holes(mask: np.ndarray, max_pixels: float) -> np.ndarray:
    """Fill background components enclosed by tissue and smaller than ``max_pixels``.

    Holes are 4-connected background regions that do not touch the image border.
    """
    if max_pixels <= 0 or mask.all():
        return mask
    labels, count = ndimage.label(~mask)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    border = np.unique(
        np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    )
    fill = sizes < max_pixels
    fill[0] = False
    fill[border] = False
    return mask | fill[labels]
