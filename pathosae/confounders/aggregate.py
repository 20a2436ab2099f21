"""Unit activations summarised per slide (and per patient): tiles are not independent samples.

Scanner, site and stain batch are properties of a slide, so association tests run on one row per
slide (or per patient, where a patient has several slides): the tile count never inflates the
evidence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

from pathosae.errors import PathosaeError
from pathosae.schema import PATIENT_ID, SLIDE_ID

Aggregation = Literal["mean", "frac_active", "quantile"]
AGGREGATIONS: tuple[Aggregation, ...] = ("mean", "frac_active", "quantile")


SUMMARY_CHUNK = 4096
"""Rows per chunk when ``summarise_tiles`` feeds a whole matrix through ``TileSummaries``."""
DENSE_SHARE = 0.25
"""Codes with more non-zeros than this share (raw features, dense SAEs) are held dense for the
quantile; sparser codes as their non-zero entries only."""
_QUANTILE_BLOCK = 256  # columns whose dense quantile is taken at once (float64 copies)


def summarise_tiles(
    codes: np.ndarray,
    aggregations: Sequence[Aggregation] = AGGREGATIONS,
    quantile: float = 0.9,
    active_threshold: float = 0.0,
) -> dict[str, np.ndarray]:
    """One vector per aggregation (length = units) from the tile codes (tiles × units) of a group.

    mean: mean activation; frac_active: fraction of tiles whose code exceeds ``active_threshold``;
    quantile: the ``quantile`` of the tile activations (a unit that fires on a few tiles).
    The in-memory form of :class:`TileSummaries` (the same numbers, fed in chunks).
    """
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise PathosaeError(f"cannot summarise codes of shape {codes.shape}: need tiles × units.")
    summary = TileSummaries(codes.shape[1], aggregations, quantile, active_threshold)
    for start in range(0, len(codes), SUMMARY_CHUNK):
        summary.add(codes[start:start + SUMMARY_CHUNK])
    return summary.result()


class RunningSum:
    """A column sum over row chunks, accumulated row after row as one reduction over all the rows
    would be (numpy sums a C-order matrix's rows in order), so chunking changes no bit.

    Each chunk is cast to ``dtype`` into one buffer behind the running total (no second copy).
    """

    def __init__(self, dtype: type[np.floating] = np.float64) -> None:
        self.dtype = dtype
        self.total: np.ndarray | None = None
        self.n = 0

    def add(self, rows: np.ndarray) -> None:
        if len(rows) == 0:
            return
        if self.total is None:
            self.total = np.add.reduce(np.asarray(rows, dtype=self.dtype), axis=0)
        else:
            stacked = np.empty((len(rows) + 1, rows.shape[1]), dtype=self.dtype)
            stacked[0], stacked[1:] = self.total, rows
            self.total = np.add.reduce(stacked, axis=0)
        self.n += len(rows)

    def mean(self) -> np.ndarray:
        if self.total is None:
            raise PathosaeError("a mean of no rows. Fix: feed at least one row.")
        return self.total / self.n


class TileSummaries:
    """``summarise_tiles`` of one group's codes fed chunk by chunk, with the same numbers.

    Held between chunks: a float64 sum and an active count per unit, and for the quantile the
    codes' non-zero entries (SAE codes are sparse: k of d_sae per tile), or the codes themselves
    (in their dtype) when they are dense. So a slide's memory is its non-zero codes, not
    tiles × units in float64.
    """

    def __init__(
        self,
        n_units: int,
        aggregations: Sequence[Aggregation] = AGGREGATIONS,
        quantile: float = 0.9,
        active_threshold: float = 0.0,
    ) -> None:
        unknown = [a for a in aggregations if a not in AGGREGATIONS]
        if unknown:
            raise PathosaeError(f"unknown aggregation {unknown[0]!r}. Fix: use one of {AGGREGATIONS}.")
        self.n_units, self.aggregations = n_units, tuple(aggregations)
        self.quantile, self.active_threshold = quantile, active_threshold
        self.sum = RunningSum()
        self.active = np.zeros(n_units, dtype=np.int64)
        self.dense: bool | None = None  # decided by the first chunk's share of non-zeros
        self.parts: list[tuple[np.ndarray, np.ndarray] | np.ndarray] = []

    @property
    def n_rows(self) -> int:
        return self.sum.n

    def add(self, codes: np.ndarray) -> None:
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[1] != self.n_units:
            raise PathosaeError(
                f"codes of shape {codes.shape} for a summary of {self.n_units} units. "
                "Fix: feed tiles × units chunks of one SAE's codes."
            )
        if len(codes) == 0:
            return
        self.sum.add(codes)
        self.active += (codes > self.active_threshold).sum(axis=0)
        if "quantile" not in self.aggregations:
            return
        nonzero = codes != 0
        if self.dense is None:
            self.dense = bool(nonzero.mean() > DENSE_SHARE)
        if self.dense:
            self.parts.append(np.array(codes))  # its own dtype: float64 codes stay exact
        else:
            self.parts.append((np.nonzero(nonzero)[1].astype(np.int32), codes[nonzero]))

    def result(self) -> dict[str, np.ndarray]:
        if self.n_rows == 0:
            raise PathosaeError(
                f"cannot summarise codes of shape (0, {self.n_units}): a slide needs at least one "
                "tile. Fix: drop slides without tiles from the cohort (or rerun tiling)."
            )
        out: dict[str, np.ndarray] = {}
        for name in self.aggregations:
            if name == "mean":
                out[name] = self.sum.mean()
            elif name == "frac_active":
                out[name] = self.active / self.n_rows
            else:
                out[name] = self._quantile()
        return out

    def _quantile(self) -> np.ndarray:
        if self.dense:
            codes = np.concatenate(self.parts)
            out = np.empty(self.n_units)
            for start in range(0, self.n_units, _QUANTILE_BLOCK):
                block = codes[:, start:start + _QUANTILE_BLOCK].astype(np.float64)
                out[start:start + _QUANTILE_BLOCK] = np.quantile(block, self.quantile, axis=0)
            return out
        cols = np.concatenate([c for c, _ in self.parts])
        values = np.concatenate([v for _, v in self.parts]).astype(np.float64)
        return sparse_quantile(cols, values, self.n_rows, self.n_units, self.quantile)


def sparse_quantile(
    cols: np.ndarray, values: np.ndarray, n_rows: int, n_units: int, q: float
) -> np.ndarray:
    """``np.quantile(dense, q, axis=0)`` (linear method) of a rows × units matrix given by its
    non-zero entries (``values`` in column ``cols``): every other entry is an exact zero.

    Each column sorted is its negatives, its zeros, its positives; the two order statistics
    around ``(n_rows - 1) * q`` are read from that layout and interpolated as numpy does.
    """
    order = np.lexsort((values, cols))
    cols, values = cols[order], values[order]
    counts = np.bincount(cols, minlength=n_units)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    negatives = np.bincount(cols[values < 0], minlength=n_units)
    zeros = n_rows - counts

    def order_statistic(j: int) -> np.ndarray:
        out = np.zeros(n_units)
        low, high = j < negatives, j >= negatives + zeros
        out[low] = values[starts[low] + j]
        out[high] = values[starts[high] + j - zeros[high]]
        return out

    position = (n_rows - 1) * q
    if position >= n_rows - 1:
        return order_statistic(n_rows - 1)
    lower = math.floor(position)
    gamma = position - lower
    a, b = order_statistic(lower), order_statistic(lower + 1)
    # numpy's lerp: from the nearer end, so that gamma = 1 gives b exactly
    diff = b - a
    return b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma


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
