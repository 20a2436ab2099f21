"""The ``sae`` pipeline stage: train each configured SAE on the run's features, evaluate, control.

Training and evaluation live in :mod:`pathosae.sae.run_training`. Each ``RUN/sae/<name>/``
folder is replaced atomically and skipped when its settings and inputs hash is unchanged.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathosae.config import PathosaeConfig
from pathosae.errors import PathosaeError
from pathosae.features import FeatureStore
from pathosae.inputs import analysed_features
from pathosae.io import read_json, settings_hash, write_parquet_atomic
from pathosae.run import RunDir
from pathosae.sae.base import SAE
from pathosae.sae.io import save_sae
from pathosae.sae.registry import get_architecture
from pathosae.sae.run_training import split_data, train_and_evaluate, twin_name
from pathosae.schema import RANDOM_ENCODER_SAE, SAE_CONFIG, SETTINGS_HASH, UNIT_STABILITY
from pathosae.types import OnError


def run_stage(run: RunDir, cfg: PathosaeConfig, on_error: OnError) -> dict[str, Any]:
    """Pipeline entry (``pathosae sae`` / ``pathosae run``); returns a JSON-able summary."""
    del on_error  # the features were validated by the stages that wrote them
    sae_cfg = cfg.sae
    for name in sae_cfg.models:
        get_architecture(name)  # unknown names fail before any work
    features_name = analysed_features(cfg)
    store = FeatureStore(run, features_name)
    data = split_data(store, features_name, sae_cfg, cfg.seed)
    summary: dict[str, Any] = {"features": features_name, "models": {}}
    for name in sae_cfg.models:
        out_dir = run.sae_dir(name)
        digest = settings_hash({"sae": sae_cfg.model_dump(mode="json"), "name": name,
                                "inputs": data["fingerprint"], "seed": cfg.seed,
                                "random_twin": _twin_fingerprint(run, cfg),
                                "ground_truth": str(cfg.ground_truth) if cfg.ground_truth else None})
        if _is_current(out_dir, digest):
            summary["models"][name] = {"status": "skipped (unchanged)", SETTINGS_HASH: digest}
            continue
        metrics = train_and_evaluate(run, cfg, name, data)
        metrics[SETTINGS_HASH] = digest
        _write_model_dir(out_dir, metrics, digest, features_name)
        summary["models"][name] = {
            "status": "trained", SETTINGS_HASH: digest,
            **{k: metrics["held_out"][k] for k in ("fvu", "l0", "dead_fraction")},
            "seconds": _costs(metrics),
        }
    return summary


def _costs(metrics: dict[str, Any]) -> dict[str, float]:
    """Seconds of the main SAE's training and of each control, for the stage summary."""
    costs = {"main": float(metrics.get("training", {}).get("seconds", 0.0))}
    for control, entry in metrics.get("controls", {}).items():
        if isinstance(entry, dict) and "seconds" in entry:
            costs[control] = float(entry["seconds"])
    return costs


def _twin_fingerprint(run: RunDir, cfg: PathosaeConfig) -> str | None:
    """The random-weights twin's features, when its control is on and they exist (else None)."""
    twin = twin_name(cfg)
    if not cfg.sae.controls.random_encoder or not run.features_dir(twin).is_dir():
        return None
    try:
        return FeatureStore(run, twin).fingerprint()
    except (PathosaeError, OSError):
        return None


def _is_current(out_dir: Path, digest: str) -> bool:
    cfg_path = out_dir / SAE_CONFIG
    if not cfg_path.is_file():
        return False
    try:
        return read_json(cfg_path).get(SETTINGS_HASH) == digest
    except (OSError, ValueError):
        return False


def _write_model_dir(out_dir: Path, metrics: dict[str, Any], digest: str, features: str) -> None:
    """Write into a temp folder beside the target, then swap it in (never a half folder)."""
    sae: SAE = metrics.pop("_model")
    stability = metrics.get("controls", {}).get("seed_stability", {}).pop("_unit_cosine", None)
    twin: SAE | None = metrics.get("controls", {}).get("random_encoder", {}).pop("_model", None)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        if twin is not None:  # the random-encoder control's SAE, for the confounder stage
            save_sae(twin, tmp / RANDOM_ENCODER_SAE, extra_config={
                SETTINGS_HASH: digest, "control": "random_encoder",
                "features": metrics["controls"]["random_encoder"]["features"],
            })
        if stability is not None:
            threshold = metrics["controls"]["seed_stability"]["stable_cosine"]
            write_parquet_atomic(tmp / UNIT_STABILITY, pd.DataFrame({
                "unit": np.arange(len(stability)), "min_match_cosine": stability,
                "stable": stability >= threshold, SETTINGS_HASH: digest}))
        save_sae(sae, tmp, metrics=metrics, extra_config={
            SETTINGS_HASH: digest, "features": features,
            "training": metrics.get("training", {}),
        })
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            out_dir.replace(old)
            tmp.replace(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.replace(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


