"""Per-unit activations of every tile, computed once per run and SAE and kept unit-major on disk.

The SAE's codes are sparse, so the cache stores only the tiles where a unit fires, grouped by unit
(``ptr[u]:ptr[u+1]`` slices ``rows``/``values``, rows ascending within a unit). One unit page then
reads a few kilobytes from memory-mapped files instead of encoding the run again: top tiles,
quantile samples, histogram, firing frequency and the per-slide heatmap all come from that slice.
Files land atomically and ``meta.json`` is written last with the inputs' fingerprint, so a cache
whose features or SAE changed is rebuilt and a half-written one is never trusted.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch

from pathosae.features import StoreRows
from pathosae.io import atomic_path, read_json, write_json_atomic, write_parquet_atomic

CACHE_VERSION = 1
ENCODE_CHUNK = 8192
_ARRAYS = ("ptr", "rows", "values")


class SparseEncoder(Protocol):
    d_sae: int

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...


def _sparse_chunk(sae: SparseEncoder, x: torch.Tensor) -> tuple[np.ndarray, ...]:
    """(cols, rows, values) of the positive codes of one chunk."""
    encode_sparse = getattr(sae, "encode_sparse", None)
    if encode_sparse is not None:
        codes = encode_sparse(x)
        rows, cols, values = codes.rows, codes.cols, codes.values
    else:
        dense = sae.encode(x)
        rows, cols = (dense > 0).nonzero(as_tuple=True)
        values = dense[rows, cols]
    keep = values > 0
    return cols[keep].numpy(), rows[keep].numpy(), values[keep].float().numpy()


@torch.no_grad()
def build_unit_cache(
    matrix: np.ndarray | StoreRows, sae: SparseEncoder, folder: Path, fingerprint: str,
    chunk: int = ENCODE_CHUNK,
) -> UnitActivations:
    """Encode ``matrix`` (tiles × dims, memmap is fine) in chunks and write the unit-major cache."""
    if hasattr(sae, "eval"):
        sae.eval()
    n_rows, d_sae = int(matrix.shape[0]), int(sae.d_sae)
    cols_parts, rows_parts, value_parts = [], [], []
    for start in range(0, n_rows, chunk):
        x = torch.from_numpy(np.array(matrix[start : start + chunk], dtype=np.float32))
        cols, rows, values = _sparse_chunk(sae, x)
        cols_parts.append(cols.astype(np.int32))
        rows_parts.append((rows + start).astype(np.int64))
        value_parts.append(values.astype(np.float32))
    cols = np.concatenate(cols_parts) if cols_parts else np.zeros(0, np.int32)
    rows = np.concatenate(rows_parts) if rows_parts else np.zeros(0, np.int64)
    values = np.concatenate(value_parts) if value_parts else np.zeros(0, np.float32)
    order = np.lexsort((rows, cols))
    counts = np.bincount(cols, minlength=d_sae)
    arrays = {"ptr": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
              "rows": rows[order], "values": values[order]}
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        with atomic_path(folder / f"{name}.npy") as tmp, tmp.open("wb") as fh:
            np.save(fh, array)
    write_parquet_atomic(folder / "units.parquet", unit_summary(arrays, n_rows, d_sae))
    write_json_atomic(folder / "meta.json", {"version": CACHE_VERSION, "fingerprint": fingerprint,
                                             "n_rows": n_rows, "d_sae": d_sae,
                                             "nnz": len(arrays["rows"])})
    return UnitActivations.load(folder)


def unit_summary(arrays: dict[str, np.ndarray], n_rows: int, d_sae: int) -> pd.DataFrame:
    """Firing frequency, mean activation when firing and maximum, one row per unit."""
    ptr, values = arrays["ptr"], arrays["values"]
    counts = np.diff(ptr)
    units = np.repeat(np.arange(d_sae), counts)
    sums = np.bincount(units, weights=values, minlength=d_sae)
    maxima = np.zeros(d_sae, dtype=np.float32)
    fired = counts > 0
    if fired.any():
        maxima[fired] = np.maximum.reduceat(values, ptr[:-1][fired])
    return pd.DataFrame({
        "unit": np.arange(d_sae, dtype=np.int64),
        "frequency": counts / max(n_rows, 1),
        "n_tiles": counts.astype(np.int64),
        "mean_active": np.divide(sums, counts, out=np.zeros(d_sae), where=fired),
        "max": maxima.astype(np.float64),
    })


def cache_is_current(folder: Path, fingerprint: str) -> bool:
    meta = folder / "meta.json"
    if not meta.is_file() or not all((folder / f"{n}.npy").is_file() for n in _ARRAYS):
        return False
    try:
        info = read_json(meta)
    except (OSError, ValueError):
        return False
    return info.get("version") == CACHE_VERSION and info.get("fingerprint") == fingerprint


@dataclass
class UnitActivations:
    """Memory-mapped unit-major activations (see the module docstring)."""

    ptr: np.ndarray
    rows: np.ndarray
    values: np.ndarray
    units: pd.DataFrame
    n_rows: int
    d_sae: int

    @classmethod
    def load(cls, folder: Path) -> UnitActivations:
        meta: dict[str, Any] = read_json(folder / "meta.json")
        arrays = {n: np.load(folder / f"{n}.npy", mmap_mode="r") for n in _ARRAYS}
        return cls(np.asarray(arrays["ptr"]), arrays["rows"], arrays["values"],
                   pd.read_parquet(folder / "units.parquet"), int(meta["n_rows"]),
                   int(meta["d_sae"]))

    def check_unit(self, unit: int) -> int:
        unit = int(unit)
        if not 0 <= unit < self.d_sae:
            raise IndexError(f"unit {unit} does not exist: the SAE has units 0..{self.d_sae - 1}")
        return unit

    def unit(self, unit: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, values) of the tiles where ``unit`` fires, rows ascending."""
        unit = self.check_unit(unit)
        a, b = int(self.ptr[unit]), int(self.ptr[unit + 1])
        return np.asarray(self.rows[a:b]), np.asarray(self.values[a:b])

    def frequency(self, unit: int) -> float:
        unit = self.check_unit(unit)
        return float(self.ptr[unit + 1] - self.ptr[unit]) / max(self.n_rows, 1)

    def top_rows(self, unit: int, n: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` tiles with the highest activation, highest first."""
        rows, values = self.unit(unit)
        if len(values) > n:
            pick = np.argpartition(-values, n - 1)[:n]
            rows, values = rows[pick], values[pick]
        order = np.argsort(-values, kind="stable")
        return rows[order], values[order]

    def quantile_rows(
        self, unit: int, n_bins: int = 5, per_bin: int = 4
    ) -> list[tuple[float, float, np.ndarray, np.ndarray]]:
        """Tiles by activation quantile among the firing tiles: per bin (low, high, rows, values),
        lowest bin first; ``per_bin`` tiles spread evenly through each bin's ranks."""
        rows, values = self.unit(unit)
        if not len(values):
            return []
        order = np.argsort(values, kind="stable")
        edges = np.linspace(0, len(order), n_bins + 1).round().astype(int)
        out = []
        for a, b in itertools.pairwise(edges):
            if b <= a:
                continue
            pick = order[np.unique(np.linspace(a, b - 1, min(per_bin, b - a)).round().astype(int))]
            out.append((float(values[order[a]]), float(values[order[b - 1]]), rows[pick],
                        values[pick]))
        return out

    def histogram(self, unit: int, bins: int = 40) -> tuple[np.ndarray, np.ndarray, int]:
        """Counts and edges of the positive activations, and how many tiles are at zero."""
        _, values = self.unit(unit)
        if not len(values):
            return np.zeros(0, np.int64), np.zeros(0), self.n_rows
        counts, edges = np.histogram(values, bins=bins)
        return counts, edges, self.n_rows - len(values)

    def in_range(self, unit: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, values) of the firing tiles with ``start <= row < stop`` (one slide's tiles)."""
        rows, values = self.unit(unit)
        a, b = np.searchsorted(rows, [start, stop])
        return rows[a:b], values[a:b]
