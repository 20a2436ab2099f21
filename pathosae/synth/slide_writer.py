"""Pyramidal generic tiled TIFF that OpenSlide reads as a slide.

Levels are top-level IFDs (not SubIFDs), each half the size of the one before, down to below
``MIN_LEVEL_PX``; tiles are 256 px JPEG in RGB photometric (OpenSlide's generic-tiff reader decodes
them as is); XResolution/YResolution in pixels per centimetre record the µm per pixel, which
OpenSlide reports as ``openslide.mpp-x``/``-y``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from pathosae.io import atomic_path

TILE_PX = 256
MIN_LEVEL_PX = 512
_MICRONS_PER_CM = 1e4


def pyramid(image: np.ndarray) -> list[np.ndarray]:
    """Level 0 and its 2x box-filtered reductions until the longer side is below MIN_LEVEL_PX."""
    levels = [image]
    while max(levels[-1].shape[:2]) >= MIN_LEVEL_PX:
        top = levels[-1]
        rows, cols = top.shape[0] // 2 * 2, top.shape[1] // 2 * 2
        blocks = top[:rows, :cols].reshape(rows // 2, 2, cols // 2, 2, 3).astype(np.uint16)
        levels.append(((blocks.sum(axis=(1, 3)) + 2) // 4).astype(np.uint8))
    return levels


def write_slide(
    path: str | Path, image: np.ndarray, mpp: float, jpeg_quality: int, description: str
) -> None:
    """Write ``image`` (uint8 RGB, level 0 at ``mpp`` µm/px) as a pyramidal TIFF, atomically."""
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=False) as tif:
        for level, plane in enumerate(pyramid(image)):
            level_mpp = mpp * image.shape[1] / plane.shape[1]
            pixels_per_cm = _MICRONS_PER_CM / level_mpp
            tif.write(
                plane,
                photometric="rgb",
                tile=(TILE_PX, TILE_PX),
                compression="jpeg",
                compressionargs={"level": int(jpeg_quality)},
                resolution=(pixels_per_cm, pixels_per_cm),
                resolutionunit="CENTIMETER",
                subfiletype=0 if level == 0 else 1,  # 1: reduced-resolution image
                description=description if level == 0 else None,
                metadata=None,
                software="pathosae",
            )
