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
from pathosae.sae.metrics import encode_rows, evaluate_sae
from pathosae.sae.training import RowView, train_sae
from pathosae.schema import SLIDE_ID, SPLIT
from pathosae.tiling.reader import load_tiles

HELD_OUT_SPLITS = ("val", "test")
COVERAGE_ROWS = 20_000


def split_data(store: Any, features_name: str) -> dict[str, Any]:
    matrix = store.matrix()
    index = store.index()
    if SPLIT not in index.columns:
        raise StageError(
            f"the feature index of {features_name} has no 'split' column. Fix: rerun "
            "`pathosae cohort` so every slide has a train/val/test split."
        )
    split = index[SPLIT].astype(str).to_numpy()
    train_rows = np.flatnonzero(split == "train")
    held_rows = np.flatnonzero(np.isin(split, HELD_OUT_SPLITS))
    if len(train_rows) < 2 or len(held_rows) < 2:
        raise StageError(
            f"features {features_name}: {len(train_rows)} train and {len(held_rows)} held-out "
            "tiles. Fix: the cohort needs slides in the train split and in val or test."
        )
    fingerprint = settings_hash({
        "matrix": store.fingerprint(), "shape": list(matrix.shape),
        SPLIT: settings_hash(index[[SLIDE_ID, SPLIT]].drop_duplicates().values.tolist()),
    })
    return {"matrix": matrix, "index": index, "train": train_rows, "held": held_rows,
            "fingerprint": fingerprint}


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
    matrix, index = data["matrix"], data["index"]
    train_x, held_x = RowView(matrix, data["train"]), RowView(matrix, data["held"])
    sae = train_sae(train_x, sae_cfg, architecture=name, progress=_bar(f"sae {name}"))
    held = evaluate_sae(sae, held_x, sae_cfg.eval_max_rows, dense_threshold=sae_cfg.dense_threshold)
    metrics: dict[str, Any] = {
        "_model": sae, "architecture": name, "d_in": sae.d_in, "d_sae": sae.d_sae,
        "train_rows": len(data["train"]), "held_out_rows": len(data["held"]),
        "held_out": held, "training": sae.training_log, "controls": {},
    }
    ctl = sae_cfg.controls
    held_index = index.iloc[data["held"]].reset_index(drop=True)
    concepts = _concepts(run, cfg, held_index) if ctl.concept_coverage else {}
    if ctl.concept_coverage:
        metrics["concept_coverage"] = _coverage(sae, held_x, held_index, concepts, cfg.seed)
    if ctl.seed_stability:
        metrics["controls"]["seed_stability"] = _timed(_seed_stability, sae, train_x, sae_cfg, name)
    if ctl.permuted:
        metrics["controls"]["permuted"] = _timed(
            _permutation_controls, data, sae_cfg, name, concepts, held_index, cfg.seed
        )
    if ctl.random_encoder:
        metrics["controls"]["random_encoder"] = _timed(
            _random_encoder_control, run, cfg, name, concepts, held_index
        )
    return metrics


def _timed(fn: Any, *args: Any) -> dict[str, Any]:
    started = time.perf_counter()
    result = fn(*args)
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


def _seed_stability(sae: SAE, train_x: RowView, sae_cfg: SAEConfig, name: str) -> dict[str, Any]:
    other = train_sae(train_x, sae_cfg, architecture=name, seed=sae_cfg.seed + 1,
                      progress=_bar(f"sae {name}: second seed"))
    return {"seeds": [sae_cfg.seed, sae_cfg.seed + 1],
            **controls.match_decoders(sae.W_dec, other.W_dec)}


def _sample_rows(rows: np.ndarray, limit: int, seed: int) -> np.ndarray:
    if len(rows) <= limit:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, size=limit, replace=False))


