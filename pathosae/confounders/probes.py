"""Leakage beside the SAE view: ComBat-harmonised embeddings, PathoROB, and the scan's controls."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from pathosae.config import PathosaeConfig
from pathosae.confounders.associations import associations_table
from pathosae.confounders.baselines import combat_train_apply
from pathosae.confounders.collect import (
    CodeModel,
    Collected,
    codes_and_recon,
    conditions_for,
    representations,
)
from pathosae.confounders.controls import permuted_null_repeats, scan_counts, summarise_null
from pathosae.confounders.leakage import leakage_table
from pathosae.confounders.pathorob import pathorob_table
from pathosae.confounders.robustness import robustness_table
from pathosae.confounders.scan import Kind
from pathosae.sampling import seeded_subset
from pathosae.schema import PATIENT_ID, SLIDE_ID, SPLIT

#: Tiles scored by croma's metrics (a seeded draw from the stage's tile sample): its exact
#: neighbour searches cost about 6 s per representation and confounder at 3,000 tiles (CPU).
ROBUSTNESS_MAX_TILES = 3000


def combat_rows(data: Collected, categorical: list[str], cfg: PathosaeConfig) -> pd.DataFrame:
    """Leakage of raw vs ComBat-harmonised slide embeddings on the held-out (non-train) slides."""
    label = cfg.cohort.label
    slides = data.slides
    if not cfg.confounders.combat or SPLIT not in slides or label not in slides:
        return pd.DataFrame()
    is_train = (slides[SPLIT] == "train").to_numpy()
    held = ~is_train
    frames = []
    for variable in (v for v in categorical if v != label):
        known = slides[variable].notna().to_numpy()
        if held[known].sum() < 4 or not set(slides.loc[known & held, variable]) <= set(
            slides.loc[known & is_train, variable]
        ):
            continue
        harmonised = combat_train_apply(data.embedding_mean[known], slides.loc[known, variable],
                                        is_train[known], slides.loc[known, label])
        if not np.isfinite(harmonised).all():
            # ComBat cannot estimate a batch with a single training slide: no baseline here.
            warnings.warn(f"ComBat on {variable!r} gave non-finite values (a batch with too few "
                          "training slides); its leakage baseline is left out", stacklevel=2)
            continue
        keep = held[known]
        reps = {"embedding": data.embedding_mean[known][keep], "embedding_combat": harmonised[keep]}
        meta = slides[known].reset_index(drop=True)[keep].reset_index(drop=True)
        table = leakage_table(reps, meta, [variable], site_column=cfg.confounders.site_column,
                              n_folds=cfg.confounders.cv_folds, seed=cfg.confounders.seed,
                              n_null=cfg.confounders.chance_permutations,
                              uncertainty=cfg.uncertainty)
        frames.append(table.assign(subset="heldout"))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def pathorob_rows(
    data: Collected, sae: CodeModel, categorical: list[str], cfg: PathosaeConfig,
    extra: Mapping[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """PathoROB metrics on the sampled tiles' embeddings and SAE codes (and ``extra`` ones)."""
    label = cfg.cohort.label
    if label is None or label not in data.slides:
        return pd.DataFrame()
    rows = seeded_subset(np.arange(len(data.tile_slide)), cfg.confounders.pathorob_max_tiles,
                         cfg.confounders.seed)
    meta = data.slides.iloc[data.tile_slide[rows]].reset_index(drop=True)
    tiles = data.tile_features[rows]
    codes = codes_and_recon(sae, tiles, conditions_for(sae, meta))[0]
    reps = {"embedding": tiles, "sae_codes": codes,
            **{name: np.asarray(x)[rows] for name, x in (extra or {}).items()}}
    confs = [v for v in categorical if v != label]
    return pathorob_table(reps, meta, label, confs, cfg.confounders.k_neighbors,
                          cfg.confounders.cv_folds, cfg.confounders.seed)


