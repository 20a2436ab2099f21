"""The edit stage: default edits from the confounder analysis, user specs, and the effect table.

Writes RUN/edits/<name>.json (every spec measured), RUN/edits/effects.parquet,
RUN/edits/adapter_effects.parquet (user specs with ``layer: adapter``, each on the SAE-ception
model it names, through that cycle's SAE, on the SAE-ception stage's splits) and
RUN/edits/summary.json; skipped when the settings and inputs are unchanged. The default edits'
units and directions come from a scan of the training slides (``edit.fit_on: train``), so no
test label shapes an edit; ``cohort`` reuses the confounders stage's all-slide analysis.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathosae.config import PathosaeConfig
from pathosae.downstream.bags import Bags
from pathosae.downstream.splits import Splits, cohort_splits
from pathosae.edit.config import EditConfig
from pathosae.edit.editor import Editor
from pathosae.edit.effects import (
    Candidate,
    combat_candidate,
    editor_candidate,
    effect_table,
    missing_candidate,
    replacement_candidate,
)
from pathosae.edit.spec import Ablate, EditSpec, Leace, ProjectOut, RandomUnits
from pathosae.errors import ConfigError
from pathosae.io import (
    read_json,
    settings_hash,
    sha256_file,
    write_json_atomic,
    write_parquet_atomic,
    write_text_atomic,
)
from pathosae.run import RunDir
from pathosae.types import OnError


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


def read_user_specs(
    config_specs: list[Path], extra_specs: list[Path], model: str | None
) -> tuple[list[EditSpec], list[EditSpec]]:
    """Embedding-layer and adapter-layer user specs. ``model`` (``pathosae edit --model``) puts
    the command line's specs on the adapter layer of that SAE-ception model."""
    specs = [EditSpec.from_file(p) for p in config_specs]
    for path in extra_specs:
        spec = EditSpec.from_file(path)
        if model is not None:
            if "layer" in spec.model_fields_set and spec.layer == "embedding":
                raise ConfigError(
                    f"edit spec {path} says layer: embedding but --model {model} names an "
                    "SAE-ception model. Fix: drop --model, or set layer: adapter in the spec."
                )
            spec = EditSpec.model_validate({**spec.model_dump(), "layer": "adapter", "model": model})
        specs.append(spec)
    adapter = [s for s in specs if s.layer == "adapter"]
    unnamed = [s.name for s in adapter if s.model is None]
    if unnamed:
        raise ConfigError(
            f"adapter-layer edit spec(s) {unnamed} name no SAE-ception model. Fix: add "
            "model: cycle_<k>/<variant>_seed<s> to the spec or pass `pathosae edit --model`."
        )
    return [s for s in specs if s.layer == "embedding"], adapter


def _model_fingerprint(run: RunDir, specs: list[EditSpec]) -> list[tuple[str, str | None]]:
    """The adapter specs' SAE-ception models, hashed (the stage reruns when one is retrained)."""
    out = []
    for ref in sorted({str(s.model) for s in specs}):
        weights = run.root / "saeception" / ref / "model.safetensors"
        out.append((ref, sha256_file(weights) if weights.is_file() else None))
    return out


