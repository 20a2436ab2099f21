"""Unit activations summarised per slide (and per patient): tiles are not independent samples.

Scanner, site and stain batch are properties of a slide, so association tests run on one row per
slide (or per patient, where a patient has several slides): the tile count never inflates the
evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

from pathosae.errors import PathosaeError
from pathosae.schema import PATIENT_ID, SLIDE_ID

Aggregation = Literal["mean", "frac_active", "quantile"]
AGGREGATIONS: tuple[Aggregation, ...] = ("mean", "frac_active", "quantile")


def summarise_tiles(
    codes: np.ndarray,
    aggregations: Sequence[Aggregation] = AGGREGATIONS,
    quantile: float = 0.9,
    active_threshold: float = 0.0,
) -> dict[str, np.ndarray]:
    """One vector per aggregation (length = units) from the tile codes (tiles × units) of a group.

    mean: mean activation; frac_active: fraction of tiles whose code exceeds ``active_threshold``;
    quantile: the ``quantile`` of the tile activations (a unit that fires on a few tiles).
    """
    if codes.ndim != 2 or codes.shape[0] == 0:
        raise PathosaeError(
            f"cannot summarise codes of shape {codes.shape}: a slide needs at least one tile. "
            "Fix: drop slides without tiles from the cohort (or rerun tiling)."
        )
    codes = np.asarray(codes, dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    for name in aggregations:
        if name == "mean":
            out[name] = codes.mean(axis=0)
        elif name == "frac_active":
            out[name] = (codes > active_threshold).mean(axis=0)
        elif name == "quantile":
            out[name] = np.quantile(codes, quantile, axis=0)
        else:
            raise PathosaeError(f"unknown aggregation {name!r}. Fix: use one of {AGGREGATIONS}.")
    return out


def aggregate_by_group(
    codes: np.ndarray,
    groups: Sequence[str] | np.ndarray,
    aggregations: Sequence[Aggregation] = AGGREGATIONS,
    quantile: float = 0.9,
    active_threshold: float = 0.0,
) -> tuple[list[str], dict[str, np.ndarray]]:
    """Summaries per group (slide or patient) from tile codes held in memory.

    Returns the group ids in order of first appearance and, per aggregation, a groups × units
    matrix. The stage streams slide by slide instead; this is the in-memory form.
    """
    groups = np.asarray(groups).astype(str)
    if len(groups) != codes.shape[0]:
        raise PathosaeError(
            f"{codes.shape[0]} tile rows but {len(groups)} group ids. "
            "Fix: pass one slide (or patient) id per tile."
        )
    order = list(pd.unique(groups))
    rows: dict[str, list[np.ndarray]] = {a: [] for a in aggregations}
    for gid in order:
        summary = summarise_tiles(codes[groups == gid], aggregations, quantile, active_threshold)
        for name, vector in summary.items():
            rows[name].append(vector)
    return order, {name: np.vstack(v) for name, v in rows.items()}


def patients_with_several_slides(slides: pd.DataFrame) -> bool:
    """True when some patient has more than one slide (then a patient-level scan is added)."""
    if PATIENT_ID not in slides.columns:
        return False
    return bool(slides.groupby(PATIENT_ID)[SLIDE_ID].nunique().gt(1).any())


def patient_metadata(slides: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """One row per patient; a column that varies between a patient's slides becomes NaN there.

    A patient-level test of, say, the scanner only makes sense for patients whose slides share it.
    """
    rows = []
    for patient, group in slides.groupby(PATIENT_ID, sort=False):
        row: dict[str, object] = {PATIENT_ID: patient, "n_slides": len(group)}
        for col in columns:
            values = group[col].dropna().unique()
            row[col] = values[0] if len(values) == 1 else np.nan
        rows.append(row)
    return pd.DataFrame(rows)
