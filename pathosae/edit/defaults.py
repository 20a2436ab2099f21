"""The edit stage's default edits and the candidates it measures.

Per confounder: ablate its flagged units, project out its mean-difference directions, LEACE (a
baseline); random-unit draws of the same sizes; ComBat; stain normalisation when the run has
stain-normalised features. With ``edit.fit_on: train`` the units and directions come from a scan
of the training slides only (:func:`training_scan`), so no test label shapes an edit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from pathosae.config import PathosaeConfig
from pathosae.confounders.directions import mean_difference_directions
from pathosae.confounders.scan import add_qvalues, association_scan
from pathosae.downstream.bags import Bags
from pathosae.downstream.splits import Splits, cohort_splits, train_tile_metadata
from pathosae.edit.config import EditConfig
from pathosae.edit.editor import Editor
from pathosae.edit.effects import (
    Candidate,
    SplitsEdit,
    combat_candidate,
    confounder_aware_candidate,
    editor_candidate,
    missing_candidate,
    replacement_candidate,
    tile_level_codes,
)
from pathosae.edit.ops import EDIT_CHUNK_ROWS
from pathosae.edit.spec import Ablate, EditSpec, Leace, ProjectOut, RandomUnits
from pathosae.features import FeatureStore
from pathosae.inputs import analysed_features, load_run_bags
from pathosae.io import read_json
from pathosae.run import RunDir
from pathosae.sae.base import SAE
from pathosae.sae.conditional import ConditionedTopKSAE as ConditionedSAE
from pathosae.sae.conditional import TopKOffsetsSAE
from pathosae.sae.io import load_sae
from pathosae.sae.metrics import encode_rows
from pathosae.sae.registry import get_architecture
from pathosae.schema import SAE_CONFIG, SAE_WEIGHTS


class SlideSummaries(NamedTuple):
    """Slide-level code summaries: the positions of the slides with tiles, and per aggregation a
    slides × units matrix in that order."""

    slides: np.ndarray
    matrices: dict[str, np.ndarray]


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


def training_scan(
    train: Bags, sae: SAE, variables: list[str], site_column: str
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Association scan of the SAE units and mean-difference directions on training slides only.

    Units: slide-aggregated codes (mean, fraction active) against each confounder with the label
    as a covariate, BH q over the whole table. Directions: per level, the class-conditional mean
    difference of the training embeddings (``<variable>.mean_difference``, levels × dims).
    """
    table = scan_codes(slide_code_summaries(train, sae), train, variables, site_column)
    tile_labels = train.tile_y().numpy()
    directions = {}
    for var in variables:
        levels = train.tile_site() if var == site_column else train.meta[var][train.slide.numpy()]
        if len(np.unique(levels)) < 2:
            continue
        directions[f"{var}.mean_difference"] = mean_difference_directions(
            train.x.numpy(), levels, condition=tile_labels
        )[0].astype(np.float32)
    return table, directions


def slide_code_summaries(bags: Bags, sae: SAE, conditions: Tensor | None = None,
                         chunk: int = EDIT_CHUNK_ROWS) -> SlideSummaries:
    """Per slide with tiles: the mean and the fraction active of its tiles' SAE codes.

    The codes are encoded ``chunk`` rows at a time and summed per slide (float64), so memory is
    one chunk's codes, not every training tile's (92k tiles × 3,072 units was 1.1 GB dense).
    ``conditions``: each row's level codes, for a confounder-aware SAE."""
    sums = torch.zeros(bags.n_slides, sae.d_sae, dtype=torch.float64)
    active = torch.zeros_like(sums)
    for start in range(0, bags.x.shape[0], chunk):
        rows = slice(start, start + chunk)
        codes = encode_rows(sae, bags.x[rows],
                            conditions=None if conditions is None else conditions[rows]).double()
        slide = bags.slide[rows]
        sums.index_add_(0, slide, codes)
        active.index_add_(0, slide, (codes > 0).double())
    counts = torch.bincount(bags.slide, minlength=bags.n_slides).double()[:, None]
    present = (counts[:, 0] > 0).nonzero().squeeze(1)
    return SlideSummaries(present.numpy(), {
        "mean": (sums[present] / counts[present]).numpy(),
        "frac_active": (active[present] / counts[present]).numpy(),
    })


def scan_codes(summaries: SlideSummaries, train: Bags, variables: list[str],
               site_column: str) -> pd.DataFrame | None:
    """Slide-aggregated codes (mean, fraction active) of the training slides against each
    confounder with the label as a covariate; BH q over the whole table (None: nothing tested)."""
    slides = pd.DataFrame({"label": np.array(train.classes)[train.y.numpy()], site_column: train.site,
                           **train.meta}).iloc[summaries.slides].reset_index(drop=True)
    tables = [association_scan(matrix, slides, [var], covariates=["label"])
              .assign(aggregation=name, level="slide")
              for var in variables if slides[var].nunique() >= 2
              for name, matrix in summaries.matrices.items()]
    return add_qvalues(pd.concat(tables, ignore_index=True)) if tables else None


