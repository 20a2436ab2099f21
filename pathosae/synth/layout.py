"""Where the tissue is and which phenotype each region has, on a coarse grid.

The phenotype map is drawn at ``MAP_DOWNSAMPLE`` times coarser than level 0 and is the exact
ground truth: level-0 pixels take the class of the cell they fall in.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from pathosae.synth.params import PHENOTYPES

MAP_DOWNSAMPLE = 4
"""Level-0 pixels per phenotype-map cell along each axis."""

BACKGROUND = 0
CLASS_NAMES: tuple[str, ...] = ("background", *PHENOTYPES)

# Typical region size of each phenotype (Gaussian sigma of its score field, in map cells).
_REGION_SIGMA = {"tumour": 30.0, "stroma": 26.0, "lymphocyte": 14.0, "necrosis": 18.0, "fat": 20.0}


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-SD Gaussian random field with correlation length ``sigma`` cells.

    Wide fields are drawn on a coarser grid and upsampled: the same look at a fraction of the cost.
    """
    step = max(1, int(sigma // 2))
    coarse = (-(-shape[0] // step) + 1, -(-shape[1] // step) + 1)
    field = ndimage.gaussian_filter(
        rng.standard_normal(coarse, dtype=np.float32), sigma / step, mode="wrap", truncate=3.0
    )
    if step > 1:
        field = upsample_bilinear(field, step)
    field = np.ascontiguousarray(field[: shape[0], : shape[1]])
    field -= field.mean()
    field /= field.std() + 1e-12
    return field


def upsample_bilinear(field: np.ndarray, factor: int) -> np.ndarray:
    """Separable bilinear upsampling by an integer factor (pixel centres aligned), float32."""
    out = field.astype(np.float32, copy=False)
    for axis in (0, 1):
        n = out.shape[axis]
        pos = (np.arange(n * factor, dtype=np.float32) + 0.5) / factor - 0.5
        low = np.clip(np.floor(pos).astype(np.int64), 0, n - 1)
        high = np.minimum(low + 1, n - 1)
        weight = np.clip(pos - low, 0, 1).astype(np.float32)
        shape = [1, 1]
        shape[axis] = -1
        weight = weight.reshape(shape)
        out = np.take(out, low, axis=axis) * (1 - weight) + np.take(out, high, axis=axis) * weight
    return out


def tissue_mask(rng: np.random.Generator, shape: tuple[int, int], cover: float) -> np.ndarray:
    """A blobby tissue section covering about ``cover`` of the slide, away from the edges."""
    rows, cols = shape
    y = np.linspace(-1, 1, rows, dtype=np.float32)[:, None]
    x = np.linspace(-1, 1, cols, dtype=np.float32)[None, :]
    centre = rng.uniform(-0.15, 0.15, 2)
    radial = 1.0 - ((x - centre[0]) ** 2 + (y - centre[1]) ** 2)
    score = 1.8 * radial + smooth_noise(rng, shape, min(shape) / 10)
    # Glass along the border so tiles near the edge see the section's outline.
    edge = np.minimum(np.minimum(1 - np.abs(x), 1 - np.abs(y)), 0.1) / 0.1
    score = np.where(edge < 1, score - 4 * (1 - edge), score)
    mask = score > np.quantile(score, 1 - cover)
    mask = ndimage.binary_opening(mask, iterations=2)
    labels, n = ndimage.label(mask)
    if n > 1:  # drop crumbs: keep pieces holding at least 3% of the tissue
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
        keep = np.flatnonzero(sizes >= 0.03 * sizes.sum()) + 1
        mask = np.isin(labels, keep)
    return ndimage.binary_fill_holes(mask)


def phenotype_map(rng: np.random.Generator, mask: np.ndarray, target: dict[str, float]) -> np.ndarray:
    """Class per cell (0 background, k+1 = PHENOTYPES[k]) with tissue fractions equal to ``target``.

    Each phenotype gets a smooth random score field. From the rarest phenotype to the commonest,
    a phenotype takes the still-free tissue cells where its score is highest, as many as its
    fraction asks for; the commonest takes what is left (the matrix the others sit in).
    """
    fractions = np.array([target[name] for name in PHENOTYPES], dtype=np.float64)
    fractions /= fractions.sum()
    scores = np.stack([smooth_noise(rng, mask.shape, _REGION_SIGMA[name]) for name in PHENOTYPES])
    tissue_scores = scores[:, mask]
    n_cells = tissue_scores.shape[1]
    winner = np.full(n_cells, -1, dtype=np.int64)
    order = np.argsort(fractions, kind="stable")
    for k in order[:-1]:
        free = np.flatnonzero(winner < 0)
        wanted = min(round(float(fractions[k]) * n_cells), free.size)
        if wanted:
            best = np.argpartition(-tissue_scores[k, free], wanted - 1)[:wanted]
            winner[free[best]] = k
    winner[winner < 0] = order[-1]
    classes = np.zeros(mask.shape, dtype=np.uint8)
    classes[mask] = winner.astype(np.uint8) + 1
    return classes


def class_fractions(classes: np.ndarray) -> dict[str, float]:
    """Fraction of tissue (non-background cells) taken by each phenotype."""
    counts = np.bincount(classes.ravel(), minlength=len(CLASS_NAMES)).astype(np.float64)
    tissue = counts[1:].sum()
    return {name: float(counts[k + 1] / tissue) if tissue else 0.0 for k, name in enumerate(PHENOTYPES)}


def upsample_classes(classes: np.ndarray) -> np.ndarray:
    """Level-0 class per pixel (nearest neighbour from the map)."""
    return np.repeat(np.repeat(classes, MAP_DOWNSAMPLE, axis=0), MAP_DOWNSAMPLE, axis=1)


def level0_classes(classes: np.ndarray) -> np.ndarray:
    """Level-0 class per pixel with smooth region edges instead of MAP_DOWNSAMPLE-pixel stairs.

    Away from edges a pixel takes its cell's class. In cells next to another class, a pixel takes
    the class with the largest bilinear weight among the four nearest cell centres, which turns
    the stairs into short diagonal runs.
    """
    pixel_class = upsample_classes(classes)
    padded = np.pad(classes, 1, mode="edge")
    edge_cell = np.zeros(classes.shape, dtype=bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        edge_cell |= padded[dy : dy + classes.shape[0], dx : dx + classes.shape[1]] != classes
    cell_y, cell_x = np.nonzero(edge_cell)
    offsets = np.arange(MAP_DOWNSAMPLE)
    ys = (cell_y[:, None, None] * MAP_DOWNSAMPLE + offsets[None, :, None]).repeat(MAP_DOWNSAMPLE, 2)
    xs = (cell_x[:, None, None] * MAP_DOWNSAMPLE + offsets[None, None, :]).repeat(MAP_DOWNSAMPLE, 1)
    ys, xs = ys.ravel(), xs.ravel()
    pos_y = (ys + 0.5) / MAP_DOWNSAMPLE - 0.5
    pos_x = (xs + 0.5) / MAP_DOWNSAMPLE - 0.5
    y0 = np.clip(np.floor(pos_y).astype(np.int64), 0, classes.shape[0] - 1)
    x0 = np.clip(np.floor(pos_x).astype(np.int64), 0, classes.shape[1] - 1)
    y1 = np.minimum(y0 + 1, classes.shape[0] - 1)
    x1 = np.minimum(x0 + 1, classes.shape[1] - 1)
    fy, fx = np.clip(pos_y - y0, 0, 1), np.clip(pos_x - x0, 0, 1)
    corners = np.stack([classes[y0, x0], classes[y0, x1], classes[y1, x0], classes[y1, x1]])
    weights = np.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx])
    # Ties go to the pixel's own cell class, so flat regions never change.
    own = pixel_class[ys, xs]
    votes = np.stack([(weights * (corners == c)).sum(axis=0) for c in corners])
    votes += 1e-6 * (corners == own)
    pixel_class[ys, xs] = corners[np.argmax(votes, axis=0), np.arange(ys.size)]
    return pixel_class
