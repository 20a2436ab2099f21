"""Quality-control image: the slide thumbnail, its tissue mask and the kept tile grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pathosae.io import atomic_path

_MASK_TINT = np.array([0, 170, 80], dtype=np.float32)  # green over detected tissue
_MASK_ALPHA = 0.30
_GRID_COLOUR = (20, 60, 230)


def render_qc(
    thumb_rgb: np.ndarray,
    thumb_scale_xy: tuple[float, float],
    mask: np.ndarray,
    coords: np.ndarray,
    tile_size_level0: float,
) -> Image.Image:
    """Thumbnail with the tissue mask tinted green and each kept tile outlined in blue."""
    height, width = thumb_rgb.shape[:2]
    mask_up = np.asarray(
        Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), Image.Resampling.NEAREST)
    ) > 0
    image = thumb_rgb.astype(np.float32)
    image[mask_up] = image[mask_up] * (1 - _MASK_ALPHA) + _MASK_TINT * _MASK_ALPHA
    qc = Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(qc)
    sx, sy = thumb_scale_xy
    for x, y in coords:
        box = (x / sx, y / sy, (x + tile_size_level0) / sx - 1, (y + tile_size_level0) / sy - 1)
        draw.rectangle(tuple(round(v) for v in box), outline=_GRID_COLOUR, width=1)
    return qc


def save_png_atomic(image: Image.Image, target: Path) -> None:
    with atomic_path(target) as tmp:
        image.save(tmp, format="PNG", compress_level=1)