def offsets_flagged_units(
    train: Bags, aware: dict[str, ConditionedSAE], variables: list[str], ecfg: EditConfig,
) -> dict[tuple[str, str], list[int]]:
    """Per offsets SAE (``topk_offsets``) and confounder: its units flagged on the training slides
    (each tile encoded under its slide's levels, so the offsets have taken the dense shifts),
    smallest q first, at most ``edit.max_flagged_units``."""
    out: dict[tuple[str, str], list[int]] = {}
    for name, model in aware.items():
        if type(model) is not TopKOffsetsSAE:
            continue
        codes = tile_level_codes(train, model, ecfg.site_column)
        table = scan_codes(slide_code_summaries(train, model, codes), train, variables,
                           ecfg.site_column)
        for var in variables:
            units = flagged_ranked(table, var, ecfg.flag_alpha)[: ecfg.max_flagged_units]
            if units:
                out[(name, var)] = units
    return out


def build_candidates(
    specs: list[tuple[EditSpec, str]], counts: dict[str, int], sae: SAE,
    directions: dict[str, np.ndarray], ecfg: EditConfig, stain_features: object | None,
    aware: dict[str, ConditionedSAE] | None = None,
    aware_units: dict[tuple[str, str], list[int]] | None = None,
) -> list[Candidate]:
    """Candidates for the specs, random-unit draws matching each flagged-unit edit, the edits of
    the run's confounder-aware SAEs (``aware``, by folder name), the offsets SAEs' edits with their
    flagged units of each confounder also ablated (``aware_units``, by (folder, confounder)),
    ComBat and stain normalisation (missing unless stain-normalised features exist)."""
    out = [editor_candidate(s.name, kind, Editor(s, sae, directions), train_tile_metadata)
           for s, kind in specs]
    for i, (var, n) in enumerate(counts.items()):
        for draw in range(ecfg.random_draws if n else 0):
            # Each confounder gets its own draws (equal sizes would otherwise repeat them).
            seed = ecfg.seed + 1000 * i + draw
            spec = EditSpec(name=f"random_units_{var}_{draw}", ops=[RandomUnits(count=n, seed=seed)])
            out.append(editor_candidate(spec.name, "random", Editor(spec, sae), train_tile_metadata, draw))
    out += [confounder_aware_candidate(f"{name}_edit", model, ecfg.site_column)
             for name, model in (aware or {}).items()]
    models = aware or {}
    out += [confounder_aware_candidate(f"{name}_edit_ablate_{var}", models[name],
                                       ecfg.site_column, units)
            for (name, var), units in (aware_units or {}).items()]
    out.append(combat_candidate(ecfg.site_column, ecfg.combat_max_rows))
    if isinstance(stain_features, Splits):
        out.append(replacement_candidate("stain_normalisation", stain_features))
    else:
        out.append(missing_candidate(
            "stain_normalisation",
            str(stain_features or "stain normalisation acts on pixels: it needs features embedded "
                "from normalised tiles (embedding.baselines: [stain_normalised])"),
        ))
    return out


def ticking(candidates: list[Candidate], tick: Callable[[str], None]) -> list[Candidate]:
    """The same candidates, each calling ``tick(name)`` when its edit starts (a progress bar
    over the effect table, which measures the candidates in order); nothing else changes."""
    return [dataclasses.replace(c, edit=_ticked(c.edit, c.name, tick)) if c.edit is not None else c
            for c in candidates]


def _ticked(edit: SplitsEdit, name: str, tick: Callable[[str], None]) -> SplitsEdit:
    def run(splits: Splits) -> Splits:
        tick(name)
        return edit(splits)

    return run


def confounder_aware_saes(run: RunDir) -> dict[str, ConditionedSAE]:
    """The run's confounder-aware SAEs (RUN/sae/<name>/ of a conditioned architecture)."""
    root = run.root / "sae"
    found = {}
    for weights in sorted(root.glob(f"*/{SAE_WEIGHTS}")) if root.is_dir() else []:
        architecture = read_json(weights.parent / SAE_CONFIG).get("architecture", "")
        if getattr(get_architecture(architecture), "needs_conditions", False):
            model = load_sae(weights.parent)
            assert isinstance(model, ConditionedSAE), architecture
            found[weights.parent.name] = model
    return found


def stain_normalised_splits(run: RunDir, cfg: PathosaeConfig, ecfg: EditConfig) -> Splits | str:
    """The same slides and sampled tiles from the stain-normalised features, or why not."""
    name = cfg.embedding.stainnorm_name()
    folder = run.features_dir(name)
    if not folder.is_dir():
        return (f"no stain-normalised features (RUN/features/{name}); set embedding.baselines: "
                "[stain_normalised] and re-run the embed stage")
    main, stain = FeatureStore(run, analysed_features(cfg)), FeatureStore(run, name)
    if stain.counts() != main.counts():
        return (f"RUN/features/{name} does not hold the same slides and tiles as the main "
                "features (embedding unfinished?); re-run the embed stage")
    bags = load_run_bags(run, cfg, ecfg.site_column, ecfg.downstream.max_tiles_per_slide,
                         ecfg.seed, ecfg.confounders or list(cfg.cohort.confounders), features=name,
                         max_tiles=ecfg.downstream.max_tiles)
    return cohort_splits(bags, ecfg)[0]
