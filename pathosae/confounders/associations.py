"""The association table: every SAE unit's slide (and patient) summaries against each variable.

Slide level for every aggregation, patient level where patients have several slides, BH q over
the whole table; the top flagged hits per variable get a mixed-model and a permutation p-value.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pathosae.config import PathosaeConfig
from pathosae.confounders import confirm
from pathosae.confounders.aggregate import patient_metadata, patients_with_several_slides
from pathosae.confounders.collect import CodeModel, Collected, codes_and_recon, conditions_for
from pathosae.confounders.findings import add_findings
from pathosae.confounders.scan import Kind, add_qvalues, association_scan, infer_kind
from pathosae.errors import StageError
from pathosae.sampling import seeded_subset
from pathosae.schema import PATIENT_ID, UNIT_STABILITY


def scan_columns(
    cohort: pd.DataFrame, cfg: PathosaeConfig
) -> tuple[list[str], list[str], dict[str, Kind]]:
    """Variables to scan (default: the cohort's confounders and the label), covariates, kinds."""
    ccfg = cfg.confounders
    variables = list(ccfg.variables) if ccfg.variables is not None else [
        *cfg.cohort.confounders, *([cfg.cohort.label] if cfg.cohort.label else [])
    ]
    variables = list(dict.fromkeys(variables))
    missing = [c for c in [*variables, *ccfg.covariates] if c not in cohort.columns]
    if missing:
        raise StageError(
            f"the cohort table has no column(s) {missing} (it has {list(cohort.columns)}). "
            "Fix: set confounders.variables / confounders.covariates (or cohort.confounders) "
            "to columns of the manifest."
        )
    kinds = {c: infer_kind(cohort[c], ccfg.variable_types.get(c))
             for c in [*variables, *ccfg.covariates]}
    return variables, list(ccfg.covariates), kinds


def _patient_level(
    data: Collected, columns: list[str]
) -> tuple[pd.DataFrame, dict[str, np.ndarray]] | None:
    """Tile-weighted patient summaries (exact for mean and frac_active; the quantile is the
    tile-weighted mean of the slides' quantiles) and the patient metadata."""
    if not patients_with_several_slides(data.slides):
        return None
    meta = patient_metadata(data.slides, columns)
    index = pd.Index(meta[PATIENT_ID])
    rows = index.get_indexer(data.slides[PATIENT_ID])
    weights = np.zeros((len(meta), len(data.slides)))
    weights[rows, np.arange(len(data.slides))] = data.n_tiles
    weights /= weights.sum(axis=1, keepdims=True)
    return meta, {name: weights @ m for name, m in data.codes.items()}


def associations_table(
    data: Collected, variables: list[str], covariates: list[str], kinds: dict[str, Kind],
    cfg: PathosaeConfig,
) -> pd.DataFrame:
    """The scan at slide level (and patient level) for every aggregation; q over all rows."""
    ccfg = cfg.confounders
    levels: list[tuple[str, pd.DataFrame, dict[str, np.ndarray]]] = [
        ("slide", data.slides.assign(n_slides=1), data.codes)
    ]
    patients = _patient_level(data, [*variables, *covariates])
    if patients is not None:
        levels.append(("patient", *patients))
    frames = []
    for level, meta, matrices in levels:
        for aggregation, matrix in matrices.items():
            table = association_scan(matrix, meta, variables, covariates, kinds, ccfg.correlation,
                                     max_permutations=ccfg.scan_permutations, seed=ccfg.seed)
            table.insert(2, "aggregation", aggregation)
            table.insert(3, "level", level)
            table["n_slides"] = table["variable"].map(_slides_tested(meta, covariates))
            frames.append(table)
    table = add_qvalues(pd.concat(frames, ignore_index=True))
    table["flagged"] = table["q"] <= ccfg.fdr_alpha
    return table


def unit_stability(sae_dir: Path) -> pd.Series | None:
    """Per unit, stable across SAE seeds (the SAE stage's table), or None when not measured."""
    path = sae_dir / UNIT_STABILITY
    if not path.is_file():
        return None
    table = pd.read_parquet(path, columns=["unit", "stable"])
    return pd.Series(table["stable"].to_numpy(bool), index=table["unit"].to_numpy(int))


def unit_findings(
    associations: pd.DataFrame, data: Collected, variables: list[str], covariates: list[str],
    kinds: dict[str, Kind], cfg: PathosaeConfig, stability: pd.Series | None,
) -> pd.DataFrame:
    """Specific, large-enough, stable units (see :mod:`pathosae.confounders.findings`)."""
    ccfg, label = cfg.confounders, cfg.cohort.label
    confounders = [v for v in variables if v != label]
    return add_findings(associations, data.codes, data.slides, confounders, label, covariates, kinds,
                        ccfg.correlation, ccfg.specificity_permutations, ccfg.seed,
                        ccfg.min_effect, stability,
                        beyond_other_confounders=ccfg.specific_beyond_confounders)


def _slides_tested(meta: pd.DataFrame, covariates: list[str]) -> dict[str, int]:
    out = {}
    for var in meta.columns:
        held = [c for c in covariates if c != var and c in meta.columns]
        known = meta[[var, *held]].notna().all(axis=1)
        out[var] = int(meta.loc[known, "n_slides"].sum())
    return out


def confirm_hits(
    associations: pd.DataFrame, data: Collected, sae: CodeModel,
    covariates: list[str], kinds: dict[str, Kind], cfg: PathosaeConfig,
) -> pd.DataFrame:
    """Mixed-model and permutation p-values for the top flagged slide-level hits per variable."""
    ccfg = cfg.confounders
    associations = associations.assign(mm_p=np.nan, mm_converged=pd.NA, perm_p=np.nan)
    if ccfg.n_confirm == 0:
        return associations
    hits = associations[(associations["level"] == "slide") & associations["flagged"]]
    hits = hits.sort_values("p").groupby("variable", sort=False).head(ccfg.n_confirm)
    if hits.empty:
        return associations
    units = np.unique(hits["unit"].to_numpy(int))
    tile_rows = _confirmation_tiles(data.tile_slide, ccfg.confirm_max_slides, ccfg.seed)
    tiles = data.slides.iloc[data.tile_slide[tile_rows]].reset_index(drop=True)
    tile_codes = codes_and_recon(sae, data.tile_features[tile_rows],
                                 conditions_for(sae, tiles))[0][:, units]
    cov_kinds = {c: kinds[c] for c in covariates}
    for (variable, aggregation), group in hits.groupby(["variable", "aggregation"]):
        cols = np.searchsorted(units, group["unit"].to_numpy(int))
        perm = confirm.permutation_p(data.codes[aggregation][:, group["unit"].to_numpy(int)],
                                     data.slides, variable, kinds[variable], cov_kinds,
                                     ccfg.n_permutations, ccfg.seed)
        associations.loc[group.index, "perm_p"] = perm
        for row, col in zip(group.index, cols, strict=True):
            frame = tiles.assign(_value=tile_codes[:, col])
            result = confirm.mixed_model_p(frame, "_value", variable, kinds[variable], cov_kinds)
            associations.loc[row, "mm_p"] = result["mm_p"]
            associations.loc[row, "mm_converged"] = result["mm_converged"]
    associations["mm_converged"] = associations["mm_converged"].astype("boolean")
    return associations


def _confirmation_tiles(tile_slide: np.ndarray, max_slides: int, seed: int) -> np.ndarray:
    """Rows of the tile sample whose slides enter the mixed models (all, or a seeded draw)."""
    slides = np.unique(tile_slide)
    if len(slides) <= max_slides:
        return np.arange(len(tile_slide))
    return np.flatnonzero(np.isin(tile_slide, seeded_subset(slides, max_slides, seed)))


