"""The SAE-ception loop: per cycle a fresh SAE on the frozen model's adapter layer, a sharpened
target, and the next model trained with task loss + λ·aux(h, target). Controls run the same loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from pathosae.config import UncertaintyConfig
from pathosae.downstream.bags import Bags
from pathosae.downstream.metrics import (
    TileRows,
    interval_columns,
    site_leakage_report,
    site_separation,
    task_metric_replicates,
    task_metrics,
)
from pathosae.downstream.model import AdapterMIL
from pathosae.downstream.splits import MIN_EVAL_SLIDES, Splits
from pathosae.downstream.train import cosine_aux, mse_aux, predict_proba, tile_hidden, train_downstream
from pathosae.errors import StageError
from pathosae.saeception.config import SAECeptionConfig, Variant
from pathosae.saeception.confounding import confounder_eraser, flag_confounded_units
from pathosae.saeception.metrics import clustering_metrics, monosemanticity
from pathosae.saeception.targets import class_means, random_unit_targets, sharpened_targets, top_units
from pathosae.uncertainty import patient_resamples

if TYPE_CHECKING:
    from pathosae.sae.base import SAE


@dataclass
class CycleResult:
    """One cycle of one variant and seed: its metrics row and what produced it."""

    row: dict[str, object]
    model: AdapterMIL
    sae: SAE
    info: dict[str, object] = field(default_factory=dict)


def fit_cycle_sae(
    h: Tensor, cfg: SAECeptionConfig, seed: int, told: dict[str, Any] | None = None,
) -> SAE:
    """A fresh SAE on adapter activations through pathosae.sae's training loop (the aware
    variant's confounder-aware SAE when ``told`` carries the rows' conditions and labels)."""
    from pathosae.config import SAEConfig
    from pathosae.sae import train_sae

    architecture = cfg.aware_architecture if told else cfg.sae_architecture
    settings = {
        "architecture": architecture,
        "d_sae": cfg.sae_expansion * h.shape[1],
        "k": cfg.sae_k,
        "n_samples": cfg.sae_samples,
        "batch_size": min(1024, h.shape[0]),
        "init_samples": min(16_384, h.shape[0]),
        "seed": seed,
        "device": "cpu",
        **cfg.sae_overrides,
    }
    return train_sae(h, SAEConfig(**settings), architecture=architecture, **(told or {}))


def aware_targets(
    h: Tensor, train: Bags, cfg: SAECeptionConfig, seed: int,
) -> tuple[Tensor, dict[str, object]]:
    """The aware variant's targets: top units of a confounder-aware SAE fitted on the training
    tiles with their slides' confounder levels, never its reserved block; decoded with the mean
    offsets, so no target carries the confounders it was told."""
    from pathosae.sae import Conditions
    from pathosae.sae.metrics import encode_rows

    columns = [c for c in confounder_columns(train, cfg) if c in slide_metadata(train, cfg)]
    tiles = slide_metadata(train, cfg).iloc[train.slide.numpy()].reset_index(drop=True)
    conditions = Conditions.from_frame(tiles, columns)
    labels = train.tile_y()
    sae = fit_cycle_sae(h, cfg, seed, {"conditions": conditions, "labels": labels.numpy()})
    codes = encode_rows(sae, h, conditions=conditions.codes)
    exclude = torch.zeros(sae.d_sae, dtype=torch.bool)
    reserved = [u for units in getattr(sae, "reserved_units", dict)().values() for u in units]
    exclude[reserved] = True
    means = class_means(codes, labels, len(train.classes), None, cfg.min_cell_tiles)
    keep = top_units(means, cfg.n_top, exclude)
    info: dict[str, object] = {"n_reserved": len(reserved), "n_kept": int(keep.any(0).sum())}
    return sharpened_targets(codes, labels, keep, sae.decode, None), info


def confounder_columns(bags: Bags, cfg: SAECeptionConfig) -> list[str]:
    names = cfg.confounders if cfg.confounders is not None else [cfg.site_column, *bags.meta]
    return list(dict.fromkeys(names))


def slide_metadata(bags: Bags, cfg: SAECeptionConfig) -> pd.DataFrame:
    frame = {"label": np.array(bags.classes)[bags.y.numpy()], cfg.site_column: bags.site}
    frame.update({k: v for k, v in bags.meta.items() if k != cfg.site_column})
    return pd.DataFrame(frame)


def build_target(
    variant: Variant, model: AdapterMIL, sae: SAE, train: Bags, cfg: SAECeptionConfig,
    seed: int,
) -> tuple[Tensor | None, dict[str, object]]:
    """The adapter-layer target of one variant (None for no_aux) and what went into it."""
    h = tile_hidden(model, train.x)
    if variant == "no_aux":
        return None, {}
    if variant == "random_target":
        return random_unit_targets(h.shape[0], h.shape[1], seed), {}
    if variant == "aware":
        return aware_targets(h, train, cfg, seed)
    from pathosae.sae.metrics import encode_rows

    codes = encode_rows(sae, h)
    labels = train.tile_y()
    injected = variant == "injected"
    exclude, erase = None, None
    info: dict[str, object] = {}
    if injected and cfg.inject_flagged:
        columns = [c for c in confounder_columns(train, cfg) if c in slide_metadata(train, cfg)]
        exclude = flag_confounded_units(
            codes, train.slide, slide_metadata(train, cfg), columns, "label", cfg.flag_alpha,
            cfg.flag_rule,
        )
        info["n_flagged"] = int(exclude.sum())
    sites = train.tile_site() if injected and cfg.inject_site_balanced else None
    means = class_means(codes, labels, len(train.classes), sites, cfg.min_cell_tiles)
    keep = top_units(means, cfg.n_top, exclude)
    info["n_kept"] = int(keep.any(0).sum())
    if injected and cfg.inject_directions:
        erase = confounder_eraser(h, labels.numpy(), train.tile_site(), cfg.direction_method)
    decode = sae.decode
    return sharpened_targets(codes, labels, keep, decode, erase), info


# Bootstrap settings when the caller passes none (the config's defaults).
DEFAULT_UNCERTAINTY = UncertaintyConfig()


def evaluate_cycle(
    model: AdapterMIL, sae: SAE, splits: Splits, cfg: SAECeptionConfig, seed: int,
    train_h: Tensor, *, uncertainty: UncertaintyConfig | None = None,
) -> dict[str, object]:
    """Task metrics, adapter-layer site leakage and the SAE codes' class structure
    (``train_h``: the model's adapter activations of the training tiles, as the cycle SAE saw).

    Each task metric gets ``<column>_low`` / ``_high``, a patient-level bootstrap interval over
    that test split (``uncertainty``, else :data:`DEFAULT_UNCERTAINTY`); the draws depend only on
    the split's patients and the uncertainty seed, so every variant, seed and cycle (and the edit
    stage's table on the same splits) is resampled alike."""
    from pathosae.sae.metrics import encode_rows, evaluate_sae

    boot = uncertainty or DEFAULT_UNCERTAINTY
    row: dict[str, object] = {}
    for k, (name, bags) in enumerate((("normal", splits.normal), ("shifted", splits.shifted))):
        proba = predict_proba(model, bags)
        m = task_metrics(bags.y.numpy(), proba, bags.site)
        row.update({f"auroc_{name}": m["auroc"], f"bacc_{name}": m["bacc"],
                    f"worst_site_bacc_{name}": m["worst_site_bacc"]})
        res = patient_resamples(bags.patient, boot.n_bootstrap, [boot.seed, k])
        row.update(interval_columns(task_metric_replicates(res, bags.y.numpy(), proba, bags.site),
                                    boot.level, f"_{name}"))
    pooled = splits.pooled_test()
    h = tile_hidden(model, pooled.x)
    row.update(site_leakage_report(
        pooled.slide_means(h).numpy(), pooled.site, pooled.y.numpy(), cfg.leakage_folds, seed,
        tiles=TileRows(h.numpy(), pooled.slide.numpy()),
    ).columns())
    # Between-site share of within-class variance: on the test slides, and on the training
    # slides the injection was fitted on (does it remove the site where it was told where?)
    row["site_separation"] = site_separation(pooled.slide_means(h).numpy(), pooled.site,
                                             pooled.y.numpy())
    row["site_separation_train"] = site_separation(splits.train.slide_means(train_h).numpy(),
                                                   splits.train.site, splits.train.y.numpy())
    quality = evaluate_sae(sae, h)
    row.update({"sae_fvu": quality["fvu"], "sae_l0": quality["l0"], "sae_dead": quality["dead_fraction"]})
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(h.shape[0], size=min(cfg.eval_max_tiles, h.shape[0]), replace=False))
    codes = encode_rows(sae, h[torch.from_numpy(pick)]).numpy()
    labels = pooled.tile_y().numpy()[pick]
    row.update(clustering_metrics(codes, labels, seed))
    row["monosemanticity"] = float(np.nanmean(monosemanticity(codes, labels)))
    return row


