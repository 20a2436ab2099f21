"""Reading the feature store of a run, and adopting feature folders made by TRIDENT or CLAM.

Stages after embedding go through :class:`FeatureStore`: per-slide loads, a per-tile index with
the cohort's columns, and ``matrix()``, a lazily read view of every tile's features that reads
the rows asked for from the per-slide files. Nothing is copied beside the per-slide files and no
stage needs all features in RAM. Imports stream one file at a time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pathosae.cohort.table import load_cohort
from pathosae.embedding.h5files import read_attrs, write_feature_file
from pathosae.errors import PathosaeError, StageError
from pathosae.fingerprint import file_stats
from pathosae.io import settings_hash, sha256_file
from pathosae.run import RunDir
from pathosae.schema import SETTINGS_HASH, SLIDE_ID

MATRIX_NAME = "_matrix.npy"
MATRIX_MANIFEST = "_matrix.json"
_COHORT_COLUMNS_LEFT_OUT = ("path", "manifest_row")


class FeatureStore:
    """The per-slide feature files of one encoder (``RUN/features/<encoder>/``)."""

    def __init__(self, run: RunDir, encoder: str) -> None:
        folder = run.require(run.features_dir(encoder), "embed")
        cohort = load_cohort(run)
        present = [s for s in cohort[SLIDE_ID].astype(str) if (folder / f"{s}.h5").is_file()]
        self._init(folder, present, cohort.set_index(cohort[SLIDE_ID].astype(str)))
        self.missing = [s for s in cohort[SLIDE_ID].astype(str) if s not in set(present)]

    @classmethod
    def from_folder(cls, folder: str | os.PathLike[str]) -> FeatureStore:
        """A store over any folder of ``<slide_id>.h5`` files (no run, no cohort columns)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise PathosaeError(f"feature folder {folder} does not exist. Fix: pass the folder "
                                "holding the <slide_id>.h5 files.")
        store = cls.__new__(cls)
        ids = sorted(p.stem for p in folder.glob("*.h5") if not p.name.startswith("."))
        store._init(folder, ids, None)
        store.missing = []
        return store

    def _init(self, folder: Path, slide_ids: list[str], cohort: pd.DataFrame | None) -> None:
        if not slide_ids:
            raise StageError(f"no feature files in {folder}. Fix: run `pathosae embed` (or "
                             "`pathosae import-features`) first.")
        self.folder = folder
        self.slide_ids = list(slide_ids)
        self._cohort = cohort
        self._shapes = {s: self._shape(s) for s in self.slide_ids}
        dims = {shape[1] for shape in self._shapes.values()}
        if len(dims) != 1:
            raise StageError(f"feature files in {folder} have different widths {sorted(dims)}. "
                             "Fix: keep one encoder's features per folder.")
        self.dim = dims.pop()

    def path(self, slide_id: str) -> Path:
        return self.folder / f"{slide_id}.h5"

    def _shape(self, slide_id: str) -> tuple[int, int]:
        try:
            with h5py.File(self.path(slide_id), "r") as h5:
                shape = tuple(h5["features"].shape)
        except (OSError, KeyError) as exc:
            raise StageError(f"feature file {self.path(slide_id)} is unreadable ({exc}). Fix: "
                             "delete it and rerun `pathosae embed`.") from None
        if len(shape) != 2:
            raise StageError(f"feature file {self.path(slide_id)}: features have shape {shape}, "
                             "expected (tiles, dim)")
        return int(shape[0]), int(shape[1])

    @property
    def n_tiles(self) -> int:
        return sum(shape[0] for shape in self._shapes.values())

    def counts(self) -> dict[str, int]:
        return {s: self._shapes[s][0] for s in self.slide_ids}

    def load(self, slide_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(features float32 N x D, coords int64 N x 2) of one slide."""
        if slide_id not in self._shapes:
            raise KeyError(f"slide {slide_id!r} has no feature file in {self.folder}")
        with h5py.File(self.path(slide_id), "r") as h5:
            feats = np.asarray(h5["features"][:], dtype=np.float32)
            coords = np.asarray(h5["coords"][:], dtype=np.int64).reshape(-1, 2)
        return feats, coords

    def attrs(self, slide_id: str) -> dict[str, Any]:
        return read_attrs(self.path(slide_id))

    def index(self) -> pd.DataFrame:
        """One row per tile in ``matrix()`` order: slide_id, row, tile, x, y + cohort columns."""
        frames = []
        for slide_id in self.slide_ids:
            with h5py.File(self.path(slide_id), "r") as h5:
                coords = np.asarray(h5["coords"][:], dtype=np.int64).reshape(-1, 2)
            frames.append(pd.DataFrame({
                SLIDE_ID: slide_id, "tile": np.arange(len(coords), dtype=np.int64),
                "x": coords[:, 0], "y": coords[:, 1],
            }))
        index = pd.concat(frames, ignore_index=True)
        index.insert(1, "row", np.arange(len(index), dtype=np.int64))
        return self._with_cohort(index)

    def matrix(self) -> StoreRows:
        """All features as one row-indexable matrix (rows in ``index()`` order), read lazily.

        Nothing is copied: slices and index arrays read the rows from the per-slide files, so
        memory follows what is read, not the cohort. A ``_matrix.npy`` copy left by an older
        version is removed (it doubled the disk for nothing).
        """
        for stale in (MATRIX_NAME, MATRIX_MANIFEST):
            (self.folder / stale).unlink(missing_ok=True)
        return StoreRows(self)

    def offsets(self) -> np.ndarray:
        """First row of each slide in ``matrix()`` order, and the total (len = slides + 1)."""
        counts = [self._shapes[s][0] for s in self.slide_ids]
        return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def read_rows(self, slide_id: str, local_rows: np.ndarray) -> np.ndarray:
        """float32 features of the given rows of one slide (any order; one contiguous read)."""
        local_rows = np.asarray(local_rows, dtype=np.int64)
        if not len(local_rows):
            return np.zeros((0, self.dim), dtype=np.float32)
        lo, hi = int(local_rows.min()), int(local_rows.max()) + 1
        with h5py.File(self.path(slide_id), "r") as h5:
            block = np.asarray(h5["features"][lo:hi], dtype=np.float32)
        return block[local_rows - lo]

    def iter_chunks(self, slide_id: str, chunk_rows: int = 8192) -> Iterator[np.ndarray]:
        """float32 features of one slide, ``chunk_rows`` rows at a time, in stored order."""
        n_rows = self._shapes[slide_id][0]
        with h5py.File(self.path(slide_id), "r") as h5:
            for start in range(0, n_rows, chunk_rows):
                yield np.asarray(h5["features"][start : start + chunk_rows], dtype=np.float32)

    def slide_values(self, column: str) -> np.ndarray:
        """One cohort column, one value per stored slide (``slide_ids`` order)."""
        if self._cohort is None or column not in self._cohort.columns:
            raise StageError(f"the cohort of {self.folder} has no column {column!r}. Fix: add it "
                             "to the manifest and rerun `pathosae cohort`.")
        return self._cohort.loc[self.slide_ids, column].to_numpy()

    def tile_frame(self, rows: np.ndarray) -> pd.DataFrame:
        """``index()`` for the given global rows only (sorted), without building the whole index."""
        rows = np.asarray(rows, dtype=np.int64)
        offsets = self.offsets()
        slide_pos = np.searchsorted(offsets, rows, side="right") - 1
        frames = []
        for pos in np.unique(slide_pos):
            slide_id = self.slide_ids[int(pos)]
            local = rows[slide_pos == pos] - offsets[pos]
            with h5py.File(self.path(slide_id), "r") as h5:
                coords = np.asarray(h5["coords"][:], dtype=np.int64).reshape(-1, 2)[local]
            frames.append(pd.DataFrame({SLIDE_ID: slide_id, "tile": local,
                                        "x": coords[:, 0], "y": coords[:, 1]}))
        frame = (pd.concat(frames, ignore_index=True) if frames else
                 pd.DataFrame({SLIDE_ID: [], "tile": [], "x": [], "y": []}))
        frame.insert(1, "row", rows)
        return self._with_cohort(frame)

    def _with_cohort(self, frame: pd.DataFrame) -> pd.DataFrame:
        if self._cohort is None:
            return frame
        extra = self._cohort.drop(columns=[c for c in (*_COHORT_COLUMNS_LEFT_OUT, SLIDE_ID)
                                           if c in self._cohort.columns])
        return frame.join(extra, on=SLIDE_ID)

    def fingerprint(self) -> str:
        """Every slide's file size and mtime: changes when any feature file is rewritten."""
        stats = file_stats(self.path(s) for s in self.slide_ids)
        return settings_hash([[sid, size, mtime] for sid, (_, size, mtime)
                              in zip(self.slide_ids, stats, strict=True)])


class StoreRows:
    """Rows of a feature store as one lazily read float32 matrix (what ``matrix()`` returns).

    Supports ``shape``, ``dtype``, ``ndim``, ``len`` and indexing by a slice, an integer or an
    index array (any order); each request reads only the slides it touches, one contiguous block
    per slide.
    """

    def __init__(self, store: FeatureStore) -> None:
        self.store = store
        self._offsets = store.offsets()
        self.shape = (int(self._offsets[-1]), store.dim)
        self.dtype = np.dtype(np.float32)
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, item: slice | int | np.ndarray) -> np.ndarray:
        if isinstance(item, slice):
            return self._take(np.arange(*item.indices(self.shape[0]), dtype=np.int64))
        if np.isscalar(item):
            return self._take(np.array([int(item)]))[0]  # type: ignore[arg-type]
        return self._take(np.asarray(item, dtype=np.int64))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        del copy  # a fresh array is always returned
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def _take(self, rows: np.ndarray) -> np.ndarray:
        if len(rows) and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise IndexError(f"row index out of range for {self.shape[0]} feature rows")
        out = np.empty((len(rows), self.shape[1]), dtype=np.float32)
        slide_pos = np.searchsorted(self._offsets, rows, side="right") - 1
        for pos in np.unique(slide_pos):
            where = np.flatnonzero(slide_pos == pos)
            local = rows[where] - self._offsets[pos]
            out[where] = self.store.read_rows(self.store.slide_ids[int(pos)], local)
        return out