def run_stage(
    run: RunDir, cfg: PathosaeConfig, on_error: OnError, extra_specs: list[Path] | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """Measure every edit and baseline on the run; see the module docstring for the outputs.

    The embedding table and the adapter-layer table have keys of their own: adding an
    adapter-layer spec does not recompute the embedding table, nor the reverse.
    """
    from pathosae.confounders.stage import input_fingerprint, select_sae_dir
    from pathosae.features import FeatureStore

    del on_error  # slides were validated upstream; nothing here is per-slide
    ecfg = cfg.edit
    user_specs, adapter_specs = read_user_specs(list(ecfg.specs), list(extra_specs or []), model)
    sae_dir = select_sae_dir(run, ecfg.sae)
    conf_dir = run.root / "confounders"
    store = FeatureStore(run, cfg.embedding.encoder)
    inputs = input_fingerprint(run, cfg.embedding.encoder, sae_dir, store.slide_ids)
    key = settings_hash({
        "edit": ecfg.model_dump(mode="json"), "label": cfg.cohort.label,
        "specs": [s.model_dump(mode="json") for s in user_specs], "inputs": inputs,
        "confounders": [sha256_file(p) if p.exists() else None
                        for p in (conf_dir / "directions.safetensors", conf_dir / "associations.parquet")],
        "stain_normalised": _folder_fingerprint(run.features_dir(cfg.embedding.stainnorm_name())),
    })
    adapter_key = settings_hash({
        "saeception": cfg.saeception.model_dump(mode="json"), "label": cfg.cohort.label,
        "specs": [s.model_dump(mode="json") for s in adapter_specs], "inputs": inputs,
        "models": _model_fingerprint(run, adapter_specs),
    }) if adapter_specs else None
    out_dir = run.root / "edits"
    summary_path = out_dir / "summary.json"
    previous = read_json(summary_path) if summary_path.exists() else {}
    embed_done = previous.get("settings_hash") == key and (out_dir / "effects.parquet").exists()
    adapter_done = adapter_key is None or (
        previous.get("adapter_settings_hash") == adapter_key and (out_dir / ADAPTER_EFFECTS).exists()
    )
    if embed_done and adapter_done:
        return {**previous, "skipped": True}
    summary = {k: v for k, v in previous.items() if not k.startswith("adapter_")} if embed_done \
        else embedding_effects(run, cfg, user_specs, sae_dir, key)
    if adapter_key is not None:
        summary.update(adapter_spec_effects(run, cfg, adapter_specs, adapter_key))
    write_json_atomic(summary_path, summary)
    return summary


ADAPTER_EFFECTS = "adapter_effects.parquet"


def embedding_effects(
    run: RunDir, cfg: PathosaeConfig, user_specs: list[EditSpec], sae_dir: Path, key: str
) -> dict[str, Any]:
    """The embedding-layer effect table (defaults, user specs, baselines); its summary."""
    from pathosae.downstream.runs import load_run_bags
    from pathosae.sae import load_sae

    ecfg = cfg.edit
    conf_dir, out_dir = run.root / "confounders", run.root / "edits"
    directions_path, assoc_path = conf_dir / "directions.safetensors", conf_dir / "associations.parquet"
    variables = ecfg.confounders or list(cfg.cohort.confounders)
    bags = load_run_bags(
        run, cfg, ecfg.site_column, ecfg.downstream.max_tiles_per_slide, ecfg.seed, variables
    )
    variables = [v for v in variables if v == ecfg.site_column or v in bags.meta]
    splits, held_out_site = cohort_splits(bags, ecfg)
    # The stain-normalised baseline must hold out the same site, even one picked automatically.
    ecfg = ecfg.model_copy(update={"held_out_site": held_out_site})
    sae = load_sae(sae_dir)
    directions: dict[str, np.ndarray] = {}
    if ecfg.fit_on == "train":
        associations, directions = training_scan(splits.train, sae, variables, ecfg.site_column)
    else:
        if directions_path.exists():
            from pathosae.confounders.directions import load_directions

            directions = load_directions(directions_path)
        associations = pd.read_parquet(assoc_path) if assoc_path.exists() else None
    specs, counts = default_specs(variables, associations, directions, ecfg)
    specs += [(s, "edit") for s in user_specs]
    stain = stain_normalised_splits(run, cfg, ecfg, splits)
    candidates = build_candidates(specs, counts, sae, directions, ecfg, stain_features=stain)
    table = effect_table(splits, candidates, ecfg.downstream, ecfg.seed,
                         modes=tuple(ecfg.modes), leakage_folds=ecfg.leakage_folds)
    table.insert(0, "settings_hash", key)
    table.insert(1, "held_out_site", held_out_site)
    for spec, _ in specs:
        write_text_atomic(out_dir / f"{spec.name}.json", spec.to_json())
    write_parquet_atomic(out_dir / "effects.parquet", table)
    return {"settings_hash": key, "n_rows": len(table), "edits": [s.name for s, _ in specs],
            "flagged_units": counts, "sae": sae_dir.name, "held_out_site": held_out_site}


def adapter_spec_effects(
    run: RunDir, cfg: PathosaeConfig, specs: list[EditSpec], key: str
) -> dict[str, Any]:
    """User adapter-layer specs on their SAE-ception models → RUN/edits/adapter_effects.parquet."""
    from pathosae.saeception.adapter_edits import MODE_NOTE, measure_adapter_specs

    out_dir = run.root / "edits"
    table = measure_adapter_specs(run, cfg, specs)
    table.insert(0, "settings_hash", key)
    for spec in specs:
        write_text_atomic(out_dir / f"{spec.name}.json", spec.to_json())
    write_parquet_atomic(out_dir / ADAPTER_EFFECTS, table)
    return {"adapter_settings_hash": key, "adapter_edits": [s.name for s in specs],
            "adapter_rows": len(table), "adapter_edit_modes": MODE_NOTE,
            "adapter_held_out_site": table["held_out_site"].iloc[0]}


def training_scan(
    train: Bags, sae: object, variables: list[str], site_column: str
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Association scan of the SAE units and mean-difference directions on training slides only.

    Units: slide-aggregated codes (mean, fraction active) against each confounder with the label
    as a covariate, BH q over the whole table. Directions: per level, the class-conditional mean
    difference of the training embeddings (``<variable>.mean_difference``, levels × dims).
    """
    from pathosae.confounders.aggregate import aggregate_by_group
    from pathosae.confounders.directions import mean_difference_directions
    from pathosae.confounders.scan import add_qvalues, association_scan
    from pathosae.sae.metrics import encode_rows

    codes = encode_rows(sae, train.x).numpy()
    order, summaries = aggregate_by_group(codes, train.slide.numpy().astype(str), ("mean", "frac_active"))
    slides = pd.DataFrame({"label": np.array(train.classes)[train.y.numpy()], site_column: train.site,
                           **train.meta}).iloc[np.asarray(order, dtype=int)].reset_index(drop=True)
    tile_labels = train.tile_y().numpy()
    tables, directions = [], {}
    for var in variables:
        if slides[var].nunique() < 2:
            continue
        for name, matrix in summaries.items():
            tables.append(association_scan(matrix, slides, [var], covariates=["label"])
                          .assign(aggregation=name, level="slide"))
        levels = train.tile_site() if var == site_column else train.meta[var][train.slide.numpy()]
        directions[f"{var}.mean_difference"] = mean_difference_directions(
            train.x.double().numpy(), levels, condition=tile_labels
        )[0].astype(np.float32)
    table = add_qvalues(pd.concat(tables, ignore_index=True)) if tables else None
    return table, directions


def _folder_fingerprint(folder: Path) -> list[tuple[str, int, int]] | None:
    """Names, sizes and mtimes of a feature folder's files (None when absent): the stage reruns
    once stain-normalised features appear or change."""
    if not folder.is_dir():
        return None
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.glob("*.h5"))]


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
    for i, (var, n) in enumerate(counts.items()):
        for draw in range(ecfg.random_draws if n else 0):
            # Each confounder gets its own draws (equal sizes would otherwise repeat them).
            seed = ecfg.seed + 1000 * i + draw
            spec = EditSpec(name=f"random_units_{var}_{draw}", ops=[RandomUnits(count=n, seed=seed)])
            out.append(editor_candidate(spec.name, "random", Editor(spec, sae), metadata_of, draw))
    out.append(combat_candidate(ecfg.site_column))
    if isinstance(stain_features, Splits):
        out.append(replacement_candidate("stain_normalisation", stain_features))
    else:
        out.append(missing_candidate(
            "stain_normalisation",
            str(stain_features or "stain normalisation acts on pixels: it needs features embedded "
                "from normalised tiles (embedding.baselines: [stain_normalised])"),
        ))
    return out


def stain_normalised_splits(
    run: RunDir, cfg: PathosaeConfig, ecfg: EditConfig, splits: Splits
) -> Splits | str:
    """The same slides and sampled tiles from the stain-normalised features, or why not."""
    from pathosae.downstream.bags import Bags
    from pathosae.features import FeatureStore

    name = cfg.embedding.stainnorm_name()
    folder = run.features_dir(name)
    if not folder.is_dir():
        return (f"no stain-normalised features (RUN/features/{name}); set embedding.baselines: "
                "[stain_normalised] and re-run the embed stage")
    main, stain = FeatureStore(run, cfg.embedding.encoder), FeatureStore(run, name)
    if stain.counts() != main.counts():
        return (f"RUN/features/{name} does not hold the same slides and tiles as the main "
                "features (embedding unfinished?); re-run the embed stage")
    variables = ecfg.confounders or list(cfg.cohort.confounders)
    index = stain.index()
    extra = tuple(c for c in variables if c in index.columns and c != ecfg.site_column)
    bags = Bags.from_tiles(stain.matrix(), index, str(cfg.cohort.label), ecfg.site_column,
                           ecfg.downstream.max_tiles_per_slide, ecfg.seed, extra)
    return cohort_splits(bags, ecfg)[0]
