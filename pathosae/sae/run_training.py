"""Training an SAE on a run's feature store: the tile split, held-out metrics and the controls.

Training uses the tiles of train-split slides; metrics use held-out slides (val and test, split by
patient in the cohort stage). The controls (a second seed, permutation nulls, the random-weights
encoder twin, concept coverage) are the SAE stage's, each timed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pathosae.config import PathosaeConfig, SAEConfig
from pathosae.errors import PathosaeError, StageError
from pathosae.features import FeatureStore
from pathosae.io import settings_hash
from pathosae.run import RunDir
from pathosae.sae import controls
from pathosae.sae.base import SAE
from pathosae.sae.conditional import ConditionedTopKSAE
from pathosae.sae.levels import Conditions
from pathosae.sae.metrics import encode_rows, evaluate_sae
from pathosae.sae.registry import get_architecture
from pathosae.sae.training import RowView, train_sae
from pathosae.sampling import seeded_subset
from pathosae.schema import SLIDE_ID, SPLIT
from pathosae.tiling.reader import load_tiles

HELD_OUT_SPLITS = ("val", "test")
COVERAGE_ROWS = 10_000
"""Held-out tiles (a seeded draw) whose codes give each concept's best-unit AUROC: ranks need
every row of a unit at once, so this many rows × d_sae floats are held (0.12 GB at 3,072 units);
20,000 put the 600-slide SAE stage's peak there."""


def split_data(store: FeatureStore, features_name: str, sae_cfg: SAEConfig, seed: int) -> dict[str, Any]:
    """The SAE's training rows (read into memory) and held-out rows (read lazily), up to caps.

    Train rows are the tiles of train-split slides (at most ``sae.max_train_rows`` and at most
    ``sae.n_samples``, a seeded uniform draw, read slide by slide from the store): training
    draws random minibatches, so they are held. Held-out rows are those of val and test slides
    (at most ``sae.eval_max_rows``), a ``RowView`` of the store: every use reads them in
    chunks (metrics, coverage) or takes its own capped copy (the permutation nulls). Below the
    caps every row is kept in store order, so a small cohort trains on exactly its tiles.
    Memory is bounded by the caps, not by the cohort.
    """
    try:
        split = store.slide_values(SPLIT).astype(str)
    except StageError:
        raise StageError(
            f"the cohort of {features_name} has no 'split' column. Fix: rerun "
            "`pathosae cohort` so every slide has a train/val/test split."
        ) from None
    offsets = store.offsets()
    train_rows = _rows_of_slides(offsets, split == "train")
    held_rows = _rows_of_slides(offsets, np.isin(split, HELD_OUT_SPLITS))
    if len(train_rows) < 2 or len(held_rows) < 2:
        raise StageError(
            f"features {features_name}: {len(train_rows)} train and {len(held_rows)} held-out "
            "tiles. Fix: the cohort needs slides in the train split and in val or test."
        )
    # More distinct rows than the SAE's training samples would never be seen: hold no more.
    train = seeded_subset(train_rows, min(sae_cfg.max_train_rows, sae_cfg.n_samples), seed)
    held = seeded_subset(held_rows, sae_cfg.eval_max_rows, seed + 1)
    matrix = store.matrix()
    fingerprint = settings_hash({
        "matrix": store.fingerprint(), "shape": list(matrix.shape),
        SPLIT: settings_hash([[s, v] for s, v in zip(store.slide_ids, split, strict=True)]),
    })
    held_index, train_index = store.tile_frame(held), store.tile_frame(train)
    return {"train_x": matrix[train], "held_x": RowView(matrix, held), "held_index": held_index,
            "train_index": train_index,
            "train_slides": train_index[SLIDE_ID].astype(str).to_numpy(),
            "n_train_rows": len(train_rows), "n_held_rows": len(held_rows),
            "fingerprint": fingerprint}


