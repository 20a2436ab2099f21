"""The SAE-ception stage: variants × seeds × cycles on the run's features.

Writes RUN/saeception/cycle_<k>/<variant>_seed<s>/ (model.safetensors, the cycle's SAE and
info.json), RUN/saeception/metrics.parquet (one row per cycle, variant and seed),
RUN/saeception/metrics.png, selection.parquet (the λ/N grid scored on held-out training patients,
one row per variant and grid point), adapter_edits.parquet (edits of each variant's last-cycle
adapter layer through its cycle SAE: site-flagged units ablated, random units as many; the
edit stage's effect columns, applied mode) and summary.json. Finished (variant, seed) runs are kept in
RUN/saeception/parts/ so a killed stage resumes; the whole stage is skipped when the settings
and inputs are unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from safetensors.torch import save_file

from pathosae.config import PathosaeConfig
from pathosae.downstream.splits import Splits, cohort_splits
from pathosae.io import atomic_path, read_json, settings_hash, write_json_atomic, write_parquet_atomic
from pathosae.run import RunDir
from pathosae.saeception.adapter_edits import MODE_NOTE, default_adapter_effects, load_cycle_model
from pathosae.saeception.config import ADAPTER_EDIT_FIELDS, SAECeptionConfig
from pathosae.saeception.cycle import CycleResult, base_model, run_variant, select_settings
from pathosae.saeception.plots import plot_metrics
from pathosae.types import OnError

ADAPTER_TABLE = "adapter_edits.parquet"


def run_stage(run: RunDir, cfg: PathosaeConfig, on_error: OnError) -> dict[str, Any]:
    from pathosae.confounders.stage import input_fingerprint, select_sae_dir
    from pathosae.downstream.runs import load_run_bags
    from pathosae.features import FeatureStore

    del on_error
    scfg = cfg.saeception
    store = FeatureStore(run, cfg.embedding.encoder)
    try:
        inputs = input_fingerprint(run, cfg.embedding.encoder, select_sae_dir(run, None), store.slide_ids)
    except Exception:
        inputs = settings_hash([store.slide_ids, [str(run.features_path(cfg.embedding.encoder, s))
                                                  for s in store.slide_ids], store.n_tiles])
    # Parts (trained models and their metrics) depend on the training settings only; the
    # adapter-edit settings change the stage's key but never retrain a model.
    train_key = settings_hash({
        "saeception": scfg.model_dump(mode="json", exclude=ADAPTER_EDIT_FIELDS),
        "label": cfg.cohort.label, "inputs": inputs,
    })
    key = settings_hash({"train": train_key,
                         "adapter_edits": scfg.model_dump(mode="json", include=ADAPTER_EDIT_FIELDS)})
    out_dir = run.root / "saeception"
    summary_path = out_dir / "summary.json"
    outputs = [out_dir / "metrics.parquet"] + ([out_dir / ADAPTER_TABLE] if scfg.adapter_edits else [])
    if summary_path.exists() and all(p.exists() for p in outputs):
        previous = read_json(summary_path)
        if previous.get("settings_hash") == key:
            return {**previous, "skipped": True}
    bags = load_run_bags(run, cfg, scfg.site_column, scfg.downstream.max_tiles_per_slide, scfg.seeds[0],
                         scfg.confounders)
    splits, held_out_site = cohort_splits(bags, scfg)
    metrics = run_all(splits, scfg, out_dir, train_key)
    metrics.insert(0, "settings_hash", key)
    metrics.insert(1, "held_out_site", held_out_site)
    write_parquet_atomic(out_dir / "metrics.parquet", metrics)
    with atomic_path(out_dir / "metrics.png") as tmp:
        plot_metrics(metrics, tmp)
    summary = {"settings_hash": key, "n_rows": len(metrics), "held_out_site": held_out_site,
               **headline(metrics, scfg.cycles)}
    if scfg.adapter_edits:
        edits = adapter_edit_table(splits, scfg, out_dir)
        edits.insert(0, "settings_hash", key)
        edits.insert(1, "held_out_site", held_out_site)
        write_parquet_atomic(out_dir / ADAPTER_TABLE, edits)
        summary["adapter_edits"] = adapter_headline(edits)
        summary["adapter_edit_modes"] = MODE_NOTE
    write_json_atomic(summary_path, summary)
    return summary


def adapter_edit_table(splits: Splits, scfg: SAECeptionConfig, out_dir: Path) -> pd.DataFrame:
    """Default adapter-layer edits of each variant's last-cycle model (saved by the cycles)."""
    seeds = scfg.seeds if scfg.adapter_edit_seeds == "all" else scfg.seeds[:1]
    frames = []
    for variant in scfg.variants:
        for seed in seeds:
            ref = f"cycle_{scfg.cycles}/{variant}_seed{seed}"
            model, sae = load_cycle_model(out_dir / ref)
            table = default_adapter_effects(model, sae, splits, scfg, seed,
                                            scfg.adapter_edit_random_draws)
            frames.append(table.assign(model=ref, variant=variant, seed=seed, cycle=scfg.cycles))
    return pd.concat(frames, ignore_index=True)


