"""The confounder stage: association scan, leakage probes, PathoROB, directions and plots.

Reads the features (``FeatureStore``), the SAE (``load_sae``) and the cohort table; streams the
slides once (features → codes → reconstruction error, summarised per slide, plus a capped tile
sample), then writes under RUN/confounders/:

- associations.parquet: unit × variable × aggregation × level (slide, and patient where
  patients have several slides): effect, signed_effect, statistic, p, q (BH over the whole
  table), direction, n_slides, and mm_p / perm_p for the confirmed top hits;
- leakage.parquet: probes of each categorical variable from the raw embeddings, the SAE codes
  and the SAE's reconstruction error (patient folds and leave-one-site-out), plus ComBat;
- pathorob.parquet: robustness index, clustering score and confounder AUROC;
- directions.safetensors (+ .json): LEACE erasers, mean-difference directions, SAE probe
  weights and flagged units per confounder;
- heatmap.png, leakage.png; summary.json with the settings hash that decides skipping;
- baselines beside the SAE view, in the same leakage and PathoROB tables: stain-normalised
  features (``<encoder>_stainnorm``: embedding and the SAE's codes of it) and the random-weights
  encoder twin (``<encoder>_random``: embedding, and codes/residual of the SAE trained on it by
  the SAE stage's random-encoder control);
- controls.parquet: the scan's counts for the SAE and the random-encoder SAE, and a
  permuted-metadata null (see :mod:`pathosae.confounders.controls`);
- groundtruth.parquet on a synthetic cohort: flagged units scored against the planted site and
  scanner effects (see :mod:`pathosae.confounders.truth`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch

from pathosae.config import PathosaeConfig
from pathosae.confounders import confirm, directions, plots
from pathosae.confounders.aggregate import (
    patient_metadata,
    patients_with_several_slides,
    summarise_tiles,
)
from pathosae.confounders.baselines import combat_train_apply
from pathosae.confounders.controls import permuted_null_repeats, scan_counts, summarise_null
from pathosae.confounders.leakage import leakage_table
from pathosae.confounders.pathorob import pathorob_table
from pathosae.confounders.scan import Kind, add_qvalues, association_scan, infer_kind
from pathosae.errors import PathosaeError, StageError
from pathosae.io import read_json, settings_hash, sha256_file, write_json_atomic, write_parquet_atomic
from pathosae.run import RunDir
from pathosae.types import OnError

OUTPUTS = ("associations.parquet", "leakage.parquet", "pathorob.parquet", "directions.safetensors",
           "directions.json", "controls.parquet")
GROUND_TRUTH = "groundtruth.parquet"
_ENCODE_BATCH = 4096


class SlideFeatures(Protocol):
    """What the stage needs from a feature store (``pathosae.features.FeatureStore`` has it)."""

    slide_ids: list[str]

    def load(self, slide_id: str) -> tuple[np.ndarray, np.ndarray]: ...


class CodeModel(Protocol):
    """What the stage needs from an SAE."""

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...


@dataclass
class Collected:
    """Everything one pass over the slides keeps: slide summaries and a capped tile sample."""

    slides: pd.DataFrame
    codes: dict[str, np.ndarray]  # aggregation -> slides × units
    embedding_mean: np.ndarray  # slides × dims
    residual_mean: np.ndarray  # slides × dims (features − SAE reconstruction)
    n_tiles: np.ndarray
    tile_features: np.ndarray  # sampled tiles × dims
    tile_slide: np.ndarray  # slide index of each sampled tile
    missing: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Baseline:
    """A feature set embedded beside the main one, and the SAE that encodes it (if any)."""

    features: str
    store: SlideFeatures
    sae: CodeModel | None = None


TruthScorer = Callable[[Collected, pd.DataFrame], tuple[pd.DataFrame, dict[str, Any]]]


# ---- entry point ------------------------------------------------------------------------------
def run_stage(run: RunDir, cfg: PathosaeConfig, on_error: OnError) -> dict[str, Any]:
    """Run the confounder analysis of a run; skipped when settings and inputs are unchanged."""
    from pathosae.cohort import load_cohort
    from pathosae.features import FeatureStore
    from pathosae.sae import load_sae
    from pathosae.sae.stage import ground_truth_dir

    encoder = cfg.embedding.encoder
    run.require(run.features_dir(encoder), "embed")
    sae_dir = select_sae_dir(run, cfg.confounders.sae)
    cohort = load_cohort(run)
    store = FeatureStore(run, encoder)
    sources = baseline_sources(run, cfg, sae_dir)
    gt_dir = ground_truth_dir(run)
    key = settings_hash({
        "confounders": cfg.section_dump("confounders"),
        "label": cfg.cohort.label,
        "cohort_confounders": cfg.cohort.confounders,
        "inputs": input_fingerprint(run, encoder, sae_dir, store.slide_ids),
        "baselines": {role: input_fingerprint(run, name, sae, store.slide_ids)
                      for role, (name, sae) in sources.items()},
        "ground_truth": sha256_file(gt_dir / "params.json") if gt_dir else None,
        "truth_encoder": cfg.section_dump("embedding") if gt_dir else None,
    })
    out_dir = run.root / "confounders"
    previous = _previous_summary(out_dir)
    expected = [*OUTPUTS, *([GROUND_TRUTH] if gt_dir else [])]
    if previous.get("settings_hash") == key and all((out_dir / n).exists() for n in expected):
        return {**previous, "skipped": True}
    sae = load_sae(sae_dir)
    baselines = {}
    for role, (name, sae_path) in sources.items():
        role_sae = None if sae_path is None else sae if sae_path == sae_dir else load_sae(sae_path)
        baselines[role] = Baseline(name, FeatureStore(run, name), role_sae)
    truth = _truth_scorer(run, gt_dir, cfg, store, sae) if gt_dir else None
    return analyse(store, sae, cohort, cfg, out_dir, key, on_error, sae_name=sae_dir.name,
                   baselines=baselines, truth=truth)


def baseline_sources(run: RunDir, cfg: PathosaeConfig, sae_dir: Path) -> dict[str, tuple[str, Any]]:
    """Baseline feature folders present in the run: role -> (folder, SAE folder or None).

    ``stainnorm`` is encoded with the run's SAE (do its confounder units survive stain
    normalisation?); ``random`` with the SAE the SAE stage trained on the random twin, if any.
    """
    from pathosae.sae.stage import RANDOM_ENCODER_SAE

    found: dict[str, tuple[str, Any]] = {}
    stainnorm = f"{cfg.embedding.encoder}_stainnorm"
    if run.features_dir(stainnorm).is_dir():
        found["stainnorm"] = (stainnorm, sae_dir)
    twin = cfg.embedding.random_twin_name()
    if twin != cfg.embedding.encoder and run.features_dir(twin).is_dir():
        twin_sae = sae_dir / RANDOM_ENCODER_SAE
        found["random"] = (twin, twin_sae if (twin_sae / "sae.safetensors").is_file() else None)
    return found


def _truth_scorer(
    run: RunDir, gt_dir: Path, cfg: PathosaeConfig, store: SlideFeatures, sae: CodeModel
) -> TruthScorer:
    from pathosae.confounders.truth import score_ground_truth

    def score(data: Collected, associations: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
        return score_ground_truth(run, gt_dir, cfg, data.slides, store.load,
                                  lambda x: _codes_and_recon(sae, x)[0], associations)

    return score


def select_sae_dir(run: RunDir, name: str | None) -> Path:
    """The SAE folder named in the config, or the only one in RUN/sae/."""
    root = run.root / "sae"
    if name is not None:
        return run.require(run.sae_dir(name) / "sae.safetensors", "sae").parent
    found = sorted(p.parent for p in root.glob("*/sae.safetensors")) if root.is_dir() else []
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


def input_fingerprint(
    run: RunDir, encoder: str, sae_dir: Path | None, slide_ids: Sequence[str]
) -> str:
    """A hash of what the stage reads: cohort, SAE weights, and each feature file's size/mtime."""
    files = []
    for sid in slide_ids:
        path = run.features_path(encoder, sid)
        stat = path.stat() if path.exists() else None
        files.append([sid, stat.st_size if stat else None, stat.st_mtime_ns if stat else None])
    return settings_hash({
        "cohort": sha256_file(run.cohort_path),
        "sae": sha256_file(sae_dir / "sae.safetensors") if sae_dir else None,
        "sae_cfg": sha256_file(sae_dir / "cfg.json") if sae_dir else None,
        "features": files,
    })


