"""A run's inputs as the analysis stages read them: the cohort table, the SAE, the tile bags.

Every stage after the cohort stage loads these the same way, through here, so that a missing
input gets the same error (naming the stage that writes it) wherever it is found missing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pathosae.cohort.table import load_cohort
from pathosae.config import PathosaeConfig, analysed_features
from pathosae.downstream.bags import Bags, capped_rows, per_slide_cap
from pathosae.errors import StageError
from pathosae.features import FeatureStore
from pathosae.run import RunDir
from pathosae.schema import SAE_WEIGHTS

__all__ = ["analysed_features", "load_cohort", "load_run_bags", "select_sae_dir"]


def select_sae_dir(run: RunDir, name: str | None) -> Path:
    """The SAE folder named in the config, or the only one in RUN/sae/."""
    root = run.root / "sae"
    if name is not None:
        return run.require(run.sae_dir(name) / SAE_WEIGHTS, "sae").parent
    found = sorted(p.parent for p in root.glob(f"*/{SAE_WEIGHTS}")) if root.is_dir() else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise StageError(
            f"no trained SAE under {root}. Fix: run `pathosae sae --run {run.root}` first."
        )
    raise StageError(
        f"several SAEs under {root} ({', '.join(p.name for p in found)}). "
        "Fix: name one with confounders.sae in the config."
    )


def load_run_bags(
    run: RunDir, cfg: PathosaeConfig, site_column: str, max_tiles_per_slide: int, seed: int,
    confounders: list[str] | None = None, features: str | None = None,
    max_tiles: int | None = None,
) -> Bags:
    """All slides of a feature set of the run (default: the encoder's) as bags with label, site
    and confounder columns; at most ``max_tiles_per_slide`` seeded tiles per slide and
    ``max_tiles`` in all (the per-slide cap shrinks to fit). Only the kept tiles are read."""
    name = features or analysed_features(cfg)
    run.require(run.features_dir(name), "embed")
    if cfg.cohort.label is None:
        raise StageError("the cohort has no label column (cohort.label is null). Fix: set it.")
    store = FeatureStore(run, name)
    counts = np.diff(store.offsets())
    cap = per_slide_cap(len(counts), max_tiles_per_slide, max_tiles)
    rows = capped_rows(counts, cap, seed)
    index = store.tile_frame(rows)
    wanted = confounders if confounders is not None else cfg.cohort.confounders
    extra = tuple(c for c in wanted if c in index.columns and c != site_column)
    return Bags.from_tiles(store.matrix()[rows], index, cfg.cohort.label, site_column, None,
                           seed, extra)
