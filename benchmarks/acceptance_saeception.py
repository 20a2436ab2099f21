"""Acceptance tables of the edit and SAE-ception stages on a synthetic cohort with strong planted
label–site confounding, read from a pipeline run (RUN/saeception/metrics.parquet,
RUN/edits/effects.parquet).

    python benchmarks/acceptance_saeception.py --run RUN
    python benchmarks/acceptance_saeception.py --build OUT [--slides 96 --seed 7 --confounding 0.9]

``--build`` writes the cohort (OUT/cohort) and runs the whole pipeline into OUT/run with a small
CPU-feasible config (OUT/config.yaml), then prints the tables. The checks printed at the end are
the acceptance criteria; each says PASS or FAIL with its numbers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

CONFIG = {
    "embedding": {"baselines": []},
    "sae": {
        "expansion": 4, "n_samples": 60000, "batch_size": 256, "dead_window": 20000,
        "controls": {"random_encoder": False, "permuted": False, "seed_stability": False,
                     "concept_coverage": False},
    },
    "confounders": {"n_confirm": 2, "n_permutations": 99},
}
VARIANT_COLS = [
    ("bacc_normal", "bacc normal"), ("bacc_shifted", "bacc shifted"),
    ("worst_site_bacc_shifted", "worst-site shifted"), ("site_leakage", "site leakage"),
    ("site_separation", "site sep. test"), ("site_separation_train", "site sep. train"),
    ("silhouette", "silhouette"), ("davies_bouldin", "DB"), ("calinski_harabasz", "CH"),
    ("kmeans_ari", "ARI"), ("monosemanticity", "monosem."),
]
EDIT_COLS = ["bacc_normal", "bacc_shifted", "worst_site_bacc_shifted", "site_leakage", "flip_rate",
             "collateral_bacc_drop"]


def build(out: Path, slides: int, seed: int, confounding: float, stain: bool) -> Path:
    from pathosae.synth import SynthParams, generate_cohort
    from pathosae.workflow import prepare_run, run_pipeline

    params = SynthParams(slide_px_min=1300, slide_px_max=1700, confounding=confounding)
    manifest = generate_cohort(out / "cohort", n_slides=slides, seed=seed, params=params)
    config = {**CONFIG, "embedding": {"baselines": ["stain_normalised"] if stain else []},
              "ground_truth": str(manifest.parent / "ground_truth")}
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    run, cfg = prepare_run(manifest, out / "run", path)
    run_pipeline(run, cfg)
    return out / "run"


def mean_sd(values: pd.Series) -> str:
    v = values.to_numpy(float)
    v = v[np.isfinite(v)]
    if not len(v):
        return "n/a"
    return f"{v.mean():.3f}±{v.std(ddof=1) if len(v) > 1 else 0.0:.3f}"


def variant_table(metrics: pd.DataFrame) -> pd.DataFrame:
    last = int(metrics["cycle"].max())
    rows = []
    base = metrics[metrics["cycle"] == 0].drop_duplicates("seed")
    rows.append({"variant": "base (cycle 0)", **{n: mean_sd(base[c]) for c, n in VARIANT_COLS}})
    for variant, group in metrics[metrics["cycle"] == last].groupby("variant", sort=False):
        row = {"variant": f"{variant} (cycle {last})", **{n: mean_sd(group[c]) for c, n in VARIANT_COLS}}
        row["λ"] = group["aux_weight"].iloc[0] if "aux_weight" in group else np.nan
        row["N"] = group["n_top"].iloc[0] if "n_top" in group else np.nan
        if "n_flagged" in group and group["n_flagged"].notna().any():
            row["flagged"] = mean_sd(group["n_flagged"])
        rows.append(row)
    return pd.DataFrame(rows).set_index("variant")


def edit_table(effects: pd.DataFrame, mode: str) -> pd.DataFrame:
    part = effects[effects["mode"] == mode].copy()
    part["group"] = np.where(part["kind"] == "random",
                             part["edit"].str.replace(r"_\d+$", "_*", regex=True), part["edit"])
    rows = []
    for name, group in part.groupby("group", sort=False):
        if group["missing_reason"].notna().all():
            rows.append({"edit": name, "kind": group["kind"].iloc[0],
                         "missing": str(group["missing_reason"].iloc[0])[:70]})
            continue
        row = {"edit": name, "kind": group["kind"].iloc[0], "units": group["n_units"].iloc[0],
               "n": len(group)}
        row.update({c: mean_sd(group[c]) for c in EDIT_COLS})
        rows.append(row)
    return pd.DataFrame(rows).set_index("edit")


def _mean(frame: pd.DataFrame, col: str) -> float:
    return float(frame[col].astype(float).mean())


def variant_checks(metrics: pd.DataFrame) -> list[str]:
    last = metrics[metrics["cycle"] == metrics["cycle"].max()]
    by = {v: g for v, g in last.groupby("variant")}
    if "injected" not in by:
        return ["no injected variant in the run"]
    inj = by["injected"]
    lines = []
    for ref in ("plain", "no_aux"):
        if ref not in by:
            continue
        r = by[ref]
        leak_i, leak_r = _mean(inj, "site_leakage"), _mean(r, "site_leakage")
        lines.append(f"{_verdict(leak_i < leak_r)} site leakage injected {leak_i:.3f} "
                     f"< {ref} {leak_r:.3f}")
        sh = [(_mean(inj, c), _mean(r, c)) for c in ("bacc_shifted", "worst_site_bacc_shifted")]
        ok = any(a > b for a, b in sh)
        lines.append(f"{_verdict(ok)} shifted bacc {sh[0][0]:.3f} vs {ref} "
                     f"{sh[0][1]:.3f}; worst-site {sh[1][0]:.3f} vs {sh[1][1]:.3f} (one must rise)")
        n_i, n_r = _mean(inj, "bacc_normal"), _mean(r, "bacc_normal")
        lines.append(f"{_verdict(abs(n_i - n_r) <= 0.02)} normal bacc injected "
                     f"{n_i:.3f} within 2 points of {ref} {n_r:.3f}")
    return lines


def _scored_by_mode(effects: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(mode, the rows of that mode that were measured), modes in order."""
    scored = effects[effects["missing_reason"].isna()]
    return [(str(m), scored[scored["mode"] == m]) for m in sorted(effects["mode"].unique())]


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def edit_checks(effects: pd.DataFrame) -> list[str]:
    lines = []
    for mode, part in _scored_by_mode(effects):
        for name in part.loc[part["edit"].str.startswith("ablate_flagged_"), "edit"].unique():
            var = name.removeprefix("ablate_flagged_")
            edit = part[part["edit"] == name]
            rand = part[part["edit"].str.startswith(f"random_units_{var}_")]
            if rand.empty:
                continue
            for col, better in (("bacc_shifted", 1), ("worst_site_bacc_shifted", 1),
                                ("site_leakage", -1)):
                a, b = _mean(edit, col), _mean(rand, col)
                ok = (a - b) * better > 0
                lines.append(f"{_verdict(ok)} [{mode}] {name} {col} {a:.3f} vs "
                             f"random {len(rand)} draws {b:.3f}")
    return lines