# ---- import of TRIDENT / CLAM feature folders ---------------------------------------------------

FeatureFormat = Literal["trident", "clam"]


def import_features(
    fmt: FeatureFormat,
    src_dir: str | os.PathLike[str],
    run: RunDir,
    encoder_name: str | None = None,
) -> dict[str, Any]:
    """Adopt h5 feature files computed by TRIDENT or CLAM into ``RUN/features/<encoder_name>/``.

    Files are matched to the cohort's slide ids by file stem, checked (2-d ``features``, ``coords``
    of shape N x 2 with the same N, finite values, one width for all) and copied into this
    project's layout with attributes recording where they came from. Imported files are kept by
    ``pathosae embed`` (never recomputed).
    """
    folder, default_name = locate_feature_folder(fmt, Path(src_dir))
    name = encoder_name or default_name
    files = {p.stem: p for p in sorted(folder.glob("*.h5"))}
    cohort_ids = [str(s) for s in load_cohort(run)[SLIDE_ID]]
    matched = [s for s in cohort_ids if s in files]
    if not matched:
        raise PathosaeError(
            f"none of the {len(files)} h5 files in {folder} is named after a cohort slide id "
            f"(e.g. {cohort_ids[0] if cohort_ids else '?'}.h5). Fix: files must be named "
            "<slide_id>.h5 with the manifest's slide ids."
        )
    dim = _common_width(folder, [files[s] for s in matched])
    for slide_id in tqdm(matched, desc=f"import {name}", unit="slide", leave=False,
                         mininterval=1.0):
        feats, coords = read_foreign_file(files[slide_id])  # one file in memory at a time
        write_feature_file(
            run.features_path(name, slide_id), feats, coords,
            {"encoder": name, "dim": feats.shape[1], "dtype": "float32", "pooling": "unknown",
             "imported_from": str(files[slide_id]), "import_format": fmt,
             SETTINGS_HASH: sha256_file(files[slide_id])[:16], SLIDE_ID: slide_id},
        )
    return {
        "features": name,
        "folder": str(folder),
        "imported": len(matched),
        "dim": dim,
        "not_in_cohort": sorted(set(files) - set(cohort_ids)),
        "cohort_without_file": [s for s in cohort_ids if s not in files],
    }