def _previous_summary(out_dir: Path) -> dict[str, Any]:
    path = out_dir / "summary.json"
    try:
        return read_json(path) if path.exists() else {}
    except ValueError:
        return {}


# ---- the analysis on any feature source and SAE ----------------------------------------------
def analyse(
    store: SlideFeatures,
    sae: CodeModel,
    cohort: pd.DataFrame,
    cfg: PathosaeConfig,
    out_dir: Path,
    key: str,
    on_error: OnError = "stop",
    sae_name: str = "sae",
    baselines: Mapping[str, Baseline] | None = None,
    truth: TruthScorer | None = None,
) -> dict[str, Any]:
    """Compute and write every output of the stage; returns the JSON summary."""
    ccfg = cfg.confounders
    variables, covariates, kinds = scan_columns(cohort, cfg)
    data = collect(store, sae, cohort, cfg, on_error)
    associations = associations_table(data, variables, covariates, kinds, cfg)
    associations = confirm_hits(associations, data, store, sae, covariates, kinds, cfg)
    associations["settings_hash"] = key
    categorical = [v for v in variables if kinds[v] == "categorical"]
    extra, skipped_baselines = collect_baselines(baselines or {}, data, cfg)
    reps = {**representations(data, sae, ccfg.probe_level),
            **baseline_representations(extra, baselines or {}, ccfg.probe_level)}
    meta = metadata_for(data, ccfg.probe_level)
    leakage = leakage_table(reps, meta, categorical, site_column=ccfg.site_column,
                            n_folds=ccfg.cv_folds, seed=ccfg.seed)
    leakage = pd.concat([leakage.assign(subset="all"), combat_rows(data, categorical, cfg)],
                        ignore_index=True)
    leakage["settings_hash"] = key
    pathorob = pathorob_rows(data, sae, categorical, cfg,
                             baseline_representations(extra, baselines or {}, "tile"))
    pathorob["settings_hash"] = key
    twin = (baselines or {}).get("random")
    twin_codes = extra.get("random") if twin is not None and twin.sae is not None else None
    controls, controls_summary = control_rows(data, twin_codes, associations, variables,
                                              covariates, kinds, cfg)
    controls["settings_hash"] = key
    out_dir.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(out_dir / "associations.parquet", associations)
    write_parquet_atomic(out_dir / "leakage.parquet", leakage)
    write_parquet_atomic(out_dir / "pathorob.parquet", pathorob)
    write_parquet_atomic(out_dir / "controls.parquet", controls)
    save_all_directions(out_dir / "directions.safetensors", data, sae, associations,
                        categorical, cfg, key, sae_name)
    plotted = {
        "heatmap": plots.plot_heatmap(associations, out_dir / "heatmap.png", ccfg.fdr_alpha),
        "leakage": plots.plot_leakage(leakage, out_dir / "leakage.png"),
    }
    summary = summarise(associations, leakage, data, key, plotted, ccfg.fdr_alpha)
    summary["baselines"] = {
        **{role: {"features": b.features, "status": "scored"} for role, b in (baselines or {}).items()
           if role in extra},
        **skipped_baselines,
    }
    summary["pathorob"] = _pathorob_summary(pathorob)
    summary["controls"] = controls_summary
    if truth is not None:
        table, figures = truth(data, associations)
        table["settings_hash"] = key
        write_parquet_atomic(out_dir / GROUND_TRUTH, table)
        summary["ground_truth"] = figures
    write_json_atomic(out_dir / "summary.json", summary)
    return summary


