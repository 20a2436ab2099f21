"""Feature files: RUN/features/<name>/<slide_id>.h5 in the layout TRIDENT and CLAM read.

Datasets ``features`` (N x D) and ``coords`` (N x 2 int64, level-0 px, the tile file's order);
attributes say how the features were made. ``coords`` also carries TRIDENT's patch attributes so
its downstream code (heatmaps, slide encoders) can use the files as they are.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pathosae.io import atomic_path
from pathosae.schema import SETTINGS_HASH


def write_feature_file(
    target: str | os.PathLike[str],
    features: np.ndarray,
    coords: np.ndarray,
    attrs: dict[str, Any],
    coords_attrs: dict[str, Any] | None = None,
) -> None:
    """Write atomically: a killed run leaves the old file or none, never half of one."""
    with atomic_path(target) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("features", data=features)
        dset = h5.create_dataset("coords", data=np.asarray(coords, dtype=np.int64).reshape(-1, 2))
        for key, value in (coords_attrs or {}).items():
            dset.attrs[key] = value
        for key, value in attrs.items():
            h5.attrs[key] = _attr_value(value)


def _attr_value(value: Any) -> Any:
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, sort_keys=True)
    if value is None:
        return ""
    return value


def read_attrs(path: str | os.PathLike[str]) -> dict[str, Any]:
    with h5py.File(path, "r") as h5:
        return {k: _decode(v) for k, v in h5.attrs.items()}


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


def feature_file_state(
    path: Path, settings_hash: str, coords: np.ndarray, dim: int
) -> str:
    """Why a slide must be (re)computed, or ``"done"``.

    Returns "missing", "corrupt" (unreadable or wrong shapes), "stale" (other settings or tile
    coordinates), "imported" (adopted from TRIDENT/CLAM: kept as is) or "done".
    """
    if not path.exists():
        return "missing"
    try:
        with h5py.File(path, "r") as h5:
            feats, stored_coords = h5["features"], h5["coords"]
            if feats.ndim != 2 or stored_coords.shape != (feats.shape[0], 2):
                return "corrupt"
            if h5.attrs.get("imported_from") is not None:
                return "imported"
            if _decode(h5.attrs.get(SETTINGS_HASH, "")) != settings_hash:
                return "stale"
            if feats.shape != (len(coords), dim):
                return "stale"
            if not np.array_equal(stored_coords[:], coords):
                return "stale"
    except (OSError, KeyError, ValueError):
        return "corrupt"
    return "done"