def _common_width(folder: Path, paths: list[Path]) -> int:
    """The one feature width of all files, read from their headers before any is copied."""
    widths: dict[int, Path] = {}
    for path in paths:
        try:
            with h5py.File(path, "r") as h5:
                shape = h5["features"].shape if "features" in h5 else ()
        except OSError as exc:
            raise PathosaeError(f"{path} is not a readable HDF5 file ({exc}). Fix: re-copy "
                                "it.") from None
        if shape:
            widths.setdefault(int(shape[-1]), path)
    if len(widths) > 1:
        examples = ", ".join(f"{w} ({p.name})" for w, p in sorted(widths.items()))
        raise PathosaeError(f"files in {folder} have different feature widths: {examples}. "
                            "Fix: import one encoder's folder at a time.")
    return next(iter(widths), 0)


def locate_feature_folder(fmt: FeatureFormat, src: Path) -> tuple[Path, str]:
    """The folder holding the h5 files, and a default feature-set name.

    TRIDENT: ``<job>/<mag>x_<px>px_<overlap>px_overlap/features_<encoder>/<slide>.h5``; the
    folder itself, or a parent with exactly one ``features_*`` folder below it, is accepted.
    CLAM: ``<feat_dir>/h5_files/<slide>.h5`` (``pt_files/`` beside it is not needed).
    """
    if not src.is_dir():
        raise PathosaeError(f"{src} is not a folder. Fix: pass the {fmt} feature folder.")
    if fmt == "clam":
        folder = src / "h5_files" if (src / "h5_files").is_dir() else src
        return _require_h5(folder, fmt), "clam"
    if fmt != "trident":
        raise PathosaeError(f"unknown format {fmt!r}. Fix: use --format trident or clam.")
    if src.name.startswith("features_") or any(src.glob("*.h5")):
        return _require_h5(src, fmt), src.name.removeprefix("features_")
    candidates = sorted(p for p in src.rglob("features_*") if p.is_dir())
    if len(candidates) != 1:
        found = ", ".join(str(c) for c in candidates) or "none"
        raise PathosaeError(
            f"{src} holds {len(candidates)} TRIDENT features_<encoder> folders ({found}). "
            "Fix: pass the one features_<encoder> folder to import."
        )
    return _require_h5(candidates[0], fmt), candidates[0].name.removeprefix("features_")