def best_edit_check(effects: pd.DataFrame) -> list[str]:
    """The best edit (kind ``edit``, by shifted balanced accuracy) against the random-unit edit."""
    lines = []
    for mode, part in _scored_by_mode(effects):
        edits, rand = part[part["kind"] == "edit"], part[part["kind"] == "random"]
        if edits.empty or rand.empty:
            continue
        best = edits.loc[edits["bacc_shifted"].astype(float).idxmax()]
        a, b = float(best["bacc_shifted"]), _mean(rand, "bacc_shifted")
        lines.append(f"{_verdict(a > b)} [{mode}] best edit {best['edit']} shifted "
                     f"bacc {a:.3f} vs random-unit edits {b:.3f}")
    return lines


def adapter_table(edits: pd.DataFrame) -> pd.DataFrame:
    """Per variant: no edit, the flagged-unit ablation and the random draws (mean±sd)."""
    scored = edits[edits["missing_reason"].isna()].copy()
    scored["group"] = np.where(scored["kind"] == "random", "random units",
                               np.where(scored["kind"] == "edit", "ablate flagged", scored["edit"]))
    rows = []
    for (variant, group), part in scored.groupby(["variant", "group"], sort=False):
        row = {"variant": variant, "edit": group, "n": len(part),
               "units": part["n_units"].astype(float).mean() if "n_units" in part else np.nan}
        row.update({c: mean_sd(part[c]) for c in EDIT_COLS if c in part})
        rows.append(row)
    return pd.DataFrame(rows).set_index(["variant", "edit"])


def adapter_checks(edits: pd.DataFrame) -> list[str]:
    lines = []
    scored = edits[edits["missing_reason"].isna()]
    for variant, part in scored.groupby("variant", sort=False):
        flagged, rand = part[part["kind"] == "edit"], part[part["kind"] == "random"]
        if flagged.empty or rand.empty:
            continue
        a, b = _mean(flagged, "site_leakage"), _mean(rand, "site_leakage")
        lines.append(f"{_verdict(a < b)} [adapter, {variant}] flagged-unit ablation "
                     f"site leakage {a:.3f} < random units {b:.3f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--run", type=Path, help="finished pipeline run to read")
    parser.add_argument("--build", type=Path, help="folder to synthesise a cohort and run into")
    parser.add_argument("--slides", type=int, default=96)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--confounding", type=float, default=0.9)
    parser.add_argument("--stain", action="store_true", help="embed stain-normalised features too")
    args = parser.parse_args()
    if (args.run is None) == (args.build is None):
        parser.error("give exactly one of --run RUN or --build OUT")
    run = args.run or build(args.build, args.slides, args.seed, args.confounding, args.stain)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 30)
    metrics = pd.read_parquet(run / "saeception" / "metrics.parquet")
    effects = pd.read_parquet(run / "edits" / "effects.parquet")
    seeds = sorted(metrics["seed"].unique())
    print(f"run: {run}  seeds: {seeds}  (mean±sd over seeds)\n")
    print("SAE-ception variants, last cycle (adapter-layer site leakage = within-class site probe, "
          "balanced accuracy; clustering/monosemanticity of the cycle SAE's codes by class):")
    print(variant_table(metrics).to_string(), "\n")
    selection = run / "saeception" / "selection.parquet"
    if selection.exists():
        sel = pd.read_parquet(selection)
        print("λ/N selection (held-out training patients, first seed):")
        print(sel.drop(columns=[c for c in ("settings_hash",) if c in sel]).to_string(index=False), "\n")
    for mode in sorted(effects["mode"].unique()):
        print(f"edit table, mode={mode} (random-unit edits: mean±sd over draws):")
        print(edit_table(effects, mode).to_string(), "\n")
    adapter_path = run / "saeception" / "adapter_edits.parquet"
    adapter = pd.read_parquet(adapter_path) if adapter_path.exists() else pd.DataFrame()
    if not adapter.empty:
        print("adapter-layer edits of each variant's last-cycle model through its cycle SAE "
              "(mean±sd over seeds and draws):")
        print(adapter_table(adapter).to_string(), "\n")
    print("acceptance checks:")
    checks = variant_checks(metrics) + edit_checks(effects) + best_edit_check(effects)
    for line in checks + (adapter_checks(adapter) if not adapter.empty else []):
        print("  " + line)


if __name__ == "__main__":
    main()
