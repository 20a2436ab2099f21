"""Tiling: tissue detection and tile geometry at a physical resolution (µm/px, not levels).

``tile_slide`` tiles one slide; ``run_stage`` tiles a run's cohort into ``tiles/<slide_id>.h5``
and ``qc/<slide_id>.png``; ``read_tile``/``load_tiles`` read the tiles back for later stages.
Exports are lazy: a later stage reading tiles does not import the tiling stage.
"""

from __future__ import annotations

from pathosae._lazy import lazy_exports

_EXPORTS = {
    "SlideTiles": "pathosae.tiling.slide",
    "TileGeometry": "pathosae.tiling.reader",
    "load_tiles": "pathosae.tiling.reader",
    "read_tile": "pathosae.tiling.reader",
    "run_stage": "pathosae.tiling.stage",
    "tile_cohort": "pathosae.tiling.stage",
    "tile_slide": "pathosae.tiling.slide",
}

__all__ = [
    "SlideTiles",
    "TileGeometry",
    "load_tiles",
    "read_tile",
    "run_stage",
    "tile_cohort",
    "tile_slide",
]

__getattr__ = lazy_exports(__name__, _EXPORTS)