def run_variant(
    splits: Splits,
    cfg: SAECeptionConfig,
    variant: Variant,
    seed: int,
    base: Base,
    on_cycle: Callable[[int, CycleResult], None] | None = None,
    *,
    uncertainty: UncertaintyConfig | None = None,
) -> list[CycleResult]:
    """Cycles 0..C of one variant: cycle 0 is the shared base model (task loss only)."""
    model, sae, base_row = base
    results = [CycleResult({"variant": variant, "seed": seed, "cycle": 0, **base_row}, model, sae)]
    if on_cycle is not None:
        on_cycle(0, results[0])
    train_cfg = cfg.downstream.model_copy(update={"epochs": cfg.cycle_epochs})
    aux = cosine_aux if cfg.aux_loss == "cosine" else mse_aux
    for k in range(1, cfg.cycles + 1):
        cycle_seed = seed * 1000 + k
        target, info = build_target(variant, model, sae, splits.train, cfg, cycle_seed)
        model = train_downstream(
            splits.train, train_cfg, cycle_seed, init=model if cfg.warm_start else None,
            target=target, aux_weight=cfg.aux_weight if target is not None else 0.0, aux_loss=aux,
        )
        train_h = tile_hidden(model, splits.train.x)
        sae = fit_cycle_sae(train_h, cfg, cycle_seed)
        metrics = evaluate_cycle(model, sae, splits, cfg, seed, train_h, uncertainty=uncertainty)
        row = {"variant": variant, "seed": seed, "cycle": k, **metrics, **info,
               "aux_weight": cfg.aux_weight if variant in AUX_VARIANTS else 0.0,
               "n_top": cfg.n_top if variant in TOP_N_VARIANTS else None}
        results.append(CycleResult(row, model, sae, info))
        if on_cycle is not None:
            on_cycle(k, results[-1])
    return results


