"""Every SAE-ception variant and seed, resumable, and the headline figures of their tables.

Finished (variant, seed) runs are kept in RUN/saeception/parts/ with the training key, so a killed
stage resumes where it stopped; λ and N are chosen once per variant on held-out training patients.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from safetensors.torch import save_file

from pathosae.config import UncertaintyConfig
from pathosae.downstream.splits import Splits
from pathosae.io import atomic_path, write_json_atomic, write_parquet_atomic
from pathosae.progress import bar, step
from pathosae.sae.io import save_sae
from pathosae.saeception.adapter_edits import default_adapter_effects, load_cycle_model
from pathosae.saeception.config import SAECeptionConfig
from pathosae.saeception.cycle import CycleResult, base_model, run_variant, select_settings
from pathosae.schema import CYCLE_MODEL, SELECTION, SETTINGS_HASH


def adapter_edit_table(
    splits: Splits, scfg: SAECeptionConfig, out_dir: Path, uncertainty: UncertaintyConfig | None = None
) -> pd.DataFrame:
    """Default adapter-layer edits of each variant's last-cycle model (saved by the cycles)."""
    seeds = scfg.seeds if scfg.adapter_edit_seeds == "all" else scfg.seeds[:1]
    frames = []
    for variant in scfg.variants:
        for seed in seeds:
            ref = f"cycle_{scfg.cycles}/{variant}_seed{seed}"
            step("sharpen", f"adapter-layer edits of {ref} (flagged units, {scfg.adapter_edit_random_draws} "
                            "random draws)")
            model, sae = load_cycle_model(out_dir / ref)
            table = default_adapter_effects(model, sae, splits, scfg, seed,
                                            scfg.adapter_edit_random_draws, uncertainty=uncertainty)
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


def run_all(
    splits: Splits, scfg: SAECeptionConfig, out_dir: Path, key: str,
    uncertainty: UncertaintyConfig | None = None,
) -> pd.DataFrame:
    """Every (variant, seed), reusing finished parts written with the same settings hash.

    λ and N are chosen once per variant (held-out training patients, first seed) and written to
    RUN/saeception/selection.parquet; every seed of the variant then runs with them.
    """
    chosen, selection = choose_settings(splits, scfg, out_dir, key)
    frames = []
    runs = [(seed, variant) for seed in scfg.seeds for variant in scfg.variants]
    base, base_seed = None, None
    for seed, variant in bar(runs, "sharpen: variant × seed", unit="run"):
        if seed != base_seed:  # one unedited base model per seed, shared by its variants
            base, base_seed = None, seed
        part = out_dir / "parts" / f"{variant}_seed{seed}.parquet"
        if part.exists():
            frame = pd.read_parquet(part)
            if frame.get("part_hash", pd.Series([None])).iloc[0] == key:
                frames.append(frame.drop(columns="part_hash"))
                continue
        base = base or base_model(splits, scfg, seed, uncertainty=uncertainty)
        results = run_variant(splits, chosen[variant], variant, seed, base,
                              functools.partial(save_cycle, out_dir, variant, seed),
                              uncertainty=uncertainty)
        frame = pd.DataFrame([r.row for r in results])
        write_parquet_atomic(part, frame.assign(part_hash=key))
        frames.append(frame)
    if not selection.empty:
        write_parquet_atomic(out_dir / SELECTION, selection.assign(**{SETTINGS_HASH: key}))
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
            step("sharpen", f"choosing λ and N for {variant} on held-out training patients")
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
    folder = out_dir / f"cycle_{cycle}" / f"{variant}_seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in result.model.state_dict().items()}
    with atomic_path(folder / CYCLE_MODEL) as tmp:
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
