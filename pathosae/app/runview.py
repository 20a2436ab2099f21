"""Read-only access to one finished (or partly finished) run for the app.

Everything is read lazily and through :class:`~pathosae.app.access.PathGuard`: opening a run
reads run.json and the cohort table only; the unit cache is built once (on first use, or ahead
of time with ``RunView.prepare()``) and then memory-mapped.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathosae.app.access import PathGuard
from pathosae.app.activations import UnitActivations, build_unit_cache, cache_is_current
from pathosae.app.status import StageStatus, all_statuses, stage_status
from pathosae.app.tags import TagStore
from pathosae.errors import PathosaeError, StageError
from pathosae.fingerprint import file_stats
from pathosae.io import read_json, settings_hash
from pathosae.run import RunDir
from pathosae.schema import (
    DIRECTIONS,
    DIRECTIONS_JSON,
    EDITS_DIR,
    PATH,
    PATIENT_ID,
    SAE_CONFIG,
    SAE_WEIGHTS,
    SLIDE_AVAILABLE,
    SLIDE_ID,
    SUMMARY,
)

CACHE_DIR = "app_cache"


class RunView:
    """The app's window on a run directory (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise PathosaeError(f"run directory {root} does not exist. Fix: pass the folder given "
                                "to `pathosae run --out`.")
        self.run = RunDir(self.root)
        self._guard = PathGuard(self.root)
        self._activations: dict[str, UnitActivations] = {}

    # ---- stages ------------------------------------------------------------------------------
    def status(self, stage: str) -> StageStatus:
        return stage_status(self.root, stage)

    def statuses(self) -> list[StageStatus]:
        return all_statuses(self.root)

    def require(self, stage: str) -> None:
        status = self.status(stage)
        if not status.done:
            raise StageError(status.message())

    @cached_property
    def state(self) -> dict[str, Any]:
        return self.run.read_state()

    @cached_property
    def config(self) -> Any:
        """The run's resolved config (run.json), or the defaults when it records none."""
        from pathosae.config import PathosaeConfig

        recorded = self.state.get("config")
        return PathosaeConfig.model_validate(recorded) if recorded else PathosaeConfig()

    @property
    def label_column(self) -> str | None:
        return self.config.cohort.label

    # ---- cohort and paths --------------------------------------------------------------------
    @cached_property
    def cohort(self) -> pd.DataFrame:
        from pathosae.cohort.table import load_cohort

        self.require("cohort")
        cohort = load_cohort(self.run)
        cohort[SLIDE_ID] = cohort[SLIDE_ID].astype(str)
        return cohort

    @cached_property
    def guard(self) -> PathGuard:
        """Run files plus exactly the cohort's slide files (no cohort yet: run files only)."""
        if not self.status("cohort").done:
            return self._guard
        paths = self.cohort[PATH].fillna("").astype(str) if PATH in self.cohort else []
        return self._guard.with_slides(p for p in paths if p)  # '' : a features-only slide

    def metadata_columns(self) -> list[str]:
        skip = {SLIDE_ID, PATH, PATIENT_ID, "mpp", "manifest_row", SLIDE_AVAILABLE}
        return [c for c in self.cohort.columns if c not in skip]

    def slide_unavailable(self, slide_id: str) -> str | None:
        """Why this slide's file cannot be opened (a features-only slide), or None."""
        row = self.cohort.loc[self.cohort[SLIDE_ID] == self.check_slide(slide_id)].iloc[0]
        path = row.get(PATH)
        if isinstance(path, str) and path and Path(path).is_file():
            return None
        return (f"slide {slide_id!r} is not available (features only: no slide file"
                f"{f' at {path}' if isinstance(path, str) and path else ''}); add its path to "
                "the manifest to see its pixels")

    def pixels_unavailable(self, slide_id: str) -> str | None:
        """Why the app cannot show this slide's tiles, or None when it can.

        A features-only slide (imported features, no slide file) and a slide that was never tiled
        (its tile geometry is unknown) have none to show.
        """
        reason = self.slide_unavailable(slide_id)
        if reason is not None:
            return reason
        if not self.run.tiles_path(str(slide_id)).is_file():
            return (f"slide {slide_id!r} has no tile file (its features were imported, not "
                    "tiled here); run `pathosae tile` to see its tiles")
        return None

    def any_slide_available(self) -> bool:
        """True when at least one cohort slide file is there (QC images can exist)."""
        paths = self.cohort[PATH].fillna("").astype(str) if PATH in self.cohort else []
        return any(p and Path(p).is_file() for p in paths)

    def check_slide(self, slide_id: str) -> str:
        slide_id = str(slide_id)
        if slide_id not in set(self.cohort[SLIDE_ID]):
            raise PathosaeError(f"slide {slide_id!r} is not in this run's cohort.")
        return slide_id

    def slide_path(self, slide_id: str) -> Path:
        reason = self.slide_unavailable(slide_id)
        if reason is not None:
            raise StageError(f"{reason}.")
        row = self.cohort.loc[self.cohort[SLIDE_ID] == self.check_slide(slide_id), PATH]
        return self.guard.slide_file(str(row.iloc[0]))

    def qc_image(self, slide_id: str) -> Path | None:
        path = self.guard.run_file("qc", f"{self.check_slide(slide_id)}.png")
        return path if path.is_file() else None

    def file(self, *parts: str) -> Path | None:
        """A run file if it exists (checked to lie inside the run), else None."""
        path = self.guard.run_file(*parts)
        return path if path.exists() else None

    # ---- SAE and features --------------------------------------------------------------------
    def sae_names(self) -> list[str]:
        folder = self.root / "sae"
        if not folder.is_dir():
            return []
        return sorted(p.parent.name for p in folder.glob("*/cfg.json")
                      if (p.parent / SAE_WEIGHTS).is_file())

    def default_sae(self) -> str:
        names = self.sae_names()
        if not names:
            raise StageError(self.status("sae").message())
        summary = self.file("confounders", SUMMARY)
        used = read_json(summary).get("sae") if summary else None
        directions = self.file("confounders", DIRECTIONS_JSON)
        used = used or (read_json(directions).get("sae") if directions else None)
        return used if used in names else names[0]

    def sae_dir(self, name: str) -> Path:
        if name not in self.sae_names():
            raise PathosaeError(f"no SAE named {name!r} in {self.root / 'sae'} "
                                f"(have {self.sae_names()}).")
        return self.guard.run_file("sae", name)

    def sae_config(self, name: str) -> dict[str, Any]:
        return read_json(self.sae_dir(name) / SAE_CONFIG)

    def sae_metrics(self, name: str) -> dict[str, Any]:
        path = self.sae_dir(name) / "metrics.json"
        return read_json(path) if path.is_file() else {}

    def features_name(self, sae_name: str) -> str:
        recorded = self.sae_config(sae_name).get("features")
        return str(recorded) if recorded else self.config.embedding.features_name()

    def load_sae(self, name: str) -> Any:
        from pathosae.sae import load_sae

        return load_sae(self.sae_dir(name))

    def fingerprint(self, sae_name: str) -> str:
        """Sizes and modification times of what the unit cache is computed from."""
        folder = self.guard.run_file("features", self.features_name(sae_name))
        files = sorted(p for p in folder.glob("*.h5") if not p.name.startswith("."))
        inputs = [self.sae_dir(sae_name) / SAE_WEIGHTS, self.run.cohort_path, *files]
        return settings_hash([list(stat) for stat in file_stats(inputs)])

    def cache_dir(self, sae_name: str) -> Path:
        return self.guard.run_file(CACHE_DIR, sae_name)

    def cache_ready(self, sae_name: str) -> bool:
        return cache_is_current(self.cache_dir(sae_name), self.fingerprint(sae_name))

    def activations(self, sae_name: str) -> UnitActivations:
        """The unit-major activation cache, built (once, atomically) when missing or stale."""
        if sae_name in self._activations:
            return self._activations[sae_name]
        folder = self.cache_dir(sae_name)
        fingerprint = self.fingerprint(sae_name)
        if cache_is_current(folder, fingerprint) and (folder / "index.parquet").is_file():
            acts = UnitActivations.load(folder)
        else:
            acts = self._build_cache(sae_name, folder, fingerprint)
        self._activations[sae_name] = acts
        return acts

    def _build_cache(self, sae_name: str, folder: Path, fingerprint: str) -> UnitActivations:
        from pathosae.features import FeatureStore
        from pathosae.io import write_parquet_atomic

        self.require("embed")
        store = FeatureStore(self.run, self.features_name(sae_name))
        index = store.index()[[SLIDE_ID, "tile", "x", "y"]]
        index[SLIDE_ID] = index[SLIDE_ID].astype("category")
        write_parquet_atomic(folder / "index.parquet", index)
        return build_unit_cache(store.matrix(), self.load_sae(sae_name), folder, fingerprint)

    def prepare(self, sae_name: str | None = None) -> UnitActivations:
        """Build the unit cache now (``pathosae app`` does this before the server starts)."""
        return self.activations(sae_name or self.default_sae())

    def tile_index(self, sae_name: str) -> pd.DataFrame:
        """slide_id, tile, x, y of every row of the feature matrix (cached with the units)."""
        self.activations(sae_name)
        return pd.read_parquet(self.cache_dir(sae_name) / "index.parquet")

    def slide_rows(self, sae_name: str) -> pd.DataFrame:
        """Per slide: first row and row count in the feature matrix."""
        index = self.tile_index(sae_name)
        codes = index[SLIDE_ID].astype(str).to_numpy()
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        stops = np.r_[starts[1:], len(codes)]
        return pd.DataFrame({SLIDE_ID: codes[starts], "start": starts, "stop": stops})

    # ---- later stages ------------------------------------------------------------------------
    def table(self, *parts: str) -> pd.DataFrame | None:
        path = self.file(*parts)
        return pd.read_parquet(path) if path is not None else None

    def json(self, *parts: str) -> dict[str, Any] | None:
        path = self.file(*parts)
        return read_json(path) if path is not None else None

    def directions(self) -> dict[str, np.ndarray]:
        from pathosae.confounders.directions import load_directions

        path = self.file("confounders", DIRECTIONS)
        return load_directions(path) if path is not None else {}

    def edit_specs(self) -> list[str]:
        folder = self.root / EDITS_DIR
        return sorted(p.stem for p in folder.glob("*.json") if p.name != SUMMARY) \
            if folder.is_dir() else []

    @cached_property
    def tags(self) -> TagStore:
        return TagStore(self.guard.run_file("app", "tags.json"))