Base = tuple[AdapterMIL, "SAE", dict[str, object]]


def base_model(
    splits: Splits, cfg: SAECeptionConfig, seed: int, *, uncertainty: UncertaintyConfig | None = None
) -> Base:
    """Cycle 0: the model trained with the task loss only, its SAE and metrics."""
    model = train_downstream(splits.train, cfg.downstream, seed)
    train_h = tile_hidden(model, splits.train.x)
    sae = fit_cycle_sae(train_h, cfg, seed * 1000)
    return model, sae, evaluate_cycle(model, sae, splits, cfg, seed, train_h, uncertainty=uncertainty)


AUX_VARIANTS: tuple[Variant, ...] = ("random_target", "plain", "injected", "aware")
TOP_N_VARIANTS: tuple[Variant, ...] = ("plain", "injected", "aware")


def selection_splits(train: Bags, fraction: float, seed: int) -> Splits:
    """Training slides cut by patient into an inner training part and a selection part.

    Patients are held out per class (a patient's class is that of its first slide), so both
    parts keep every class. The selection part stands in for both test splits while λ and N
    are chosen; neither reported test split is used for the choice.
    """
    rng = np.random.default_rng(seed)
    held: set[str] = set()
    first = pd.DataFrame({"patient": train.patient, "y": train.y.numpy()}).drop_duplicates("patient")
    for _, group in first.groupby("y"):
        patients = group["patient"].to_numpy()
        n_out = round(fraction * len(patients))
        if 1 <= n_out < len(patients):
            held |= set(rng.choice(patients, size=n_out, replace=False).tolist())
    out = np.isin(train.patient, sorted(held))
    inner, selection = train.subset(~out), train.subset(out)
    if len(set(inner.y.tolist())) < len(train.classes) or selection.n_slides < MIN_EVAL_SLIDES:
        raise StageError(
            f"the training split ({train.n_slides} slides) is too small to hold out patients "
            "for choosing λ and N. Fix: add training slides, or set saeception.aux_weight_grid "
            "and saeception.n_top_grid to [] to use aux_weight and n_top as given."
        )
    return Splits(inner, selection, selection)


