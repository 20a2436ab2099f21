"""The confounder directions the edit stage uses, fitted once per confounder.

LEACE erasers and class-conditional mean-difference directions in embedding space (on the
sampled tiles), logistic-probe weights and the flagged units in SAE-code space (slide means).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pathosae.config import PathosaeConfig
from pathosae.confounders import directions
from pathosae.confounders.collect import Collected
from pathosae.schema import SETTINGS_HASH


def save_all_directions(
    path: Path, data: Collected, associations: pd.DataFrame,
    categorical: list[str], cfg: PathosaeConfig, key: str, sae_name: str,
) -> None:
    """LEACE and mean differences (embedding space), probe weights and flagged units (codes)."""
    label = cfg.cohort.label
    tiles = data.slides.iloc[data.tile_slide].reset_index(drop=True)
    codes = data.codes["mean"] if "mean" in data.codes else next(iter(data.codes.values()))
    tensors: dict[str, np.ndarray] = {}
    described: dict[str, dict[str, object]] = {}
    for variable in (v for v in categorical if v != label):
        known = tiles[variable].notna().to_numpy()
        values = tiles.loc[known, variable].astype(str).to_numpy()
        if len(np.unique(values)) < 2:
            continue
        eraser = directions.fit_leace(data.tile_features[known], values)
        for part, array in directions.eraser_arrays(eraser).items():
            tensors[f"{variable}.leace.{part}"] = array
        condition = tiles.loc[known, label].to_numpy() if label in tiles else None
        mean_diff, levels = directions.mean_difference_directions(
            data.tile_features[known], values, condition)
        tensors[f"{variable}.mean_difference"] = mean_diff
        slide_known = data.slides[variable].notna().to_numpy()
        weights, classes = directions.probe_weights(
            codes[slide_known], data.slides.loc[slide_known, variable].to_numpy(), cfg.confounders.seed)
        tensors[f"{variable}.sae_probe"] = weights
        flagged = associations[(associations["variable"] == variable) & associations["flagged"]]
        tensors[f"{variable}.flagged_units"] = np.unique(flagged["unit"].to_numpy(np.int64))
        described[variable] = {
            "levels": levels,
            "probe_classes": classes,
            "leace": "embedding space: x' = x - ((x - bias) @ proj_right.T) @ proj_left.T",
            "mean_difference": "embedding space, unit-norm, one row per level (level minus the "
                               f"others) within {label!r} classes",
            "sae_probe": "SAE-code space: logistic-probe weights in code units "
                         "(one row if binary: the second class)",
            "flagged_units": f"SAE units with q <= {cfg.confounders.fdr_alpha} in any summary",
        }
    description: dict[str, object] = {SETTINGS_HASH: key, "sae": sae_name, "variables": described,
                   "fitted_on": "sampled tiles (embedding space), slide means (code space)"}
    directions.save_directions(path, tensors, description)


