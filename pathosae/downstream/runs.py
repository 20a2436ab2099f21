"""Loading a run's tile features as train / normal-test / shifted-test bags."""

from __future__ import annotations

from pathosae.config import PathosaeConfig
from pathosae.downstream.bags import Bags
from pathosae.errors import StageError
from pathosae.run import RunDir


def load_run_bags(
    run: RunDir, cfg: PathosaeConfig, site_column: str, max_tiles_per_slide: int, seed: int,
    confounders: list[str] | None = None,
) -> Bags:
    """All slides of the run's features (FeatureStore) with label, site and confounder columns."""
    from pathosae.features import FeatureStore

    encoder = cfg.embedding.encoder
    run.require(run.features_dir(encoder), "embed")
    if cfg.cohort.label is None:
        raise StageError("the cohort has no label column (cohort.label is null). Fix: set it.")
    store = FeatureStore(run, encoder)
    index = store.index()
    wanted = confounders if confounders is not None else cfg.cohort.confounders
    extra = tuple(c for c in wanted if c in index.columns and c != site_column)
    return Bags.from_tiles(
        store.matrix(), index, cfg.cohort.label, site_column, max_tiles_per_slide, seed, extra
    )
