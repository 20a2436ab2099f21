"""Tiling: tissue detection and tile geometry at a physical resolution (µm/px, not levels).

``tile_slide`` tiles one slide; ``run_stage`` tiles a run's cohort into ``tiles/<slide_id>.h5``
and ``qc/<slide_id>.png``; ``read_tile``/``load_tiles`` read the tiles back for later stages.
"""

from pathosae.tiling.reader import TileGeometry, load_tiles, read_tile
from pathosae.tiling.slide import SlideTiles, tile_slide
from pathosae.tiling.stage import run_stage, tile_cohort

__all__ = [
    "SlideTiles",
    "TileGeometry",
    "load_tiles",
    "read_tile",
    "run_stage",
    "tile_cohort",
    "tile_slide",
]