class _Identity:
    """Codes = the features themselves, for a baseline that has no SAE of its own."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z


def collect_baselines(
    baselines: Mapping[str, Baseline], data: Collected, cfg: PathosaeConfig
) -> tuple[dict[str, Collected], dict[str, dict[str, str]]]:
    """The same pass over the same slides (and the same sampled tiles) for each baseline.

    A baseline that lacks a slide, or whose tiles differ from the main features', is left out
    with the reason (its figures would not be comparable).
    """
    out, skipped = {}, {}
    for role, baseline in baselines.items():
        try:
            got = collect(baseline.store, baseline.sae or _Identity(), data.slides, cfg, "skip")
        except PathosaeError as exc:
            skipped[role] = {"features": baseline.features, "status": "skipped", "reason": str(exc)}
            continue
        same = (len(got.slides) == len(data.slides) and np.array_equal(got.n_tiles, data.n_tiles)
                and np.array_equal(got.tile_slide, data.tile_slide))
        if not same:
            skipped[role] = {"features": baseline.features, "status": "skipped",
                             "reason": "its slides or tiles differ from the main features; "
                                       "rerun `pathosae embed`"}
            continue
        out[role] = got
    return out, skipped


def baseline_representations(
    extra: Mapping[str, Collected], baselines: Mapping[str, Baseline], level: str
) -> dict[str, np.ndarray]:
    """embedding_<role> for every baseline; sae_codes_<role> and sae_residual_<role> with an SAE
    (slide level). At tile level (PathoROB, and tile probes) only the embeddings."""
    reps: dict[str, np.ndarray] = {}
    for role, data in extra.items():
        sae = baselines[role].sae
        if level == "tile":  # PathoROB: the baseline embeddings (tile-level probes are costly)
            reps[f"embedding_{role}"] = data.tile_features
            continue
        found = representations(data, sae or _Identity(), level)
        reps[f"embedding_{role}"] = found["embedding"]
        if sae is not None:
            reps[f"sae_codes_{role}"] = found["sae_codes"]
            reps[f"sae_residual_{role}"] = found["sae_residual"]
    return reps


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
    for name, source in nulls.items():
        null = permuted_null_repeats(source.codes, source.slides, variables, covariates, kinds,
                                     alpha, ccfg.seed, correlation=ccfg.correlation,
                                     max_permutations=ccfg.scan_permutations)
        frames.append(null.assign(control="permuted_null", representation=name))
        summary["permuted_null"][name] = summarise_null(null, alpha)
    return pd.concat(frames, ignore_index=True), summary


def _counts(table: pd.DataFrame) -> dict[str, dict[str, int]]:
    return {str(r.variable): {"units_flagged": int(r.n_units_flagged), "fdr_pass": int(r.n_fdr_pass),
                              "tests": int(r.n_tests)} for r in table.itertuples()}


def _pathorob_summary(pathorob: pd.DataFrame) -> dict[str, dict[str, float]]:
    if pathorob.empty:
        return {}
    out: dict[str, dict[str, float]] = {}
    for row in pathorob.itertuples():
        out[f"{row.confounder}/{row.representation}"] = {
            "robustness_index": round(float(row.robustness_index), 4),
            "confounder_auroc": round(float(row.confounder_auroc), 4),
        }
    return out


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


def _codes_and_recon(sae: CodeModel, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    codes, recon = [], []
    with torch.no_grad():
        for start in range(0, len(features), _ENCODE_BATCH):
            x = torch.as_tensor(np.asarray(features[start:start + _ENCODE_BATCH], np.float32))
            z = sae.encode(x)
            codes.append(z.numpy())
            recon.append(sae.decode(z).numpy())
    return np.concatenate(codes), np.concatenate(recon)


def collect(
    store: SlideFeatures, sae: CodeModel, cohort: pd.DataFrame, cfg: PathosaeConfig,
    on_error: OnError,
) -> Collected:
    """One pass over the slides: per-slide summaries and a capped, seeded tile sample."""
    ccfg = cfg.confounders
    available = set(store.slide_ids)
    missing = [s for s in cohort["slide_id"].astype(str) if s not in available]
    if missing and on_error == "stop":
        raise StageError(
            f"{len(missing)} cohort slide(s) have no features, e.g. {missing[:3]}. Fix: run "
            "`pathosae embed` for them, or pass --on-error skip to leave them out."
        )
    slides = cohort[cohort["slide_id"].astype(str).isin(available)].reset_index(drop=True)
    if len(slides) < 3:
        raise StageError(f"only {len(slides)} slide(s) have features; the scan needs at least 3.")
    per_slide = max(1, min(ccfg.confirm_tiles_per_slide, ccfg.max_tiles // len(slides)))
    rng = np.random.default_rng(ccfg.seed)
    sums: dict[str, list[np.ndarray]] = {a: [] for a in ccfg.aggregations}
    emb, res, counts, tile_x, tile_s = [], [], [], [], []
    for i, sid in enumerate(slides["slide_id"].astype(str)):
        features = np.asarray(store.load(sid)[0], dtype=np.float32)
        if features.ndim != 2 or len(features) == 0 or not np.isfinite(features).all():
            raise PathosaeError(
                f"features of slide {sid!r} are empty or hold NaN/inf (shape {features.shape}). "
                "Fix: re-embed that slide (`pathosae embed`)."
            )
        codes, recon = _codes_and_recon(sae, features)
        for name, vec in summarise_tiles(codes, ccfg.aggregations, ccfg.quantile,
                                         ccfg.active_threshold).items():
            sums[name].append(vec.astype(np.float32))
        emb.append(features.mean(axis=0))
        res.append((features - recon).mean(axis=0))
        counts.append(len(features))
        pick = np.sort(rng.choice(len(features), min(per_slide, len(features)), replace=False))
        tile_x.append(features[pick])
        tile_s.append(np.full(len(pick), i))
    return Collected(slides, {k: np.vstack(v) for k, v in sums.items()}, np.vstack(emb),
                     np.vstack(res), np.asarray(counts), np.vstack(tile_x),
                     np.concatenate(tile_s), missing)


def _patient_level(
    data: Collected, columns: list[str]
) -> tuple[pd.DataFrame, dict[str, np.ndarray]] | None:
    """Tile-weighted patient summaries (exact for mean and frac_active; the quantile is the
    tile-weighted mean of the slides' quantiles) and the patient metadata."""
    if not patients_with_several_slides(data.slides):
        return None
    meta = patient_metadata(data.slides, columns)
    index = pd.Index(meta["patient_id"])
    rows = index.get_indexer(data.slides["patient_id"])
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


def _slides_tested(meta: pd.DataFrame, covariates: list[str]) -> dict[str, int]:
    out = {}
    for var in meta.columns:
        held = [c for c in covariates if c != var and c in meta.columns]
        known = meta[[var, *held]].notna().all(axis=1)
        out[var] = int(meta.loc[known, "n_slides"].sum())
    return out


def confirm_hits(
    associations: pd.DataFrame, data: Collected, store: SlideFeatures, sae: CodeModel,
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
    tile_codes = _codes_and_recon(sae, data.tile_features)[0][:, units]
    tiles = data.slides.iloc[data.tile_slide].reset_index(drop=True)
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


def representations(data: Collected, sae: CodeModel, level: str) -> dict[str, np.ndarray]:
    """Raw embeddings, SAE codes and SAE residual, per slide (means) or per sampled tile."""
    if level == "slide":
        return {"embedding": data.embedding_mean, "sae_codes": data.codes["mean"]
                if "mean" in data.codes else next(iter(data.codes.values())),
                "sae_residual": data.residual_mean}
    codes, recon = _codes_and_recon(sae, data.tile_features)
    return {"embedding": data.tile_features, "sae_codes": codes,
            "sae_residual": data.tile_features - recon}


def metadata_for(data: Collected, level: str) -> pd.DataFrame:
    if level == "slide":
        return data.slides
    return data.slides.iloc[data.tile_slide].reset_index(drop=True)


def combat_rows(data: Collected, categorical: list[str], cfg: PathosaeConfig) -> pd.DataFrame:
    """Leakage of raw vs ComBat-harmonised slide embeddings on the held-out (non-train) slides."""
    label = cfg.cohort.label
    slides = data.slides
    if not cfg.confounders.combat or "split" not in slides or label not in slides:
        return pd.DataFrame()
    is_train = (slides["split"] == "train").to_numpy()
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
                              n_folds=cfg.confounders.cv_folds, seed=cfg.confounders.seed)
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
    meta = data.slides.iloc[data.tile_slide].reset_index(drop=True)
    codes = _codes_and_recon(sae, data.tile_features)[0]
    reps = {"embedding": data.tile_features, "sae_codes": codes, **(extra or {})}
    confs = [v for v in categorical if v != label]
    return pathorob_table(reps, meta, label, confs, cfg.confounders.k_neighbors,
                          cfg.confounders.cv_folds, cfg.confounders.seed)


def save_all_directions(
    path: Path, data: Collected, sae: CodeModel, associations: pd.DataFrame,
    categorical: list[str], cfg: PathosaeConfig, key: str, sae_name: str,
) -> None:
    """LEACE and mean differences (embedding space), probe weights and flagged units (codes)."""
    label = cfg.cohort.label
    tiles = data.slides.iloc[data.tile_slide].reset_index(drop=True)
    codes = data.codes["mean"] if "mean" in data.codes else next(iter(data.codes.values()))
    tensors: dict[str, np.ndarray] = {}
    described: dict[str, dict[str, object]] = {}
    for variable in (v for v in categorical if v != label):
        known = tiles[variable].notna().to_numpy()
        values = tiles.loc[known, variable].astype(str).to_numpy()
        if len(np.unique(values)) < 2:
            continue
        eraser = directions.fit_leace(data.tile_features[known], values)
        for part, array in directions.eraser_arrays(eraser).items():
            tensors[f"{variable}.leace.{part}"] = array
        condition = tiles.loc[known, label].to_numpy() if label in tiles else None
        mean_diff, levels = directions.mean_difference_directions(
            data.tile_features[known], values, condition)
        tensors[f"{variable}.mean_difference"] = mean_diff
        slide_known = data.slides[variable].notna().to_numpy()
        weights, classes = directions.probe_weights(
            codes[slide_known], data.slides.loc[slide_known, variable].to_numpy(), cfg.confounders.seed)
        tensors[f"{variable}.sae_probe"] = weights
        flagged = associations[(associations["variable"] == variable) & associations["flagged"]]
        tensors[f"{variable}.flagged_units"] = np.unique(flagged["unit"].to_numpy(np.int64))
        described[variable] = {
            "levels": levels,
            "probe_classes": classes,
            "leace": "embedding space: x' = x - ((x - bias) @ proj_right.T) @ proj_left.T",
            "mean_difference": "embedding space, unit-norm, one row per level (level minus the "
                               f"others) within {label!r} classes",
            "sae_probe": "SAE-code space: logistic-probe weights in code units "
                         "(one row if binary: the second class)",
            "flagged_units": f"SAE units with q <= {cfg.confounders.fdr_alpha} in any summary",
        }
    description = {"settings_hash": key, "sae": sae_name, "variables": described,
                   "fitted_on": "sampled tiles (embedding space), slide means (code space)"}
    directions.save_directions(path, tensors, description)


def summarise(
    associations: pd.DataFrame, leakage: pd.DataFrame, data: Collected, key: str,
    plotted: dict[str, bool], alpha: float,
) -> dict[str, Any]:
    flagged = associations[associations["flagged"]]
    per_variable = {str(v): int(g["unit"].nunique()) for v, g in flagged.groupby("variable")}
    auroc = {}
    if not leakage.empty:
        main = leakage[(leakage["subset"] == "all") & (leakage["scheme"] == "patient_folds")]
        auroc = {f"{r.variable}/{r.representation}": round(float(r.auroc), 4)
                 for r in main.itertuples()}
    return {
        "settings_hash": key,
        "n_slides": len(data.slides),
        "n_units": int(next(iter(data.codes.values())).shape[1]),
        "n_sampled_tiles": len(data.tile_features),
        "skipped_slides": data.missing,
        "fdr_alpha": alpha,
        "flagged_units": per_variable,
        "probe_auroc": auroc,
        "plots": [f"{k}.png" for k, ok in plotted.items() if ok],
    }