def robustness_rows(
    data: Collected, sae: CodeModel, categorical: list[str], cfg: PathosaeConfig,
    extra: Mapping[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """croma's RI, MaRI and CRoMa (:mod:`.robustness`) on the sampled tiles' embeddings, SAE
    codes and SAE residual (and ``extra`` ones), a tile's own patient kept out of its neighbours."""
    label = cfg.cohort.label
    if label is None or label not in data.slides:
        return pd.DataFrame()
    meta = data.slides.iloc[data.tile_slide].reset_index(drop=True)

    def tile_representations(rows: np.ndarray) -> dict[str, np.ndarray]:
        # The drawn tiles only: codes of the whole tile sample are tiles x d_sae (0.25 GB at
        # 20,000 x 3,072), for the ROBUSTNESS_MAX_TILES that croma scores.
        return {**representations(data, sae, "tile", rows),
                **{name: np.asarray(x)[rows] for name, x in (extra or {}).items()}}

    confs = [v for v in categorical if v != label]
    group = PATIENT_ID if PATIENT_ID in meta else SLIDE_ID
    return robustness_table(tile_representations, meta, label, confs, group_column=group,
                            max_samples=ROBUSTNESS_MAX_TILES, seed=cfg.confounders.seed)


def robustness_summary(table: pd.DataFrame) -> dict[str, dict[str, float | str]]:
    """``confounder/representation`` -> RI, MaRI, CRoMa and CRoMa's support (and why NaN)."""
    out: dict[str, dict[str, float | str]] = {}
    for row in table.itertuples():
        entry: dict[str, float | str] = {
            name: round(float(getattr(row, name)), 4)
            for name in ("ri", "mari", "croma", "croma_support")
        }
        if row.croma_reason:
            entry["reason"] = str(row.croma_reason)
        out[f"{row.confounder}/{row.representation}"] = entry
    return out


def control_rows(
    data: Collected, random: Collected | None, associations: pd.DataFrame, variables: list[str],
    covariates: list[str], kinds: dict[str, Kind], cfg: PathosaeConfig,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """controls.parquet: scan counts for the SAE and (``random``: slides encoded by the SAE
    trained on the random-weights twin) the random-encoder SAE, and their permuted nulls."""
    ccfg = cfg.confounders
    alpha = ccfg.fdr_alpha
    frames = [scan_counts(associations, alpha).assign(control="scan", representation="sae")]
    nulls = {"sae": data}
    summary: dict[str, Any] = {"scan": {"sae": _counts(frames[0])}}
    if random is not None:
        random_assoc = associations_table(random, variables, covariates, kinds, cfg)
        counts = scan_counts(random_assoc, alpha).assign(control="scan", representation="sae_random")
        frames.append(counts)
        summary["scan"]["sae_random"] = _counts(counts)
        nulls["sae_random"] = random
    summary["permuted_null"] = {}
    if not ccfg.null_repeats:
        nulls = {}
    for name, source in nulls.items():
        null = permuted_null_repeats(source.codes, source.slides, variables, covariates, kinds,
                                     alpha, ccfg.seed, repeats=ccfg.null_repeats,
                                     correlation=ccfg.correlation,
                                     max_permutations=ccfg.scan_permutations)
        frames.append(null.assign(control="permuted_null", representation=name))
        summary["permuted_null"][name] = summarise_null(null, alpha)
    return pd.concat(frames, ignore_index=True), summary


def _counts(table: pd.DataFrame) -> dict[str, dict[str, int]]:
    return {str(r.variable): {"units_flagged": int(r.n_units_flagged), "fdr_pass": int(r.n_fdr_pass),
                              "tests": int(r.n_tests)} for r in table.itertuples()}


def pathorob_summary(pathorob: pd.DataFrame) -> dict[str, dict[str, float]]:
    if pathorob.empty:
        return {}
    out: dict[str, dict[str, float]] = {}
    for row in pathorob.itertuples():
        out[f"{row.confounder}/{row.representation}"] = {
            "robustness_index": round(float(row.robustness_index), 4),
            "confounder_auroc": round(float(row.confounder_auroc), 4),
        }
    return out


