"""The confounder stage: association scan, leakage probes, PathoROB, directions and plots.

Reads the features (``FeatureStore``), the SAE (``load_sae``) and the cohort table; streams the
slides once (features → codes → reconstruction error, summarised per slide, plus a capped tile
sample: :mod:`.collect`), then writes under RUN/confounders/:

- associations.parquet: unit × variable × aggregation × level (slide, and patient where
  patients have several slides): effect, signed_effect, statistic, p, q (BH over the whole
  table), direction, n_slides, and mm_p / perm_p for the confirmed top hits (:mod:`.associations`);
- leakage.parquet: probes of each categorical variable from the raw embeddings, the SAE codes
  and the SAE's reconstruction error (patient folds and leave-one-site-out), plus ComBat;
- pathorob.parquet: robustness index, clustering score and confounder AUROC (:mod:`.probes`);
- robustness.parquet: croma's RI, MaRI and CRoMa with their support (:mod:`.robustness`);
- directions.safetensors (+ .json): LEACE erasers, mean-difference directions, SAE probe
  weights and flagged units per confounder (:mod:`.fit_directions`);
- heatmap.png, leakage.png; summary.json with the settings hash that decides skipping;
- baselines beside the SAE view, in the same leakage and PathoROB tables: stain-normalised
  features (``<encoder>_stainnorm``: embedding and the SAE's codes of it) and the random-weights
  encoder twin (``<encoder>_random``: embedding, and codes/residual of the SAE trained on it by
  the SAE stage's random-encoder control);
- controls.parquet: the scan's counts for the SAE and the random-encoder SAE, and a
  permuted-metadata null (see :mod:`pathosae.confounders.controls`);
- groundtruth.parquet when the config names a synthetic cohort's ``ground_truth`` folder:
  flagged units scored against the planted site and scanner effects (:mod:`.truth`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from pathosae.cohort.table import load_cohort
from pathosae.config import PathosaeConfig
from pathosae.confounders import plots
from pathosae.confounders.associations import (
    associations_table,
    confirm_hits,
    scan_columns,
    unit_findings,
    unit_stability,
)
from pathosae.confounders.collect import (
    Baseline,
    CodeModel,
    Collected,
    baseline_representations,
    collect,
    collect_baselines,
    metadata_for,
    representations,
)
from pathosae.confounders.fit_directions import save_all_directions
from pathosae.confounders.leakage import leakage_table
from pathosae.confounders.probes import (
    combat_rows,
    control_rows,
    pathorob_rows,
    pathorob_summary,
    robustness_rows,
    robustness_summary,
)
from pathosae.confounders.summary import summarise
from pathosae.confounders.truth import TruthScorer, truth_scorer
from pathosae.devices import resolve_device
from pathosae.features import FeatureStore
from pathosae.fingerprint import current_summary, file_hash, input_fingerprint
from pathosae.inputs import analysed_features, select_sae_dir
from pathosae.io import settings_hash, write_json_atomic, write_parquet_atomic
from pathosae.progress import step
from pathosae.run import RunDir
from pathosae.sae.io import load_sae
from pathosae.schema import (
    ASSOCIATIONS,
    CONFOUNDERS_DIR,
    CONTROLS,
    DIRECTIONS,
    DIRECTIONS_JSON,
    GROUND_TRUTH_TABLE,
    LEAKAGE,
    PATHOROB,
    RANDOM_ENCODER_SAE,
    ROBUSTNESS,
    SAE_WEIGHTS,
    SETTINGS_HASH,
    SUMMARY,
)
from pathosae.types import OnError

OUTPUTS = (ASSOCIATIONS, LEAKAGE, PATHOROB, ROBUSTNESS, DIRECTIONS, DIRECTIONS_JSON, CONTROLS)


# ---- entry point ------------------------------------------------------------------------------
def run_stage(run: RunDir, cfg: PathosaeConfig, on_error: OnError) -> dict[str, Any]:
    """Run the confounder analysis of a run; skipped when settings and inputs are unchanged."""
    encoder = analysed_features(cfg)
    run.require(run.features_dir(encoder), "embed")
    sae_dir = select_sae_dir(run, cfg.confounders.sae)
    cohort = load_cohort(run)
    store = FeatureStore(run, encoder)
    sources = baseline_sources(run, cfg, sae_dir)
    gt_dir = cfg.ground_truth
    key = settings_hash({
        "confounders": cfg.section_dump("confounders"),
        "uncertainty": cfg.section_dump("uncertainty"),
        "label": cfg.cohort.label,
        "cohort_confounders": cfg.cohort.confounders,
        "inputs": input_fingerprint(run, encoder, sae_dir, store.slide_ids),
        "baselines": {role: input_fingerprint(run, name, sae, store.slide_ids)
                      for role, (name, sae) in sources.items()},
        "ground_truth": (file_hash(gt_dir / "params.json") or file_hash(gt_dir / "truth.json"))
        if gt_dir else None,
        "truth_encoder": cfg.section_dump("embedding") if gt_dir else None,
    })
    out_dir = run.root / CONFOUNDERS_DIR
    expected = [out_dir / n for n in (*OUTPUTS, *([GROUND_TRUTH_TABLE] if gt_dir else []))]
    previous = current_summary(out_dir / SUMMARY, key, expected)
    if previous is not None:
        return {**previous, "skipped": True}
    sae = load_sae(sae_dir).to(resolve_device(cfg.sae.device, "sae.device"))
    baselines = {}
    for role, (name, sae_path) in sources.items():
        role_sae = None if sae_path is None else sae if sae_path == sae_dir else load_sae(sae_path)
        baselines[role] = Baseline(name, FeatureStore(run, name), role_sae)
    truth = truth_scorer(run, gt_dir, cfg, store, sae) if gt_dir else None
    return analyse(store, sae, cohort, cfg, out_dir, key, on_error, sae_name=sae_dir.name,
                   baselines=baselines, truth=truth, stability=unit_stability(sae_dir))


def baseline_sources(
    run: RunDir, cfg: PathosaeConfig, sae_dir: Path
) -> dict[str, tuple[str, Path | None]]:
    """Baseline feature folders present in the run: role -> (folder, SAE folder or None).

    ``stainnorm`` is encoded with the run's SAE (do its confounder units survive stain
    normalisation?); ``random`` with the SAE the SAE stage trained on the random twin, if any.
    """
    found: dict[str, tuple[str, Path | None]] = {}
    stainnorm = cfg.embedding.stainnorm_name()
    if run.features_dir(stainnorm).is_dir():
        found["stainnorm"] = (stainnorm, sae_dir)
    twin = cfg.embedding.random_twin_name()
    if twin != cfg.embedding.encoder and run.features_dir(twin).is_dir():
        twin_sae = sae_dir / RANDOM_ENCODER_SAE
        found["random"] = (twin, twin_sae if (twin_sae / SAE_WEIGHTS).is_file() else None)
    return found


# ---- the analysis on any feature source and SAE ----------------------------------------------
def analyse(  # noqa: PLR0913 - the stage's inputs, each named for tests that call it directly
    store: FeatureStore,
    sae: CodeModel,
    cohort: pd.DataFrame,
    cfg: PathosaeConfig,
    out_dir: Path,
    key: str,
    on_error: OnError = "stop",
    sae_name: str = "sae",
    baselines: Mapping[str, Baseline] | None = None,
    truth: TruthScorer | None = None,
    stability: pd.Series | None = None,
) -> dict[str, Any]:
    """Compute and write every output of the stage; returns the JSON summary.

    ``stability`` (per unit: stable across SAE seeds, from the SAE stage) joins the findings.
    """
    baselines = baselines or {}
    variables, covariates, kinds = scan_columns(cohort, cfg)
    data = collect(store, sae, cohort, cfg, on_error)
    step("confounders", f"association scan of the SAE units against {', '.join(variables)}")
    associations = associations_table(data, variables, covariates, kinds, cfg)
    step("confounders", "confirming the top hits (mixed models, permutations)")
    associations = confirm_hits(associations, data, sae, covariates, kinds, cfg)
    step("confounders", "findings: specific beyond the label, large enough, stable")
    associations = unit_findings(associations, data, variables, covariates, kinds, cfg, stability)
    categorical = [v for v in variables if kinds[v] == "categorical"]
    extra, skipped_baselines = collect_baselines(baselines, data, cfg)
    step("confounders", "leakage probes and ComBat")
    leakage = leakage_rows(data, sae, extra, baselines, categorical, cfg)
    step("confounders", "PathoROB")
    tile_baselines = baseline_representations(extra, baselines, "tile")
    pathorob = pathorob_rows(data, sae, categorical, cfg, tile_baselines)
    step("confounders", "robustness (croma: RI, MaRI, CRoMa)")
    robustness = robustness_rows(data, sae, categorical, cfg, tile_baselines)
    twin = baselines.get("random")
    twin_codes = extra.get("random") if twin is not None and twin.sae is not None else None
    step("confounders", "controls (random-encoder SAE, permuted-metadata null)")
    controls, controls_summary = control_rows(data, twin_codes, associations, variables,
                                              covariates, kinds, cfg)
    tables = {ASSOCIATIONS: associations, LEAKAGE: leakage, PATHOROB: pathorob,
              ROBUSTNESS: robustness, CONTROLS: controls}
    write_tables(out_dir, tables, key)
    step("confounders", "directions (LEACE, mean differences, SAE probes)")
    save_all_directions(out_dir / DIRECTIONS, data, associations, categorical, cfg, key, sae_name)
    plotted = {
        "heatmap": plots.plot_heatmap(associations, out_dir / "heatmap.png", cfg.confounders.fdr_alpha),
        "leakage": plots.plot_leakage(leakage, out_dir / "leakage.png"),
    }
    summary = summarise(associations, leakage, data, key, plotted, cfg.confounders.fdr_alpha)
    summary["baselines"] = {
        **{role: {"features": b.features, "status": "scored"} for role, b in baselines.items()
           if role in extra},
        **skipped_baselines,
    }
    summary["pathorob"] = pathorob_summary(pathorob)
    summary["robustness"] = robustness_summary(robustness)
    summary["controls"] = controls_summary
    if truth is not None:
        step("confounders", "scoring flagged units against the ground truth")
        table, figures = truth(data, associations)
        write_tables(out_dir, {GROUND_TRUTH_TABLE: table}, key)
        summary["ground_truth"] = figures
    write_json_atomic(out_dir / SUMMARY, summary)
    return summary


def leakage_rows(
    data: Collected, sae: CodeModel, extra: Mapping[str, Collected],
    baselines: Mapping[str, Baseline], categorical: list[str], cfg: PathosaeConfig,
) -> pd.DataFrame:
    """Probes of every categorical variable from every representation, and the ComBat rows."""
    ccfg = cfg.confounders
    reps = {**representations(data, sae, ccfg.probe_level),
            **baseline_representations(extra, baselines, ccfg.probe_level)}
    leakage = leakage_table(reps, metadata_for(data, ccfg.probe_level), categorical,
                            site_column=ccfg.site_column, n_folds=ccfg.cv_folds, seed=ccfg.seed,
                            n_null=ccfg.chance_permutations, uncertainty=cfg.uncertainty)
    return pd.concat([leakage.assign(subset="all"), combat_rows(data, categorical, cfg)],
                     ignore_index=True)


def write_tables(out_dir: Path, tables: Mapping[str, pd.DataFrame], key: str) -> None:
    """Each table with the stage's settings hash, written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        write_parquet_atomic(out_dir / name, table.assign(**{SETTINGS_HASH: key}))
