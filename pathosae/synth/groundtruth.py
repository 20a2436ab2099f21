"""Ground-truth phenotype maps on disk, and the phenotype composition of any tile.

``ground_truth/phenotypes/<slide_id>.npz`` holds ``classes`` (uint8, class 0 = background glass,
class k = ``class_names[k]``), ``class_names``, ``mpp`` (µm per map cell) and ``downsample``
(level-0 px per map cell; the generator writes the exact level-0 map, downsample 1). Level-0
pixel (x, y) has class ``classes[y // downsample, x // downsample]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pathosae.errors import PathosaeError
from pathosae.io import atomic_path
from pathosae.synth.layout import CLASS_NAMES

PHENOTYPE_DIR = "phenotypes"


def phenotype_map_path(gt_dir: str | Path, slide_id: str) -> Path:
    return Path(gt_dir) / PHENOTYPE_DIR / f"{slide_id}.npz"


def write_phenotype_map(
    gt_dir: str | Path, slide_id: str, classes: np.ndarray, mpp: float, downsample: int = 1
) -> Path:
    """Write a class map whose cells are ``downsample`` level-0 px at ``mpp`` µm/px level 0."""
    target = phenotype_map_path(gt_dir, slide_id)
    # Through a file object: given a name, np.savez would append ".npz" to the temp name.
    with atomic_path(target) as tmp, tmp.open("wb") as fh:
        np.savez_compressed(
            fh,
            classes=classes.astype(np.uint8),
            class_names=np.array(CLASS_NAMES),
            mpp=np.float64(mpp * downsample),
            downsample=np.int64(downsample),
        )
    return target


def load_phenotype_map(gt_dir: str | Path, slide_id: str) -> tuple[np.ndarray, list[str], int]:
    """(classes, class_names, downsample) of one slide, or a clear error when it is missing."""
    path = phenotype_map_path(gt_dir, slide_id)
    if not path.is_file():
        raise PathosaeError(
            f"no phenotype map for slide {slide_id!r} at {path}. Fix: pass the 'ground_truth' "
            "folder written by `pathosae synth` and a slide_id from its cohort.csv"
        )
    with np.load(path, allow_pickle=False) as data:
        return data["classes"], [str(n) for n in data["class_names"]], int(data["downsample"])


def tile_phenotype_composition(
    gt_dir: str | Path, slide_id: str, coords: np.ndarray, tile_size_level0: float
) -> pd.DataFrame:
    """Per tile, the exact fraction of its tissue area taken by each phenotype.

    ``coords``: (N, 2) top-left (x, y) of each tile in level-0 px; ``tile_size_level0``: tile edge
    in level-0 px (may be fractional). Columns: x, y, tissue_fraction (tissue area / tile area),
    one column per phenotype (fractions of the tile's tissue, summing to 1; NaN without tissue)
    and ``dominant`` (the phenotype with the largest fraction, "background" without tissue).
    Areas are exact, with cells cut by a tile edge counted by the part inside.
    """
    classes, names, downsample = load_phenotype_map(gt_dir, slide_id)
    xy = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    size = float(tile_size_level0) / downsample
    areas = np.stack(
        [_box_areas(classes, x / downsample, y / downsample, size, len(names)) for x, y in xy]
    ).reshape(-1, len(names))
    tissue = areas[:, 1:].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        fractions = areas[:, 1:] / tissue[:, None]
    fractions[tissue <= 1e-9] = np.nan
    frame = pd.DataFrame(fractions, columns=names[1:])
    frame.insert(0, "tissue_fraction", tissue / size**2)
    frame.insert(0, "y", xy[:, 1].astype(np.int64))
    frame.insert(0, "x", xy[:, 0].astype(np.int64))
    dominant = np.where(tissue > 1e-9, np.argmax(np.nan_to_num(fractions, nan=-1), axis=1) + 1, 0)
    frame["dominant"] = np.array(names, dtype=object)[dominant]
    return frame


def _box_areas(classes: np.ndarray, x0: float, y0: float, size: float, n_classes: int) -> np.ndarray:
    """Area (in map cells) of each class inside the box [x0, x0+size) x [y0, y0+size).

    Cells cut by the box edge count with the fraction of them inside, so fractional tile sizes
    and positions are exact too.
    """
    row_weights, r0 = _overlaps(y0, size, classes.shape[0])
    col_weights, c0 = _overlaps(x0, size, classes.shape[1])
    if row_weights.size == 0 or col_weights.size == 0:
        return np.zeros(n_classes)
    box = classes[r0 : r0 + row_weights.size, c0 : c0 + col_weights.size]
    weights = np.outer(row_weights, col_weights)
    return np.bincount(box.ravel(), weights=weights.ravel(), minlength=n_classes)[:n_classes]


def _overlaps(start: float, size: float, limit: int) -> tuple[np.ndarray, int]:
    """Overlap of each cell [i, i+1) with [start, start+size), for the cells it touches."""
    first = max(int(np.floor(start)), 0)
    last = min(int(np.ceil(start + size)), limit)
    if last <= first:
        return np.zeros(0), first
    cells = np.arange(first, last, dtype=np.float64)
    return np.clip(np.minimum(cells + 1, start + size) - np.maximum(cells, start), 0, 1), first
