"""The SAE-ception stage: variants × seeds × cycles on the run's features.

Writes RUN/saeception/cycle_<k>/<variant>_seed<s>/ (model.safetensors, the cycle's SAE and
info.json), RUN/saeception/metrics.parquet (one row per cycle, variant and seed),
RUN/saeception/metrics.png, selection.parquet (the λ/N grid scored on held-out training patients,
one row per variant and grid point), adapter_edits.parquet (edits of each variant's last-cycle
adapter layer through its cycle SAE: site-flagged units ablated, random units as many; the
edit stage's effect columns, applied mode), adapter_spec_effects.parquet (the user's
adapter-layer edit specs, from ``edit.specs`` and ``pathosae edit --model``, each on the model it
names; the specs themselves in adapter_specs/) and summary.json. Finished (variant, seed) runs are
kept in RUN/saeception/parts/ so a killed stage resumes; the whole stage is skipped when the
settings and inputs are unchanged, and the user specs' table has a key of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pathosae.config import PathosaeConfig
from pathosae.downstream.splits import Splits
from pathosae.edit.spec import EditSpec
from pathosae.edit.user_specs import adapter_specs
from pathosae.errors import StageError
from pathosae.features import FeatureStore
from pathosae.fingerprint import current_summary, input_fingerprint
from pathosae.inputs import analysed_features, select_sae_dir
from pathosae.io import atomic_path, settings_hash, write_json_atomic, write_parquet_atomic, write_text_atomic
from pathosae.run import RunDir
from pathosae.saeception.adapter_edits import (
    MODE_NOTE,
    measure_adapter_specs,
    run_bags_splits,
)
from pathosae.saeception.config import ADAPTER_EDIT_FIELDS, SAECeptionConfig
from pathosae.saeception.plots import plot_metrics
from pathosae.saeception.variants import adapter_edit_table, adapter_headline, headline, run_all
from pathosae.schema import (
    ADAPTER_EDITS,
    ADAPTER_SPEC_EFFECTS,
    HELD_OUT_SITE,
    NORMAL_TEST,
    SAECEPTION_DIR,
    SAECEPTION_METRICS,
    SETTINGS_HASH,
    SUMMARY,
)
from pathosae.types import OnError

SPEC_KEY = "adapter_spec_settings_hash"  # the user adapter specs' table has a key of its own


def run_stage(
    run: RunDir, cfg: PathosaeConfig, on_error: OnError, extra_specs: list[Path] | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """Train and measure every variant; then the user's adapter-layer specs, if any."""
    del on_error
    scfg = cfg.saeception
    specs = adapter_specs(list(cfg.edit.specs), list(extra_specs or []), model)
    train_key, key = stage_keys(run, cfg)
    spec_key = settings_hash({"train": train_key, "specs": [s.model_dump(mode="json") for s in specs]}) \
        if specs else None
    out_dir = run.root / SAECEPTION_DIR
    outputs = [out_dir / SAECEPTION_METRICS, *([out_dir / ADAPTER_EDITS] if scfg.adapter_edits else [])]
    previous = current_summary(out_dir / SUMMARY, key, outputs)
    specs_done = spec_key is None or (previous is not None and previous.get(SPEC_KEY) == spec_key
                                      and (out_dir / ADAPTER_SPEC_EFFECTS).exists())
    if previous is not None and specs_done:
        return {**previous, "skipped": True}
    splits, held_out_site = run_bags_splits(run, cfg)
    if previous is None:
        summary = train_and_measure(splits, held_out_site, cfg, out_dir, train_key, key)
    else:
        summary = {k: v for k, v in previous.items() if not k.startswith("adapter_spec")}
    if spec_key is not None:
        summary.update(user_spec_effects(out_dir, splits, held_out_site, scfg, specs, spec_key))
    write_json_atomic(out_dir / SUMMARY, summary)
    return summary


def stage_keys(run: RunDir, cfg: PathosaeConfig) -> tuple[str, str]:
    """The training key (parts depend on it) and the stage's key (training + adapter edits)."""
    scfg = cfg.saeception
    features = analysed_features(cfg)
    store = FeatureStore(run, features)
    try:
        sae_dir: Path | None = select_sae_dir(run, None)
    except StageError:  # SAE-ception trains SAEs of its own: the run's SAE is only an input key
        sae_dir = None
    inputs = input_fingerprint(run, features, sae_dir, store.slide_ids)
    # Parts (trained models and their metrics) depend on the training settings only; the
    # adapter-edit settings change the stage's key but never retrain a model.
    train_key = settings_hash({
        "saeception": scfg.model_dump(mode="json", exclude=ADAPTER_EDIT_FIELDS),
        "label": cfg.cohort.label, "inputs": inputs,
        "uncertainty": cfg.section_dump("uncertainty"),
    })
    key = settings_hash({"train": train_key,
                         "adapter_edits": scfg.model_dump(mode="json", include=ADAPTER_EDIT_FIELDS)})
    return train_key, key


def train_and_measure(
    splits: Splits, held_out_site: str | None, cfg: PathosaeConfig, out_dir: Path,
    train_key: str, key: str,
) -> dict[str, Any]:
    """Every variant and seed (metrics.parquet, its plot) and the default adapter edits."""
    scfg = cfg.saeception
    metrics = run_all(splits, scfg, out_dir, train_key, uncertainty=cfg.uncertainty)
    metrics.insert(0, SETTINGS_HASH, key)
    metrics.insert(1, HELD_OUT_SITE, held_out_site)
    metrics.insert(2, NORMAL_TEST, splits.normal_source)
    write_parquet_atomic(out_dir / SAECEPTION_METRICS, metrics)
    with atomic_path(out_dir / "metrics.png") as tmp:
        plot_metrics(metrics, tmp)
    summary = {SETTINGS_HASH: key, "n_rows": len(metrics), HELD_OUT_SITE: held_out_site,
               NORMAL_TEST: splits.normal_source, **headline(metrics, scfg.cycles)}
    if scfg.adapter_edits:
        edits = adapter_edit_table(splits, scfg, out_dir, uncertainty=cfg.uncertainty)
        edits.insert(0, SETTINGS_HASH, key)
        edits.insert(1, HELD_OUT_SITE, held_out_site)
        edits.insert(2, NORMAL_TEST, splits.normal_source)
        write_parquet_atomic(out_dir / ADAPTER_EDITS, edits)
        summary["adapter_edits"] = adapter_headline(edits)
        summary["adapter_edit_modes"] = MODE_NOTE
    return summary


def user_spec_effects(
    out_dir: Path, splits: Splits, held_out_site: str | None, scfg: SAECeptionConfig,
    specs: list[EditSpec], spec_key: str,
) -> dict[str, Any]:
    """The user's adapter-layer specs on their models → adapter_spec_effects.parquet."""
    table = measure_adapter_specs(out_dir, splits, held_out_site, scfg, specs)
    table.insert(0, SETTINGS_HASH, spec_key)
    for spec in specs:
        write_text_atomic(out_dir / "adapter_specs" / f"{spec.name}.json", spec.to_json())
    write_parquet_atomic(out_dir / ADAPTER_SPEC_EFFECTS, table)
    return {SPEC_KEY: spec_key, "adapter_spec_edits": [s.name for s in specs],
            "adapter_spec_rows": len(table), "adapter_spec_modes": MODE_NOTE}