def _rows_of_slides(offsets: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Global rows of the slides where ``keep`` is true (slides in store order)."""
    parts = [np.arange(offsets[i], offsets[i + 1]) for i in np.flatnonzero(keep)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def twin_name(cfg: PathosaeConfig) -> str:
    return f"{cfg.sae.encoder}_random" if cfg.sae.encoder else cfg.embedding.random_twin_name()


def _bar(desc: str) -> Callable[[int, int, dict[str, float]], None]:
    """A progress bar (steps and the summed loss) for one SAE training, closed at its last step."""
    bar = tqdm(desc=desc, unit="step", leave=False, mininterval=0.5)

    def update(step: int, total: int, losses: dict[str, float]) -> None:
        bar.total = total
        bar.update(step - bar.n)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses.values()):.4g}", refresh=False)
        if step >= total:
            bar.close()

    return update


def train_and_evaluate(run: RunDir, cfg: PathosaeConfig, name: str, data: dict[str, Any]) -> dict[str, Any]:
    sae_cfg = cfg.sae
    train_x, held_x = data["train_x"], data["held_x"]
    told = supervision(cfg, name, data["train_index"])
    sae = train_sae(train_x, sae_cfg, architecture=name, progress=_bar(f"sae {name}"), **told)
    held_codes = held_conditions(sae, data["held_index"])
    held = evaluate_sae(sae, held_x, sae_cfg.eval_max_rows, dense_threshold=sae_cfg.dense_threshold,
                        conditions=held_codes)
    metrics: dict[str, Any] = {
        "_model": sae, "architecture": name, "d_in": sae.d_in, "d_sae": sae.d_sae,
        "train_rows": len(train_x), "held_out_rows": len(held_x),
        "train_rows_available": data["n_train_rows"], "held_out_rows_available": data["n_held_rows"],
        "held_out": held, "training": sae.training_log, "controls": {},
    }
    if isinstance(sae, ConditionedTopKSAE):  # held-out levels unseen in training: the mean
        metrics["unseen_levels"] = sae.unseen_levels(data["held_index"])
    ctl = sae_cfg.controls
    held_index = data["held_index"]
    concepts = _concepts(run, cfg, held_index) if ctl.concept_coverage else {}
    if ctl.concept_coverage:
        metrics["concept_coverage"] = _coverage(sae, held_x, held_index, concepts, cfg.seed,
                                                held_codes)
    if ctl.seed_stability:
        metrics["controls"]["seed_stability"] = _timed(_seed_stability, sae, train_x, sae_cfg,
                                                       name, told)
    if ctl.permuted:
        metrics["controls"]["permuted"] = _timed(
            _permutation_controls, data, sae_cfg, name, concepts, held_index, cfg.seed, told
        )
    if ctl.random_encoder:
        metrics["controls"]["random_encoder"] = _timed(
            _random_encoder_control, run, cfg, name, concepts, held_index
        )
    return metrics


def supervision(cfg: PathosaeConfig, name: str, train_index: pd.DataFrame) -> dict[str, Any]:
    """What a confounder-aware SAE is told about its training rows: the confounder levels
    (vocabulary from the train split only) and the label; nothing for the other SAEs."""
    if not get_architecture(name).needs_conditions:
        return {}
    columns = list(cfg.sae.confounder_columns or cfg.cohort.confounders)
    missing = [c for c in columns if c not in train_index.columns]
    if not columns or missing:
        raise StageError(
            f"SAE {name!r} is trained with the cohort's confounder columns, but "
            f"{missing or 'none'} are in the cohort. Fix: set cohort.confounders (or "
            "sae.confounder_columns) to manifest columns."
        )
    told: dict[str, Any] = {"conditions": Conditions.from_frame(train_index, columns)}
    label = cfg.cohort.label
    if label is not None and label in train_index.columns:
        told["labels"] = np.unique(train_index[label].astype(str), return_inverse=True)[1]
    return told


def held_conditions(sae: SAE, index: pd.DataFrame) -> np.ndarray | None:
    """Level codes of held-out rows in the SAE's vocabulary (-1: a level not seen in training)."""
    return sae.level_codes(index) if isinstance(sae, ConditionedTopKSAE) else None


def _subset_told(told: dict[str, Any], rows: np.ndarray) -> dict[str, Any]:
    if not told:
        return {}
    out: dict[str, Any] = {"conditions": Conditions(told["conditions"].codes[rows],
                                                    told["conditions"].levels)}
    if "labels" in told:
        out["labels"] = told["labels"][rows]
    return out


def _timed(fn: Any, *args: Any) -> dict[str, Any]:
    started = time.perf_counter()
    result = fn(*args)
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


def _seed_stability(sae: SAE, train_x: np.ndarray, sae_cfg: SAEConfig, name: str,
                    told: dict[str, Any]) -> dict[str, Any]:
    """More seeds of the same SAE (full training each), matched to the main one.

    The summary keys compare the main seed with the next by the Hungarian matching (as before);
    ``_unit_cosine`` (popped by the stage into ``stability.parquet``) is, per unit, the smallest
    cosine over all other seeds under ``controls.stable_match``: a unit is stable when every seed
    has a match at ``stable_cosine`` or more.
    """
    ctl = sae_cfg.controls
    seeds = [sae_cfg.seed + i for i in range(ctl.stability_seeds)]
    others = [train_sae(train_x, sae_cfg, architecture=name, seed=seed,
                        progress=_bar(f"sae {name}: seed {seed}"), **told) for seed in seeds[1:]]
    hungarian = np.stack([controls.matched_cosines(o.W_dec, sae.W_dec) for o in others])
    per_seed = np.stack([controls.seed_cosines(o.W_dec, sae.W_dec, ctl.stable_match)
                         for o in others])
    unit_cosine = per_seed.min(axis=0)
    return {"seeds": seeds, **controls.match_decoders(sae.W_dec, others[0].W_dec),
            "mean_cosine_per_seed": [float(c.mean()) for c in hungarian],
            "stable_cosine": ctl.stable_cosine, "stable_match": ctl.stable_match,
            "n_stable_units": int((unit_cosine >= ctl.stable_cosine).sum()),
            "_unit_cosine": unit_cosine}


def control_samples(sae_cfg: SAEConfig) -> SAEConfig:
    """The SAE settings of a control: its training samples capped by ``controls.max_samples``."""
    cap = sae_cfg.controls.max_samples
    if cap is None or cap >= sae_cfg.n_samples:
        return sae_cfg
    return sae_cfg.model_copy(update={"n_samples": cap})


def _permutation_controls(
    data: dict[str, Any], sae_cfg: SAEConfig, name: str, concepts: dict[str, np.ndarray],
    held_index: pd.DataFrame, seed: int, told: dict[str, Any],
) -> dict[str, Any]:
    """SAEs on per-dimension permutation nulls (between and within slides); see controls.py."""
    n_samples = control_samples(sae_cfg)
    train_pos = seeded_subset(np.arange(len(data["train_x"])), sae_cfg.controls.max_rows, seed)
    held_pos = seeded_subset(np.arange(len(data["held_x"])),
                            min(sae_cfg.eval_max_rows, sae_cfg.controls.max_rows), seed + 1)
    train_slides = data["train_slides"][train_pos]
    held_slides = held_index[SLIDE_ID].astype(str).to_numpy()[held_pos]
    results: dict[str, Any] = {
        "what": "each feature dimension permuted independently; 'between': over all tiles, "
                "'within': among the tiles of each slide (slide-level shifts survive)",
    }
    for mode, within in (("between", False), ("within", True)):
        train_groups = train_slides if within else None
        held_groups = held_slides if within else None
        # Indexing copies: each mode permutes its own copy of the capped rows in place, and
        # holds one copy at a time (each draw has its own seed, so the order changes nothing).
        null_train = controls.permute_per_dimension(
            np.asarray(data["train_x"][train_pos]), seed + 11, train_groups, overwrite=True)
        null_sae = train_sae(null_train, n_samples, architecture=name,
                             progress=_bar(f"sae {name}: permuted null"),
                             **_subset_told(told, train_pos))
        del null_train
        null_held = controls.permute_per_dimension(
            np.asarray(data["held_x"][held_pos]), seed + 12, held_groups, overwrite=True)
        null_codes = held_conditions(null_sae, held_index.iloc[held_pos])
        entry = {"held_out": evaluate_sae(null_sae, null_held, conditions=null_codes,
                                          dense_threshold=sae_cfg.dense_threshold)}
        if concepts:
            sub = {k: v[held_pos] for k, v in concepts.items()}
            entry["concept_coverage"] = _coverage(
                null_sae, null_held, held_index.iloc[held_pos].reset_index(drop=True), sub, seed,
                null_codes,
            )
        results[mode] = entry
        del null_held  # before the next mode's copies
    return results


def _random_encoder_control(
    run: RunDir, cfg: PathosaeConfig, name: str, concepts: dict[str, np.ndarray],
    held_index: pd.DataFrame,
) -> dict[str, Any]:
    """The same SAE on the random-weights twin's features, when the embedding stage made them."""
    twin = twin_name(cfg)
    if not run.features_dir(twin).is_dir():
        return {"status": "unavailable",
                "reason": f"no features of the random-weights twin in {run.features_dir(twin)}; "
                          "embed once with embedding.random_weights: true to get this control"}
    try:
        data = split_data(FeatureStore(run, twin), twin, cfg.sae, cfg.seed)
    except PathosaeError as exc:
        return {"status": "unavailable", "reason": str(exc)}
    train_x, held_x = data["train_x"], data["held_x"]
    twin_sae = train_sae(train_x, control_samples(cfg.sae), architecture=name,
                         progress=_bar(f"sae {name}: random encoder"),
                         **supervision(cfg, name, data["train_index"]))
    twin_codes = held_conditions(twin_sae, data["held_index"])
    entry: dict[str, Any] = {
        "_model": twin_sae,  # saved beside the SAE (RANDOM_ENCODER_SAE), not in metrics.json
        "status": "done", "features": twin,
        "held_out": evaluate_sae(twin_sae, held_x, cfg.sae.eval_max_rows, conditions=twin_codes,
                                 dense_threshold=cfg.sae.dense_threshold),
    }
    twin_held = data["held_index"]
    same_tiles = (len(twin_held) == len(held_index)) and bool(
        (twin_held[[SLIDE_ID, "tile"]].to_numpy() == held_index[[SLIDE_ID, "tile"]].to_numpy())
        .all()
    )
    if concepts and same_tiles:
        entry["concept_coverage"] = _coverage(twin_sae, held_x, twin_held, concepts, cfg.seed,
                                              twin_codes)
    return entry


def _coverage(
    sae: SAE, x: Any, index: pd.DataFrame, concepts: dict[str, np.ndarray], seed: int,
    conditions: np.ndarray | None = None,
) -> dict[str, Any]:
    if not concepts:
        return {"status": "unavailable", "reason": "no concept labels for these tiles"}
    rows = seeded_subset(np.arange(len(index)), COVERAGE_ROWS, seed)
    codes = encode_rows(sae, x[rows], conditions=None if conditions is None else conditions[rows])
    groups = index[SLIDE_ID].astype(str).to_numpy()[rows]
    chosen = {k: v[rows] for k, v in concepts.items()}
    # The codes are ours alone: their ranks may take their place (one matrix, not three).
    return controls.concept_coverage(codes.numpy(), chosen, groups, seed, overwrite=True)


def _concepts(run: RunDir, cfg: PathosaeConfig, held_index: pd.DataFrame) -> dict[str, np.ndarray]:
    """Binary concepts per held-out tile: confounder and label values, synthetic phenotypes."""
    columns = [*cfg.cohort.confounders, *([cfg.cohort.label] if cfg.cohort.label else [])]
    concepts = controls.concepts_from_metadata(held_index, columns)
    if cfg.ground_truth is not None:
        # Only a synthetic cohort's run gets here (the config names its ground truth folder).
        from pathosae.synth.feature_groundtruth import is_feature_truth

        if is_feature_truth(cfg.ground_truth):
            from pathosae.synth.features import feature_concepts

            concepts.update(feature_concepts(cfg.ground_truth, held_index))
        else:
            concepts.update(_phenotype_concepts(run, held_index, cfg.ground_truth))
    return concepts


def _phenotype_concepts(run: RunDir, index: pd.DataFrame, gt_dir: Path) -> dict[str, np.ndarray]:
    """``phenotype=<name>`` (tile mostly that phenotype) from a synthetic cohort's ground truth."""
    # Only a synthetic cohort's run gets here (the config names its ground truth folder).
    from pathosae.synth.groundtruth import tile_phenotype_composition

    parts = []
    for slide_id, group in index.groupby(SLIDE_ID, sort=False):
        _, geometry = load_tiles(run, str(slide_id))
        comp = tile_phenotype_composition(
            gt_dir, str(slide_id), group[["x", "y"]].to_numpy(), geometry.tile_size_level0
        )
        comp.index = group.index
        parts.append(comp)
    comp = pd.concat(parts).loc[index.index]
    names = [c for c in comp.columns if c not in ("x", "y", "tissue_fraction", "dominant")]
    return {
        f"phenotype={n}": ((comp["dominant"] == n) & (comp[n].fillna(0) >= 0.5)).to_numpy()
        for n in names
    }


