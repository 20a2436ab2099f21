"""The edit stage: default edits from the confounder analysis, user specs, and the effect table.

Writes RUN/edits/<name>.json (every spec measured), RUN/edits/effects.parquet and
RUN/edits/summary.json; skipped when the settings and inputs are unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathosae.config import PathosaeConfig
from pathosae.edit.config import EditConfig
from pathosae.edit.editor import Editor
from pathosae.edit.effects import (
    Candidate,
    combat_candidate,
    editor_candidate,
    effect_table,
    missing_candidate,
)
from pathosae.edit.spec import Ablate, EditSpec, Leace, ProjectOut, RandomUnits
from pathosae.io import (
    read_json,
    settings_hash,
    sha256_file,
    write_json_atomic,
    write_parquet_atomic,
    write_text_atomic,
)
from pathosae.run import RunDir
from pathosae.saeception.cycle import Splits
from pathosae.types import OnError


def edit_config(cfg: PathosaeConfig) -> EditConfig:
    """The ``edit`` section, or the defaults while the run config has none."""
    section = getattr(cfg, "edit", None)
    return section if isinstance(section, EditConfig) else EditConfig()


def default_specs(
    variables: list[str], associations: pd.DataFrame | None, directions: dict[str, np.ndarray],
    ecfg: EditConfig,
) -> tuple[list[tuple[EditSpec, str]], dict[str, int]]:
    """Per confounder: ablate its flagged units, project out its mean-difference directions,
    LEACE (a baseline); returns (spec, kind) pairs and the flagged count per variable."""
    specs: list[tuple[EditSpec, str]] = []
    counts: dict[str, int] = {}
    for var in variables:
        units = flagged_ranked(associations, var, ecfg.flag_alpha)[: ecfg.max_flagged_units]
        counts[var] = len(units)
        if units:
            specs.append((EditSpec(name=f"ablate_flagged_{var}", ops=[Ablate(units=units)]), "edit"))
        if f"{var}.mean_difference" in directions:
            specs.append((EditSpec(name=f"project_out_{var}",
                                   ops=[ProjectOut(name=f"{var}.mean_difference")]), "edit"))
        specs.append((EditSpec(name=f"leace_{var}", ops=[Leace(concept=var)]), "baseline"))
    return specs, counts


def flagged_ranked(associations: pd.DataFrame | None, variable: str, alpha: float) -> list[int]:
    """Units with q ≤ alpha for ``variable`` at slide level, smallest q first."""
    if associations is None or "q" not in associations:
        return []
    table = associations[(associations["variable"] == variable) & (associations["q"] <= alpha)]
    if "level" in table:
        table = table[table["level"] == "slide"]
    best = table.groupby("unit")["q"].min().sort_values(kind="stable")
    return [int(u) for u in best.index]


def run_stage(
    run: RunDir, cfg: PathosaeConfig, on_error: OnError, extra_specs: list[Path] | None = None
) -> dict[str, Any]:
    """Measure every edit and baseline on the run; see the module docstring for the outputs."""
    from pathosae.confounders.stage import input_fingerprint, select_sae_dir
    from pathosae.downstream.runs import load_run_bags
    from pathosae.features import FeatureStore
    from pathosae.sae import load_sae

    del on_error  # slides were validated upstream; nothing here is per-slide
    ecfg = edit_config(cfg)
    spec_paths = [*ecfg.specs, *(extra_specs or [])]
    user_specs = [EditSpec.from_file(p) for p in spec_paths]
    sae_dir = select_sae_dir(run, ecfg.sae)
    conf_dir = run.root / "confounders"
    directions_path = conf_dir / "directions.safetensors"
    assoc_path = conf_dir / "associations.parquet"
    store = FeatureStore(run, cfg.embedding.encoder)
    key = settings_hash({
        "edit": ecfg.model_dump(mode="json"), "label": cfg.cohort.label,
        "specs": [s.model_dump(mode="json") for s in user_specs],
        "inputs": input_fingerprint(run, cfg.embedding.encoder, sae_dir, store.slide_ids),
        "confounders": [sha256_file(p) if p.exists() else None for p in (directions_path, assoc_path)],
    })
    out_dir = run.root / "edits"
    summary_path = out_dir / "summary.json"
    if summary_path.exists() and (out_dir / "effects.parquet").exists():
        previous = read_json(summary_path)
        if previous.get("settings_hash") == key:
            return {**previous, "skipped": True}

    variables = ecfg.confounders or list(cfg.cohort.confounders)
    bags = load_run_bags(
        run, cfg, ecfg.site_column, ecfg.downstream.max_tiles_per_slide, ecfg.seed, variables
    )
    variables = [v for v in variables if v == ecfg.site_column or v in bags.meta]
    splits = Splits(bags.split_of(ecfg.train_split), bags.split_of(ecfg.normal_split),
                    bags.split_of(ecfg.shifted_split))
    sae = load_sae(sae_dir)
    directions: dict[str, np.ndarray] = {}
    if directions_path.exists():
        from pathosae.confounders.directions import load_directions

        directions = load_directions(directions_path)
    associations = pd.read_parquet(assoc_path) if assoc_path.exists() else None
    specs, counts = default_specs(variables, associations, directions, ecfg)
    specs += [(s, "edit") for s in user_specs]
    candidates = build_candidates(specs, counts, sae, directions, ecfg, stain_features=None)
    table = effect_table(splits, candidates, ecfg.downstream, ecfg.seed,
                         modes=tuple(ecfg.modes), leakage_folds=ecfg.leakage_folds)
    table.insert(0, "settings_hash", key)
    for spec, _ in specs:
        write_text_atomic(out_dir / f"{spec.name}.json", spec.to_json())
    write_parquet_atomic(out_dir / "effects.parquet", table)
    summary = {"settings_hash": key, "n_rows": len(table), "edits": [s.name for s, _ in specs],
               "flagged_units": counts, "sae": sae_dir.name}
    write_json_atomic(summary_path, summary)
    return summary


def metadata_of(splits: Splits) -> dict[str, np.ndarray]:
    train = splits.train
    meta = {"site": train.tile_site(), "label": train.tile_y().numpy()}
    meta.update({k: v[train.slide.numpy()] for k, v in train.meta.items()})
    return meta


def build_candidates(
    specs: list[tuple[EditSpec, str]], counts: dict[str, int], sae: object,
    directions: dict[str, np.ndarray], ecfg: EditConfig, stain_features: object | None,
) -> list[Candidate]:
    """Candidates for the specs, random-unit draws matching each flagged-unit edit, ComBat and
    stain normalisation (missing unless stain-normalised features exist)."""
    out = [editor_candidate(s.name, kind, Editor(s, sae, directions), metadata_of) for s, kind in specs]
    for var, n in counts.items():
        for draw in range(ecfg.random_draws if n else 0):
            spec = EditSpec(name=f"random_units_{var}_{draw}", ops=[RandomUnits(count=n, seed=draw)])
            out.append(editor_candidate(spec.name, "random", Editor(spec, sae), metadata_of, draw))
    out.append(combat_candidate(ecfg.site_column))
    if stain_features is None:
        out.append(missing_candidate(
            "stain_normalisation",
            "stain normalisation acts on pixels: it needs features embedded from normalised tiles, "
            "which this run does not have",
        ))
    return out
