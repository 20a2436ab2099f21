"""Macenko H&E stain normalisation of tiles before the encoder (a baseline beside the SAE view).

MONAI's ``NormalizeHEStains`` estimates the stain matrix of the image it is given and maps it onto
a fixed reference (its ``target_he`` and ``max_cref``). It offers no way to pass a stain matrix
estimated elsewhere, so normalisation here is per tile, as MONAI does it: every tile is mapped
onto the same reference, whatever its slide. The price is that a tile's own 99th-percentile
stain concentration is scaled to the reference too, so some biology (how dark the nuclei of a
tile are) is normalised along with the site's stain; that is the usual behaviour of the baseline.

A tile with too few stained pixels for the estimate (glass, a fold, a pale edge) cannot be
normalised; it is passed on unchanged and counted, so the fallback rate is visible.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from pathosae.errors import PathosaeError

# MONAI's defaults, written out so the settings hash records them.
TRANSMITTED_LIGHT = 240.0
ALPHA = 1.0
BETA = 0.15
TARGET_HE = ((0.5626, 0.2159), (0.7201, 0.8012), (0.4062, 0.5581))
MAX_CREF = (1.9705, 1.0308)
MIN_STAINED_PIXELS = 256  # fewer stained pixels than this: the covariance is not worth trusting


class HEStainNormaliser:
    """``normaliser(tile) -> (tile, normalised)``; picklable, so DataLoader workers can use it."""

    def __init__(
        self,
        target_he: tuple[tuple[float, float], ...] = TARGET_HE,
        max_cref: tuple[float, float] = MAX_CREF,
        min_stained_pixels: int = MIN_STAINED_PIXELS,
    ) -> None:
        self.target_he = tuple(tuple(float(v) for v in row) for row in target_he)
        self.max_cref = tuple(float(v) for v in max_cref)
        self.min_stained_pixels = int(min_stained_pixels)
        self._normalise: Any = None  # built lazily in the process that uses it

    def describe(self) -> dict[str, Any]:
        """What changes the pixels (recorded in the feature files' settings)."""
        return {
            "method": "monai.apps.pathology.transforms.NormalizeHEStains (Macenko), per tile",
            "tli": TRANSMITTED_LIGHT, "alpha": ALPHA, "beta": BETA,
            "target_he": [list(r) for r in self.target_he], "max_cref": list(self.max_cref),
            "min_stained_pixels": self.min_stained_pixels, "fallback": "raw tile",
        }

    def name(self) -> str:
        return json.dumps(self.describe(), sort_keys=True)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_normalise": None}

    def __call__(self, tile: np.ndarray) -> tuple[np.ndarray, bool]:
        if tile.ndim != 3 or tile.shape[-1] != 3 or tile.dtype != np.uint8:
            raise PathosaeError(
                f"stain normalisation needs a uint8 H×W×3 RGB tile, got {tile.dtype} {tile.shape}."
            )
        if self._normalise is None:
            from monai.apps.pathology.transforms import NormalizeHEStains

            self._normalise = NormalizeHEStains(
                tli=TRANSMITTED_LIGHT, alpha=ALPHA, beta=BETA,
                target_he=np.asarray(self.target_he), max_cref=np.asarray(self.max_cref),
            )
        if stained_pixels(tile) < self.min_stained_pixels:
            return tile, False
        try:
            with np.errstate(all="ignore"):
                out = np.asarray(self._normalise(tile), dtype=np.float32)
        except (ValueError, np.linalg.LinAlgError):
            return tile, False
        if out.shape != tile.shape or not np.isfinite(out).all():
            return tile, False
        return np.clip(out, 0, 255).astype(np.uint8), True


def stained_pixels(tile: np.ndarray) -> int:
    """Pixels whose optical density exceeds MONAI's ``beta`` in every channel."""
    rgb = tile.reshape(-1, 3).astype(np.float32) + 1.0
    od = -np.log(np.minimum(rgb, TRANSMITTED_LIGHT) / TRANSMITTED_LIGHT)
    return int(np.all(od > BETA, axis=1).sum())