def select_settings(
    splits: Splits, cfg: SAECeptionConfig, variant: Variant, seed: int
) -> tuple[SAECeptionConfig, pd.DataFrame]:
    """λ and N for ``variant``: one cycle from the base model of the inner training part per
    grid point, scored by balanced accuracy on the held-out training patients; ties go to the
    largest λ, then the smallest N. Returns the config to run with and the grid's scores."""
    lambdas = cfg.aux_weight_grid or [cfg.aux_weight]
    tops = (cfg.n_top_grid or [cfg.n_top]) if variant in TOP_N_VARIANTS else [cfg.n_top]
    if variant not in AUX_VARIANTS or (len(lambdas) == 1 and len(tops) == 1):
        return cfg.model_copy(update={"aux_weight": lambdas[0], "n_top": tops[0]}), pd.DataFrame()
    inner = selection_splits(splits.train, cfg.selection_fraction, seed)
    model = train_downstream(inner.train, cfg.downstream, seed)
    sae = fit_cycle_sae(tile_hidden(model, inner.train.x), cfg, seed * 1000)
    train_cfg = cfg.downstream.model_copy(update={"epochs": cfg.cycle_epochs})
    aux = cosine_aux if cfg.aux_loss == "cosine" else mse_aux
    rows = []
    d_sae = int(cfg.sae_overrides.get("d_sae", cfg.sae_expansion * cfg.downstream.hidden_dim))
    for n_top in dict.fromkeys(min(t, d_sae) for t in tops):
        trial = cfg.model_copy(update={"n_top": n_top})
        target, _ = build_target(variant, model, sae, inner.train, trial, seed * 1000 + 1)
        for lam in lambdas:
            fitted = train_downstream(
                inner.train, train_cfg, seed * 1000 + 1, init=model if cfg.warm_start else None,
                target=target, aux_weight=lam, aux_loss=aux,
            )
            m = task_metrics(inner.normal.y.numpy(), predict_proba(fitted, inner.normal),
                             inner.normal.site)
            rows.append({"variant": variant, "aux_weight": lam, "n_top": n_top,
                         "selection_bacc": m["bacc"], "selection_auroc": m["auroc"]})
    table = pd.DataFrame(rows)
    # Best balanced accuracy; among ties the strongest pull (largest λ, then smallest N): the
    # most sharpening that costs no held-out accuracy.
    ranked = table.assign(order=np.arange(len(table))).sort_values(
        ["selection_bacc", "aux_weight", "n_top"], ascending=[False, False, True],
        kind="stable", na_position="last",
    )
    best = ranked.iloc[0]
    table["chosen"] = np.arange(len(table)) == int(best["order"])
    chosen = cfg.model_copy(update={"aux_weight": float(best["aux_weight"]), "n_top": int(best["n_top"])})
    return chosen, table


def run_saeception(
    splits: Splits,
    cfg: SAECeptionConfig,
    on_cycle: Callable[[str, int, int, CycleResult], None] | None = None,
    *,
    uncertainty: UncertaintyConfig | None = None,
) -> pd.DataFrame:
    """All variants × seeds × cycles; one metrics row each (λ and N chosen per variant)."""
    chosen = {v: select_settings(splits, cfg, v, cfg.seeds[0])[0] for v in cfg.variants}
    rows = []
    for seed in cfg.seeds:
        base = base_model(splits, cfg, seed, uncertainty=uncertainty)
        for variant in cfg.variants:
            hook = None if on_cycle is None else (lambda k, r, v=variant, s=seed: on_cycle(v, s, k, r))
            rows += [r.row for r in run_variant(splits, chosen[variant], variant, seed, base, hook,
                                                uncertainty=uncertainty)]
    return pd.DataFrame(rows)