def _require_h5(folder: Path, fmt: str) -> Path:
    if not any(folder.glob("*.h5")):
        raise PathosaeError(f"no .h5 files in {folder}. Fix: pass the {fmt} folder holding the "
                            "per-slide feature files.")
    return folder


def read_foreign_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``features`` (N x D, any float dtype -> float32) and ``coords`` (N x 2), validated."""
    try:
        with h5py.File(path, "r") as h5:
            if "features" not in h5 or "coords" not in h5:
                raise PathosaeError(
                    f"{path} lacks a 'features' or 'coords' dataset (has {sorted(h5.keys())}). "
                    "Fix: import TRIDENT/CLAM feature files, not tile-coordinate files."
                )
            feats = np.asarray(h5["features"][:], dtype=np.float32)
            coords = np.asarray(h5["coords"][:])
    except OSError as exc:
        raise PathosaeError(f"{path} is not a readable HDF5 file ({exc}). Fix: re-copy it.") from None
    if feats.ndim == 3 and feats.shape[0] == 1:  # some writers keep a leading batch axis
        feats = feats[0]
    if feats.ndim != 2:
        raise PathosaeError(f"{path}: features have shape {feats.shape}, expected (tiles, dim).")
    coords = coords.reshape(-1, 2) if coords.size == 2 * len(feats) else coords
    if coords.shape != (len(feats), 2):
        raise PathosaeError(f"{path}: coords have shape {coords.shape} but there are "
                            f"{len(feats)} feature rows. Fix: re-export the file.")
    bad = ~np.isfinite(feats)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise PathosaeError(f"{path}: {int(bad.sum())} NaN/inf values (first in tile row {row}). "
                            "Fix: recompute this slide's features.")
    return feats, coords.astype(np.int64)
