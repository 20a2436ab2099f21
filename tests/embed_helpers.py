"""A tiny real run for embedding/feature tests: real slide files, a cohort table, tile files."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import tifffile

from pathosae.io import write_parquet_atomic
from pathosae.run import RunDir
from pathosae.tiling.reader import TileGeometry

TILE_PX = 224
TARGET_MPP = 0.5


def write_pyramidal_tiff(path: Path, height: int = 640, width: int = 768, seed: int = 0) -> Path:
    """A 2-level JPEG-tiled TIFF at 0.5 µm/px that OpenSlide opens as a generic tiled slide."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([
        (xx * 255 // width), (yy * 255 // height), rng.integers(60, 200, size=(height, width)),
    ], axis=-1).astype(np.uint8)
    res = 1e4 / TARGET_MPP  # pixels per centimetre
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, tile=(256, 256), photometric="rgb", compression="jpeg",
                  resolution=(res, res), resolutionunit="CENTIMETER")
        tif.write(np.ascontiguousarray(image[::2, ::2]), tile=(256, 256), photometric="rgb",
                  compression="jpeg", resolution=(res / 2, res / 2), resolutionunit="CENTIMETER",
                  subfiletype=1)
    return path


def write_tiles(run: RunDir, slide_id: str, path: Path, coords: np.ndarray,
                source_mpp: float = TARGET_MPP, settings_hash: str = "tiles0") -> None:
    size0 = TILE_PX * TARGET_MPP / source_mpp
    geom = TileGeometry(
        slide_id=slide_id, slide_path=str(path), source_mpp=source_mpp, target_mpp=TARGET_MPP,
        tile_px=TILE_PX, tile_size_level0=size0, read_level=0, read_size_px=round(size0),
        tissue_threshold=0.5, settings_hash=settings_hash, pathosae_version="test",
    )
    run.tiles_dir.mkdir(parents=True, exist_ok=True)
    with h5py.File(run.tiles_path(slide_id), "w") as h5:
        h5.create_dataset("coords", data=np.asarray(coords, dtype=np.int64).reshape(-1, 2))
        for key, value in geom.to_h5_attrs().items():
            h5.attrs[key] = value


def write_cohort(run: RunDir, slides: dict[str, Path]) -> pd.DataFrame:
    ids = list(slides)
    cohort = pd.DataFrame({
        "slide_id": ids,
        "path": [str(slides[s]) for s in ids],
        "patient_id": [f"p{i}" for i in range(len(ids))],
        "mpp": np.nan,
        "split": ["train", "val", "test", "train"][: len(ids)] + ["train"] * max(0, len(ids) - 4),
        "manifest_row": np.arange(2, 2 + len(ids)),
        "label": ["a", "b"] * (len(ids) // 2) + ["a"] * (len(ids) % 2),
        "site": [f"site{i % 2}" for i in range(len(ids))],
    })
    run.root.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(run.cohort_path, cohort)
    return cohort


def grid_coords(width: int, height: int, step: int, limit: int) -> np.ndarray:
    coords = [(x, y) for y in range(0, height - step + 1, step)
              for x in range(0, width - step + 1, step)]
    return np.asarray(coords[:limit], dtype=np.int64)
