"""Acceptance benchmark: SAE-ception with confounder injection vs plain SAE-ception, no-aux and
random-target controls, and SAE edits vs LEACE / ComBat / random-unit edits, on a cohort with a
strong planted label–site confounder (train/val correlated, test reversed).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/saeception_synthetic.py            # tensor cohort
    OMP_WAIT_POLICY=PASSIVE python benchmarks/saeception_synthetic.py --run RUN  # a run's features

Prints the last-cycle table (mean ± SD over seeds), the acceptance checks and the effect table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _tensor_cohort import make_tensor_cohort

from pathosae.downstream.splits import train_tile_metadata
from pathosae.edit import Editor, EditSpec, effect_table
from pathosae.edit.effects import combat_candidate, editor_candidate, missing_candidate
from pathosae.edit.spec import Ablate, Leace, ProjectOut, RandomUnits
from pathosae.saeception.config import SAECeptionConfig
from pathosae.saeception.confounding import flag_confounded_units
from pathosae.saeception.cycle import Splits, run_saeception

COLS = ["bacc_normal", "bacc_shifted", "worst_site_bacc_shifted", "site_leakage", "silhouette",
        "monosemanticity"]


def saeception_table(metrics: pd.DataFrame, cycles: int) -> pd.DataFrame:
    last = metrics[metrics["cycle"] == cycles]
    agg = last.groupby("variant")[COLS].agg(["mean", "std"])
    base = metrics[metrics["cycle"] == 0].groupby("seed")[COLS].first().agg(["mean", "std"])
    table = pd.DataFrame({c: [f"{agg.loc[v, (c, 'mean')]:.3f}±{agg.loc[v, (c, 'std')]:.3f}"
                              for v in agg.index] for c in COLS}, index=agg.index)
    table.loc["base (cycle 0)"] = [f"{base.loc['mean', c]:.3f}±{base.loc['std', c]:.3f}" for c in COLS]
    return table


def acceptance(metrics: pd.DataFrame, cycles: int) -> list[str]:
    last = metrics[metrics["cycle"] == cycles].groupby("variant")[COLS].mean()
    inj, lines = last.loc["injected"], []
    for other in ("plain", "no_aux"):
        ref = last.loc[other]
        lines.append(f"leakage injected {inj.site_leakage:.3f} < {other} {ref.site_leakage:.3f}: "
                     f"{inj.site_leakage < ref.site_leakage}")
        better = (inj.bacc_shifted > ref.bacc_shifted
                  or inj.worst_site_bacc_shifted > ref.worst_site_bacc_shifted)
        lines.append(f"shifted bacc {inj.bacc_shifted:.3f} vs {ref.bacc_shifted:.3f}, worst-site "
                     f"{inj.worst_site_bacc_shifted:.3f} vs {ref.worst_site_bacc_shifted:.3f} "
                     f"({other}): {better}")
        drop = ref.bacc_normal - inj.bacc_normal
        lines.append(f"normal bacc within 2 points of {other} ({inj.bacc_normal:.3f} vs "
                     f"{ref.bacc_normal:.3f}): {abs(drop) <= 0.02 or drop < 0}")
    return lines


def edit_candidates(splits: Splits, seed: int, draws: int) -> list:
    from pathosae.config import SAEConfig
    from pathosae.confounders.directions import mean_difference_directions
    from pathosae.sae import train_sae

    train = splits.train
    sae = train_sae(train.x, SAEConfig(architecture="topk", expansion=8, k=8, n_samples=200_000,
                                       seed=seed, device="cpu", batch_size=1024))
    codes = sae.encode(train.x).detach()
    meta = pd.DataFrame({"label": np.array(train.classes)[train.y.numpy()], "site": train.site})
    flagged = flag_confounded_units(codes, train.slide, meta, ["site"], "label", 0.05)
    # Rank flagged units by their site effect inside classes and keep the strongest ones.
    units = flagged.nonzero().flatten().tolist()
    n = min(len(units), 16)
    strength = _site_effect(codes, train)
    units = sorted(units, key=lambda u: -strength[u])[:n]
    dirs, _ = mean_difference_directions(train.x.numpy(), train.tile_site(), train.tile_y().numpy())
    directions = {"site.mean_difference": dirs}
    specs = [
        (EditSpec(name="ablate_flagged_site", ops=[Ablate(units=units)]), "edit"),
        (EditSpec(name="project_out_site", ops=[ProjectOut(name="site.mean_difference")]), "edit"),
        (EditSpec(name="ablate_flagged_and_project_out", ops=[Ablate(units=units),
                                                          ProjectOut(name="site.mean_difference")]), "edit"),
        (EditSpec(name="leace_site", ops=[Leace(concept="site")]), "baseline"),
    ]
    cands = [editor_candidate(s.name, k, Editor(s, sae, directions), train_tile_metadata) for s, k in specs]
    for d in range(draws):
        spec = EditSpec(name=f"random_units_{d}", ops=[RandomUnits(count=n, seed=d)])
        cands.append(editor_candidate(spec.name, "random", Editor(spec, sae), train_tile_metadata, d))
    cands.append(combat_candidate())
    cands.append(missing_candidate("stain_normalisation", "tensor cohort has no pixels"))
    return cands, len(flagged.nonzero())


def _site_effect(codes: torch.Tensor, bags) -> np.ndarray:
    """Spread of class-and-site means of each unit, averaged over classes (within-class effect)."""
    y, site = bags.tile_y().numpy(), bags.tile_site()
    c = codes.numpy()
    out = np.zeros(c.shape[1])
    for k in np.unique(y):
        means = [c[(y == k) & (site == s)].mean(0) for s in np.unique(site) if ((y == k) & (site == s)).sum()]
        out += np.ptp(np.stack(means), axis=0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--aux-weight", type=float, default=2.0)
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--edits-only", action="store_true", help="Skip SAE-ception; edit table only.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    if args.run is not None:
        _run_mode(args)
        return
    bags = make_tensor_cohort(confounding=0.8, site_strength=0.5, tumour_fraction=(0.2, 0.5))
    splits = Splits(bags.split_of("train"), bags.split_of("val"), bags.split_of("test"))
    cfg = SAECeptionConfig(seeds=list(range(args.seeds)), cycles=args.cycles, aux_weight=args.aux_weight,
                           aux_weight_grid=[], n_top_grid=[])
    print(f"tensor cohort: {bags.n_slides} slides, {bags.x.shape[0]} tiles, dim {bags.dim}; "
          f"train {splits.train.n_slides}, normal test {splits.normal.n_slides}, shifted test "
          f"{splits.shifted.n_slides}; confounding 0.8 (reversed in the shifted test)")
    if args.edits_only:
        cands, n_flagged = edit_candidates(splits, 0, args.draws)
        _print_effects(effect_table(splits, cands, cfg.downstream, 0), n_flagged)
        return
    metrics = run_saeception(splits, cfg)
    print(f"\nSAE-ception, cycle {args.cycles}, mean±SD over {args.seeds} seeds "
          f"(λ={cfg.aux_weight}, {cfg.aux_loss}, n_top={cfg.n_top}):")
    print(saeception_table(metrics, args.cycles).to_string())
    print("\nacceptance (SAE-ception):")
    for line in acceptance(metrics, args.cycles):
        print("  " + line)
    cands, n_flagged = edit_candidates(splits, 0, args.draws)
    effects = effect_table(splits, cands, cfg.downstream, 0)
    _print_effects(effects, n_flagged)
    print(f"\ntotal {time.perf_counter() - t0:.0f}s")


def _print_effects(effects: pd.DataFrame, n_flagged: int | None = None) -> None:
    cols = ["edit", "kind", "mode", "n_units", "bacc_normal", "bacc_shifted", "worst_site_bacc_shifted",
            "auroc_shifted", "site_leakage", "flip_rate", "collateral_bacc_drop"]
    print(f"\nedit effect table (site-flagged SAE units: {n_flagged}):")
    print(effects[cols].round(3).to_string(index=False))
    for mode in effects["mode"].unique():
        sub = effects[(effects["mode"] == mode) & effects["bacc_shifted"].notna()]
        edits = sub[sub["kind"] == "edit"].sort_values("bacc_shifted", ascending=False)
        rand = sub[sub["kind"] == "random"]["bacc_shifted"]
        if len(edits) and len(rand):
            best = edits.iloc[0]
            print(f"best edit ({mode}): {best['edit']} shifted bacc {best['bacc_shifted']:.3f} vs "
                  f"random-unit {rand.mean():.3f}±{rand.std():.3f} (max {rand.max():.3f}): "
                  f"{best['bacc_shifted'] > rand.max()}")


def _run_mode(args: argparse.Namespace) -> None:
    from pathosae.config import load_config
    from pathosae.edit.stage import run_stage as edit_stage
    from pathosae.run import RunDir
    from pathosae.saeception.stage import run_stage as sharpen_stage

    run = RunDir(args.run)
    cfg = load_config(run.root / "config.yaml" if (run.root / "config.yaml").exists() else None)
    sharpen_stage(run, cfg, "stop")
    metrics = pd.read_parquet(run.root / "saeception" / "metrics.parquet")
    cycles = int(metrics["cycle"].max())
    print(saeception_table(metrics, cycles).to_string())
    for line in acceptance(metrics, cycles):
        print("  " + line)
    edit_stage(run, cfg, "stop")
    _print_effects(pd.read_parquet(run.root / "edits" / "effects.parquet"))


if __name__ == "__main__":
    main()