def _permutation_controls(
    data: dict[str, Any], sae_cfg: SAEConfig, name: str, concepts: dict[str, np.ndarray],
    held_index: pd.DataFrame, seed: int,
) -> dict[str, Any]:
    """SAEs on per-dimension permutation nulls (between and within slides); see controls.py."""
    matrix, index = data["matrix"], data["index"]
    train_rows = _sample_rows(data["train"], sae_cfg.controls.max_rows, seed)
    held_rows = _sample_rows(data["held"], min(sae_cfg.eval_max_rows, sae_cfg.controls.max_rows),
                             seed + 1)
    train_x = np.asarray(matrix[train_rows], dtype=np.float32)
    held_x = np.asarray(matrix[held_rows], dtype=np.float32)
    slides = index[SLIDE_ID].astype(str).to_numpy()
    held_pos = np.searchsorted(data["held"], held_rows)
    results: dict[str, Any] = {
        "what": "each feature dimension permuted independently; 'between': over all tiles, "
                "'within': among the tiles of each slide (slide-level shifts survive)",
    }
    for mode, groups in (("between", None), ("within", slides)):
        train_groups = None if groups is None else groups[train_rows]
        held_groups = None if groups is None else groups[held_rows]
        null_train = controls.permute_per_dimension(train_x, seed + 11, train_groups)
        null_held = controls.permute_per_dimension(held_x, seed + 12, held_groups)
        null_sae = train_sae(null_train, sae_cfg, architecture=name,
                             progress=_bar(f"sae {name}: permuted null"))
        entry = {"held_out": evaluate_sae(null_sae, null_held,
                                          dense_threshold=sae_cfg.dense_threshold)}
        if concepts:
            sub = {k: v[held_pos] for k, v in concepts.items()}
            entry["concept_coverage"] = _coverage(
                null_sae, null_held, held_index.iloc[held_pos].reset_index(drop=True), sub, seed
            )
        results[mode] = entry
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
        data = split_data(FeatureStore(run, twin), twin)
    except PathosaeError as exc:
        return {"status": "unavailable", "reason": str(exc)}
    train_x, held_x = RowView(data["matrix"], data["train"]), RowView(data["matrix"], data["held"])
    twin_sae = train_sae(train_x, cfg.sae, architecture=name,
                         progress=_bar(f"sae {name}: random encoder"))
    entry: dict[str, Any] = {
        "_model": twin_sae,  # saved beside the SAE (RANDOM_ENCODER_SAE), not in metrics.json
        "status": "done", "features": twin,
        "held_out": evaluate_sae(twin_sae, held_x, cfg.sae.eval_max_rows,
                                 dense_threshold=cfg.sae.dense_threshold),
    }
    twin_held = data["index"].iloc[data["held"]].reset_index(drop=True)
    same_tiles = (len(twin_held) == len(held_index)) and bool(
        (twin_held[[SLIDE_ID, "tile"]].to_numpy() == held_index[[SLIDE_ID, "tile"]].to_numpy())
        .all()
    )
    if concepts and same_tiles:
        entry["concept_coverage"] = _coverage(twin_sae, held_x, twin_held, concepts, cfg.seed)
    return entry


def _coverage(
    sae: SAE, x: Any, index: pd.DataFrame, concepts: dict[str, np.ndarray], seed: int,
) -> dict[str, Any]:
    if not concepts:
        return {"status": "unavailable", "reason": "no concept labels for these tiles"}
    rows = _sample_rows(np.arange(len(index)), COVERAGE_ROWS, seed)
    subset = RowView(x.base, x.row_ids[rows]) if isinstance(x, RowView) else x[rows]
    codes = encode_rows(sae, subset)
    groups = index[SLIDE_ID].astype(str).to_numpy()[rows]
    chosen = {k: v[rows] for k, v in concepts.items()}
    return controls.concept_coverage(codes.numpy(), chosen, groups, seed)


def _concepts(run: RunDir, cfg: PathosaeConfig, held_index: pd.DataFrame) -> dict[str, np.ndarray]:
    """Binary concepts per held-out tile: confounder and label values, synthetic phenotypes."""
    columns = [*cfg.cohort.confounders, *([cfg.cohort.label] if cfg.cohort.label else [])]
    concepts = controls.concepts_from_metadata(held_index, columns)
    if cfg.ground_truth is not None:
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


