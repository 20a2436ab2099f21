"""The edit stage: default edits from the confounder analysis, user specs, and the effect table.

Writes RUN/edits/<name>.json (every spec measured), RUN/edits/effects.parquet and
RUN/edits/summary.json; skipped when the settings and inputs are unchanged. The default edits'
units and directions come from a scan of the training slides (``edit.fit_on: train``), so no
test label shapes an edit; ``cohort`` reuses the confounders stage's all-slide analysis.
Adapter-layer specs act inside SAE-ception models and are measured by the sharpen stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathosae.config import PathosaeConfig
from pathosae.confounders.directions import load_directions
from pathosae.downstream.all_tiles import capped_vs_all_tiles
from pathosae.downstream.splits import Splits, cohort_splits
from pathosae.downstream.train import train_downstream
from pathosae.edit.defaults import (
    build_candidates,
    confounder_aware_saes,
    default_specs,
    offsets_flagged_units,
    stain_normalised_splits,
    ticking,
    training_scan,
)
from pathosae.edit.effects import effect_table
from pathosae.edit.spec import EditSpec
from pathosae.edit.user_specs import command_line_embedding_specs, embedding_specs, read_specs
from pathosae.features import FeatureStore
from pathosae.fingerprint import current_summary, file_hash, folder_fingerprint, input_fingerprint
from pathosae.inputs import analysed_features, load_run_bags, select_sae_dir
from pathosae.io import settings_hash, write_json_atomic, write_parquet_atomic, write_text_atomic
from pathosae.progress import step, ticker
from pathosae.run import RunDir
from pathosae.sae import load_sae
from pathosae.schema import (
    ASSOCIATIONS,
    CONFOUNDERS_DIR,
    DIRECTIONS,
    EDITS_DIR,
    EFFECTS,
    HELD_OUT_SITE,
    NORMAL_TEST,
    SETTINGS_HASH,
    SUMMARY,
)
from pathosae.types import OnError


def run_stage(
    run: RunDir, cfg: PathosaeConfig, on_error: OnError, extra_specs: list[Path] | None = None,
) -> dict[str, Any]:
    """Measure every edit and baseline on the run; see the module docstring for the outputs."""
    del on_error  # slides were validated upstream; nothing here is per-slide
    ecfg = cfg.edit
    user_specs = [*embedding_specs(read_specs(list(ecfg.specs))),
                  *command_line_embedding_specs(list(extra_specs or []))]
    sae_dir = select_sae_dir(run, ecfg.sae)
    conf_dir = run.root / CONFOUNDERS_DIR
    features = analysed_features(cfg)
    store = FeatureStore(run, features)
    key = settings_hash({
        "edit": ecfg.model_dump(mode="json"), "label": cfg.cohort.label,
        "specs": [s.model_dump(mode="json") for s in user_specs],
        "inputs": input_fingerprint(run, features, sae_dir, store.slide_ids),
        "confounders": [file_hash(conf_dir / DIRECTIONS), file_hash(conf_dir / ASSOCIATIONS)],
        "stain_normalised": folder_fingerprint(run.features_dir(cfg.embedding.stainnorm_name())),
        "uncertainty": cfg.uncertainty.model_dump(mode="json"),
    })
    out_dir = run.root / EDITS_DIR
    previous = current_summary(out_dir / SUMMARY, key, [out_dir / EFFECTS])
    if previous is not None:
        return {**previous, "skipped": True}
    summary = embedding_effects(run, cfg, user_specs, sae_dir, key)
    write_json_atomic(out_dir / SUMMARY, summary)
    return summary


def _cohort_splits(run: RunDir, cfg: PathosaeConfig) -> tuple[Splits, str | None, list[str]]:
    """The downstream splits, the held-out site and the confounders the bags carry.

    The whole cohort's bags are dropped on return: the splits hold their own copies of the rows,
    and keeping both doubled the stage's memory."""
    ecfg = cfg.edit
    variables = ecfg.confounders or list(cfg.cohort.confounders)
    bags = load_run_bags(
        run, cfg, ecfg.site_column, ecfg.downstream.max_tiles_per_slide, ecfg.seed, variables,
        max_tiles=ecfg.downstream.max_tiles,
    )
    variables = [v for v in variables if v == ecfg.site_column or v in bags.meta]
    splits, held_out_site = cohort_splits(bags, ecfg)
    return splits, held_out_site, variables


def embedding_effects(
    run: RunDir, cfg: PathosaeConfig, user_specs: list[EditSpec], sae_dir: Path, key: str
) -> dict[str, Any]:
    """The embedding-layer effect table (defaults, user specs, baselines); its summary."""
    ecfg = cfg.edit
    conf_dir, out_dir = run.root / CONFOUNDERS_DIR, run.root / EDITS_DIR
    splits, held_out_site, variables = _cohort_splits(run, cfg)
    # The stain-normalised baseline must hold out the same site, even one picked automatically.
    ecfg = ecfg.model_copy(update={HELD_OUT_SITE: held_out_site})
    sae = load_sae(sae_dir)
    directions: dict[str, np.ndarray] = {}
    associations: pd.DataFrame | None
    if ecfg.fit_on == "train":
        step("edit", "scanning the training slides for the default edits' units and directions")
        associations, directions = training_scan(splits.train, sae, variables, ecfg.site_column)
    else:
        if (conf_dir / DIRECTIONS).exists():
            directions = load_directions(conf_dir / DIRECTIONS)
        associations = pd.read_parquet(conf_dir / ASSOCIATIONS) \
            if (conf_dir / ASSOCIATIONS).exists() else None
    specs, counts = default_specs(variables, associations, directions, ecfg)
    specs += [(s, "edit") for s in user_specs]
    stain = stain_normalised_splits(run, cfg, ecfg)
    aware = confounder_aware_saes(run)
    aware_units = offsets_flagged_units(splits.train, aware, variables, ecfg)
    candidates = build_candidates(specs, counts, sae, directions, ecfg, stain_features=stain,
                                  aware=aware, aware_units=aware_units)
    measured = sum(c.edit is not None for c in candidates)
    step("edit", f"effect table: the unedited downstream model, then {measured} edits and baselines")
    base_model = train_downstream(splits.train, ecfg.downstream, ecfg.seed)
    with ticker("edit: candidates", measured, unit="edit") as tick:
        table = effect_table(splits, ticking(candidates, tick), ecfg.downstream, ecfg.seed,
                             base_model=base_model, modes=tuple(ecfg.modes),
                             leakage_folds=ecfg.leakage_folds, uncertainty=cfg.uncertainty,
                             retrain_max_draws=ecfg.retrain_max_draws)
    step("edit", "the unedited model on every tile of the test slides (streamed)")
    all_tiles = capped_vs_all_tiles(base_model, FeatureStore(run, analysed_features(cfg)),
                                    {"normal": splits.normal, "shifted": splits.shifted})
    table.insert(0, SETTINGS_HASH, key)
    table.insert(1, HELD_OUT_SITE, held_out_site)
    table.insert(2, NORMAL_TEST, splits.normal_source)
    for spec, _ in specs:
        write_text_atomic(out_dir / f"{spec.name}.json", spec.to_json())
    write_parquet_atomic(out_dir / EFFECTS, table)
    return {SETTINGS_HASH: key, "n_rows": len(table), "edits": [s.name for s, _ in specs],
            "flagged_units": counts, "sae": sae_dir.name, HELD_OUT_SITE: held_out_site,
            NORMAL_TEST: splits.normal_source, "all_tiles": all_tiles}
