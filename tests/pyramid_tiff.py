"""Small pyramidal TIFFs that OpenSlide reads as slides (generic tiled TIFF), for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile


def write_pyramid(path: Path, image: np.ndarray, mpp: float, factors: tuple[int, ...]) -> Path:
    """A generic tiled pyramidal TIFF (JPEG tiles, levels as top-level IFDs, resolution in cm)."""
    resolution = (1e4 / mpp, 1e4 / mpp)
    with tifffile.TiffWriter(path) as tif:
        for factor in factors:
            level = block_mean(image, factor)
            tif.write(
                np.ascontiguousarray(level), tile=(256, 256), compression="jpeg",
                photometric="rgb", resolution=(resolution[0] / factor, resolution[1] / factor),
                resolutionunit="CENTIMETER", subfiletype=0 if factor == 1 else 1,
            )
    return path


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Area-averaged downsampling, as scanners build their pyramids."""
    if factor == 1:
        return image
    h, w = image.shape[0] // factor * factor, image.shape[1] // factor * factor
    blocks = image[:h, :w].reshape(h // factor, factor, w // factor, factor, 3)
    return np.rint(blocks.mean(axis=(1, 3))).astype(np.uint8)


def textured_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([(xx * 7) % 256, (yy * 5) % 256, ((xx + yy) * 3) % 256], axis=-1)
    noise = rng.integers(0, 40, size=(height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)
