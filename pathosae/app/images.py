"""Tile images, slide thumbnails and unit heatmaps, read on demand from the slides and cached.

Only the tiles a page shows are read (OpenSlide, through :func:`pathosae.tiling.reader.read_tile`
with the tiling stage's geometry); least-recently-used caches bound the memory used.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import openslide

    from pathosae.app.runview import RunView
    from pathosae.tiling.reader import TileGeometry

TILE_CACHE = 512  # tiles of 224 px: about 75 MB at most
THUMB_PX = 640


class SlideImages:
    """Per-run image reader; every slide path goes through the run's path guard."""

    def __init__(self, view: RunView) -> None:
        self.view = view
        self.slide = lru_cache(maxsize=8)(self._open)
        self.geometry = lru_cache(maxsize=256)(self._geometry)
        self.tile = lru_cache(maxsize=TILE_CACHE)(self._tile)
        self.thumbnail = lru_cache(maxsize=32)(self._thumbnail)

    def _open(self, slide_id: str) -> openslide.OpenSlide:
        from pathosae.slides import open_slide

        return open_slide(self.view.slide_path(slide_id), slide_id)

    def _geometry(self, slide_id: str) -> tuple[np.ndarray, TileGeometry]:
        from pathosae.tiling.reader import load_tiles

        self.view.require("tile")
        return load_tiles(self.view.run, self.view.check_slide(slide_id))

    def _tile(self, slide_id: str, x: int, y: int) -> np.ndarray:
        from pathosae.tiling.reader import read_tile

        _, geom = self.geometry(slide_id)
        return read_tile(self.slide(slide_id), int(x), int(y), geom)

    def _thumbnail(self, slide_id: str, max_px: int = THUMB_PX) -> Image.Image:
        return self.slide(slide_id).get_thumbnail((max_px, max_px)).convert("RGB")

    def heatmap(
        self, slide_id: str, coords: np.ndarray, values: np.ndarray, vmax: float | None = None,
        alpha: float = 0.55,
    ) -> Image.Image:
        """The slide thumbnail with each tile coloured by ``values`` (zero: left transparent)."""
        from matplotlib import colormaps

        thumb = self.thumbnail(slide_id)
        slide = self.slide(slide_id)
        _, geom = self.geometry(slide_id)
        width0, height0 = slide.dimensions
        sx, sy = thumb.width / width0, thumb.height / height0
        heat = np.zeros((thumb.height, thumb.width), dtype=np.float32)
        mask = np.zeros_like(heat, dtype=bool)
        top = float(vmax if vmax is not None else (values.max() if len(values) else 1.0)) or 1.0
        edge = geom.tile_size_level0
        for (x, y), value in zip(np.asarray(coords), np.asarray(values), strict=True):
            x0, y0 = int(x * sx), int(y * sy)
            x1, y1 = max(x0 + 1, int((x + edge) * sx)), max(y0 + 1, int((y + edge) * sy))
            heat[y0:y1, x0:x1] = value / top
            mask[y0:y1, x0:x1] = value > 0
        rgba = colormaps["inferno"](np.clip(heat, 0, 1))
        base = np.asarray(thumb, dtype=np.float32) / 255.0
        blend = np.where(mask[..., None], (1 - alpha) * base + alpha * rgba[..., :3], base)
        return Image.fromarray((blend * 255).astype(np.uint8))