def adapter_headline(edits: pd.DataFrame) -> dict[str, Any]:
    """Per variant, mean over seeds: no edit, the flagged-unit ablation and the random draws."""
    scored = edits[edits["missing_reason"].isna()]
    group = np.where(scored["kind"] == "random", "random_units_mean",
                     np.where(scored["kind"] == "edit", "ablate_flagged", scored["edit"]))
    cols = ["bacc_normal", "bacc_shifted", "worst_site_bacc_shifted", "site_leakage", "flip_rate"]
    means = scored.assign(group=group).groupby(["variant", "group"])[cols].mean().round(4)
    out: dict[str, Any] = {}
    for (variant, name), row in means.iterrows():
        out.setdefault(str(variant), {})[str(name)] = row.to_dict()
    return out


def run_all(splits: Splits, scfg: SAECeptionConfig, out_dir: Path, key: str) -> pd.DataFrame:
    """Every (variant, seed), reusing finished parts written with the same settings hash.

    λ and N are chosen once per variant (held-out training patients, first seed) and written to
    RUN/saeception/selection.parquet; every seed of the variant then runs with them.
    """
    chosen, selection = choose_settings(splits, scfg, out_dir, key)
    frames = []
    for seed in scfg.seeds:
        base = None
        for variant in scfg.variants:
            part = out_dir / "parts" / f"{variant}_seed{seed}.parquet"
            if part.exists():
                frame = pd.read_parquet(part)
                if frame.get("part_hash", pd.Series([None])).iloc[0] == key:
                    frames.append(frame.drop(columns="part_hash"))
                    continue
            base = base or base_model(splits, scfg, seed)
            results = run_variant(
                splits, chosen[variant], variant, seed, base,
                lambda k, r, v=variant, s=seed: save_cycle(out_dir, v, s, k, r),
            )
            frame = pd.DataFrame([r.row for r in results])
            write_parquet_atomic(part, frame.assign(part_hash=key))
            frames.append(frame)
    if not selection.empty:
        write_parquet_atomic(out_dir / "selection.parquet", selection.assign(settings_hash=key))
    return pd.concat(frames, ignore_index=True)


def choose_settings(
    splits: Splits, scfg: SAECeptionConfig, out_dir: Path, key: str
) -> tuple[dict[str, SAECeptionConfig], pd.DataFrame]:
    """Per variant the config it runs with; the grid scores are cached with the settings hash."""
    chosen: dict[str, SAECeptionConfig] = {}
    tables = []
    for variant in scfg.variants:
        part = out_dir / "parts" / f"select_{variant}.parquet"
        table = pd.read_parquet(part) if part.exists() else None
        if table is not None and (table.empty or table["part_hash"].iloc[0] != key):
            table = None
        if table is None:
            cfg_v, table = select_settings(splits, scfg, variant, scfg.seeds[0])
            write_parquet_atomic(part, table.assign(part_hash=key))
        else:
            table = table.drop(columns="part_hash")
            best = table[table["chosen"]].iloc[0]
            cfg_v = scfg.model_copy(update={"aux_weight": float(best["aux_weight"]),
                                            "n_top": int(best["n_top"])})
        chosen[variant] = cfg_v
        tables.append(table)
    frames = [t for t in tables if not t.empty]
    return chosen, pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def save_cycle(out_dir: Path, variant: str, seed: int, cycle: int, result: CycleResult) -> None:
    from pathosae.sae import save_sae

    folder = out_dir / f"cycle_{cycle}" / f"{variant}_seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in result.model.state_dict().items()}
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(tensors, str(tmp))
    save_sae(result.sae, folder / "sae")
    write_json_atomic(folder / "info.json", {**result.info, **result.row})


def headline(metrics: pd.DataFrame, cycles: int) -> dict[str, Any]:
    """Mean over seeds of the last cycle, per variant."""
    last = metrics[metrics["cycle"] == cycles]
    cols = ["bacc_normal", "bacc_shifted", "worst_site_bacc_shifted", "site_leakage",
            "site_separation", "site_separation_train"]
    cols = [c for c in [*cols, "aux_weight", "n_top"] if c in last]
    means = last.groupby("variant")[cols].mean().round(4)
    return {"last_cycle": {v: row.to_dict() for v, row in means.iterrows()}}
