"""Reading tile batches from the slides in DataLoader workers.

One batch never mixes slides, so a slide's features depend only on its own tiles (the same numbers
whichever other slides are pending). Each worker keeps one open OpenSlide handle per slide it is
reading; a failure is returned as data so the main process can skip that slide and go on.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import openslide
import torch
from torch.utils.data import Dataset

from pathosae.errors import PathosaeError
from pathosae.slides import open_slide
from pathosae.tiling.reader import TileGeometry, read_tile

MAX_OPEN_SLIDES = 4  # per worker; batches arrive slide by slide, so a few handles suffice
# What reading a slide's tiles can raise (a slide that vanished or will not open, a corrupt tile,
# a tile of the wrong size): returned as the batch's error so the slide is skipped or stops the run.
READ_ERRORS: tuple[type[Exception], ...] = (
    PathosaeError, openslide.OpenSlideError, OSError, ValueError,
)

# A pixel transform applied to each tile before the model's own: tile -> (tile, applied). A tile
# it cannot handle comes back unchanged with applied=False and is counted in ``fallbacks``.
PixelTransform = Callable[[np.ndarray], tuple[np.ndarray, bool]]


@dataclass(frozen=True)
class SlideTiles:
    """One slide's work: where to read and which tiles."""

    slide_id: str
    path: str
    coords: np.ndarray  # (N, 2) int64, level-0 px
    geometry: TileGeometry


@dataclass(frozen=True)
class BatchKey:
    slide: int  # index into the dataset's slides
    start: int
    stop: int


def plan_batches(slides: list[SlideTiles], batch_size: int) -> list[BatchKey]:
    """Consecutive, slide-aligned batches in slide order."""
    keys = []
    for index, slide in enumerate(slides):
        for start in range(0, len(slide.coords), batch_size):
            keys.append(BatchKey(index, start, min(start + batch_size, len(slide.coords))))
    return keys


class TileBatchDataset(Dataset):
    """``dataset[BatchKey]`` -> dict with uint8 ``tiles`` (B, H, W, 3) or an ``error`` message.

    With a ``pixel_transform`` (e.g. stain normalisation) each tile passes through it in the
    worker; ``fallbacks`` counts the tiles it returned unchanged.
    """

    def __init__(
        self, slides: list[SlideTiles], pixel_transform: PixelTransform | None = None
    ) -> None:
        self.slides = slides
        self.pixel_transform = pixel_transform
        self._handles: OrderedDict[str, openslide.OpenSlide] = OrderedDict()

    def __len__(self) -> int:
        return len(self.slides)

    def __getitem__(self, key: BatchKey) -> dict[str, Any]:
        slide = self.slides[key.slide]
        out: dict[str, Any] = {"slide": key.slide, "start": key.start, "stop": key.stop,
                               "error": "", "fallbacks": 0}
        try:
            handle = self._handle(slide)
            tiles = [
                read_tile(handle, int(x), int(y), slide.geometry)
                for x, y in slide.coords[key.start : key.stop]
            ]
            if self.pixel_transform is not None:
                transformed = [self.pixel_transform(tile) for tile in tiles]
                tiles = [tile for tile, _ in transformed]
                out["fallbacks"] = sum(not applied for _, applied in transformed)
            out["tiles"] = torch.from_numpy(np.stack(tiles))
        except READ_ERRORS as exc:
            out["error"] = f"{type(exc).__name__}: {exc}"
            out["tiles"] = torch.empty(0, dtype=torch.uint8)
        return out

    def _handle(self, slide: SlideTiles) -> openslide.OpenSlide:
        handle = self._handles.get(slide.path)
        if handle is not None:
            self._handles.move_to_end(slide.path)
            return handle
        handle = open_slide(slide.path, slide.slide_id)
        self._handles[slide.path] = handle
        while len(self._handles) > MAX_OPEN_SLIDES:
            _, oldest = self._handles.popitem(last=False)
            oldest.close()
        return handle

    def close(self) -> None:
        while self._handles:
            _, handle = self._handles.popitem()
            handle.close()


def worker_init(_worker_id: int) -> None:
    # Readers decode JPEG tiles; leave the cores' math threads to the model.
    torch.set_num_threads(1)
