"""Tiling one slide: resolution, tissue mask, tile grid, and the files that record them."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import openslide

import pathosae
from pathosae.config import TilingConfig
from pathosae.errors import SlideError
from pathosae.io import atomic_path, settings_hash
from pathosae.schema import SETTINGS_HASH
from pathosae.slides import open_slide, resolve_mpp
from pathosae.tiling.geometry import grid_coords, plan_reads, tissue_fractions
from pathosae.tiling.qc import render_qc, save_png_atomic
from pathosae.tiling.reader import RESIZE_FILTER, TileGeometry
from pathosae.tiling.tissue import read_thumbnails, thumbnail_size, tissue_mask

# Settings that change how work is scheduled but not what is written.
_NON_OUTPUT_SETTINGS = ("num_workers",)
_NO_TISSUE_FIX = (
    "check that the slide holds stained tissue; for faint or pale stains lower "
    "tiling.saturation_threshold (or tiling.tissue_threshold) in the config"
)


@dataclass(frozen=True)
class SlideTiles:
    """The outcome of tiling one slide."""

    geometry: TileGeometry
    coords: np.ndarray  # (N, 2) int64, level-0 px, row-major
    tissue_fraction: np.ndarray  # (N,) float, tissue share of each kept tile
    mask: np.ndarray  # tissue mask at detection_mpp


def slide_settings_hash(cfg: TilingConfig, path: str | os.PathLike[str], mpp: float | None) -> str:
    """Hash of everything a slide's tiles depend on: settings, the file's identity, the mpp given."""
    stat = Path(path).stat()
    settings = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _NON_OUTPUT_SETTINGS}
    return settings_hash(
        {
            "tiling": settings,
            "slide_path": str(path),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "manifest_mpp": _clean_mpp(mpp),
            "pathosae_version": pathosae.__version__,
        }
    )


def tile_slide(
    path: str | os.PathLike[str],
    slide_id: str,
    cfg: TilingConfig,
    manifest_mpp: float | None = None,
    tiles_path: str | os.PathLike[str] | None = None,
    qc_path: str | os.PathLike[str] | None = None,
) -> SlideTiles:
    """Detect tissue and lay the tile grid on one slide; write the h5 (and QC PNG) when paths are given.

    Raises :class:`SlideError` for unreadable or corrupt files, a missing resolution, or a slide
    without tissue. The QC image is written before the h5, so an h5 on disk means the slide is done.
    """
    path = str(path)
    slide = open_slide(path, slide_id)
    digest = slide_settings_hash(cfg, path, manifest_mpp) if tiles_path is not None else ""
    try:
        result, qc_image = _tile_open_slide(slide, path, slide_id, cfg, manifest_mpp, digest)
    except openslide.OpenSlideError as exc:
        raise SlideError(
            slide_id, path, f"reading pixels failed ({exc}); the file is probably truncated or "
            "corrupt", "re-copy or re-export the slide",
        ) from None
    finally:
        slide.close()
    if qc_path is not None and qc_image is not None:
        save_png_atomic(qc_image, Path(qc_path))
    if tiles_path is not None:
        write_tiles_h5(Path(tiles_path), result)
    return result


def _tile_open_slide(
    slide: openslide.OpenSlide,
    path: str,
    slide_id: str,
    cfg: TilingConfig,
    manifest_mpp: float | None,
    digest: str,
) -> tuple[SlideTiles, Any]:
    source_mpp = float(resolve_mpp(slide, _clean_mpp(manifest_mpp), slide_id, path))
    plan = plan_reads(slide.level_downsamples, source_mpp, cfg.target_mpp, cfg.tile_px)
    detection, qc_thumb = read_thumbnails(
        slide,
        [
            thumbnail_size(slide.dimensions, source_mpp, cfg.detection_mpp),
            thumbnail_size(slide.dimensions, source_mpp, cfg.qc_mpp),
        ],
    )
    detection_mpp = source_mpp * detection.scale_xy[0]
    mask = tissue_mask(detection.rgb, detection_mpp, cfg)
    if not mask.any():
        raise SlideError(slide_id, path, "no tissue found on the slide", _NO_TISSUE_FIX)
    coords = grid_coords(*slide.dimensions, plan)
    fractions = tissue_fractions(mask, coords, plan.tile_size_level0, detection.scale_xy)
    keep = fractions >= cfg.tissue_threshold
    if not keep.any():
        raise SlideError(
            slide_id, path, f"no tissue found: no tile has a tissue fraction >= "
            f"{cfg.tissue_threshold:g} (largest {fractions.max(initial=0.0):.2f})", _NO_TISSUE_FIX,
        )
    geometry = TileGeometry(
        slide_id=slide_id,
        slide_path=path,
        source_mpp=source_mpp,
        target_mpp=cfg.target_mpp,
        tile_px=cfg.tile_px,
        tile_size_level0=plan.tile_size_level0,
        read_level=plan.read_level,
        read_size_px=plan.read_size_px,
        tissue_threshold=cfg.tissue_threshold,
        settings_hash=digest,
        pathosae_version=pathosae.__version__,
    )
    result = SlideTiles(geometry, coords[keep], fractions[keep], mask)
    qc_image = render_qc(
        qc_thumb.rgb, qc_thumb.scale_xy, mask, result.coords, plan.tile_size_level0
    )
    return result, qc_image


def write_tiles_h5(target: Path, result: SlideTiles) -> None:
    """``coords`` (N×2 int64) and ``tissue_fraction`` datasets plus the geometry as attributes."""
    geometry = result.geometry
    with atomic_path(target) as tmp, h5py.File(tmp, "w") as h5:
        coords = h5.create_dataset("coords", data=result.coords.astype(np.int64))
        # TRIDENT/CLAM readers look for these on the coords dataset.
        coords.attrs["patch_size"] = geometry.tile_px
        coords.attrs["patch_size_level0"] = geometry.step_level0
        h5.create_dataset("tissue_fraction", data=result.tissue_fraction.astype(np.float32))
        for key, value in geometry.to_h5_attrs().items():
            h5.attrs[key] = value
        h5.attrs["step_level0"] = geometry.step_level0
        h5.attrs["resize_filter"] = RESIZE_FILTER.name.lower()
        h5.attrs["n_tiles"] = len(result.coords)


def finished_tiles(target: Path, digest: str) -> int | None:
    """Tile count of a finished, valid h5 with this settings hash; None when it must be (re)made."""
    if not target.is_file():
        return None
    try:
        with h5py.File(target, "r") as h5:
            if h5.attrs.get(SETTINGS_HASH) != digest:
                return None
            coords = h5["coords"]
            if coords.ndim != 2 or coords.shape[1] != 2:
                return None
            return int(coords.shape[0])
    except (OSError, KeyError):
        return None


def _clean_mpp(mpp: float | None) -> float | None:
    if mpp is None:
        return None
    mpp = float(mpp)
    return None if math.isnan(mpp) else mpp
