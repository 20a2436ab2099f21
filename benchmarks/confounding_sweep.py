"""How the confounder figures move with the planted confounding: a sweep over synthetic cohorts.

For each (label-site confounding, site stain strength) cell, a small synthetic cohort is generated,
run through cohort → tile → embed → sae → confounders with a small CPU config, and the figures
are printed side by side: site leakage (probe AUROC from the embeddings, SAE codes and SAE
residual, patient folds), PathoROB's robustness index for the site, the number of units flagged
for site and scanner, their precision and recall against the planted effects (counterfactual
renders) with the AUROC of the scan's ranking of units against them, and the permuted-metadata
null. With no confounding and no site effect the site figures
should sit at chance; as the site effect grows, leakage and recall should rise.

    python benchmarks/confounding_sweep.py --out /tmp/sweep            # the default grid
    python benchmarks/confounding_sweep.py --confounding 0 0.9 --site-strength 0 1 2

Each cell's run folder is kept under --out, so a rerun only recomputes what changed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

SMALL_CONFIG: dict[str, Any] = {
    "embedding": {"baselines": [], "batch_size": 32, "num_workers": 1},
    "sae": {"expansion": 2, "k": 16, "n_samples": 20_000, "batch_size": 256,
            "dead_window": 10_000, "init_samples": 2048, "eval_max_rows": 5000,
            "controls": {"random_encoder": False, "permuted": False, "seed_stability": False,
                         "concept_coverage": False}},
    "confounders": {"n_confirm": 0, "cv_folds": 3, "k_neighbors": 5, "combat": False},
}


def run_cell(out: Path, confounding: float, site_strength: float, args: argparse.Namespace) -> dict[str, Any]:
    from pathosae.synth import SynthParams, generate_cohort
    from pathosae.workflow import prepare_run, run_pipeline

    name = f"c{confounding:g}_s{site_strength:g}"
    cell = out / name
    cell.mkdir(parents=True, exist_ok=True)
    params = SynthParams(slide_px_min=args.min_px, slide_px_max=args.max_px,
                         confounding=confounding, site_stain_strength=site_strength)
    t0 = time.perf_counter()
    manifest = generate_cohort(cell / "cohort", n_slides=args.slides, seed=args.seed,
                               params=params, workers=args.workers)
    config = cell / "config.yaml"
    # Ground-truth scoring is asked for by naming the cohort's ground_truth folder.
    truth = {"ground_truth": str(manifest.parent / "ground_truth")}
    config.write_text(yaml.safe_dump({**SMALL_CONFIG, **truth}), encoding="utf-8")
    run, cfg = prepare_run(manifest, cell / "run", config)
    run_pipeline(run, cfg, until="confounders", echo=lambda _: None)
    summary = json.loads((run.root / "confounders" / "summary.json").read_text())
    return {"cell": name, "confounding": confounding, "site_strength": site_strength,
            "seconds": round(time.perf_counter() - t0, 1), **figures(summary)}


def figures(summary: dict[str, Any]) -> dict[str, Any]:
    auroc = summary.get("probe_auroc", {})
    gt = summary.get("ground_truth", {})
    rob = summary.get("pathorob", {})
    null = summary.get("controls", {}).get("permuted_null", {}).get("sae", {})
    return {
        "site_auc_emb": auroc.get("site/embedding"),
        "site_auc_sae": auroc.get("site/sae_codes"),
        "site_auc_res": auroc.get("site/sae_residual"),
        "label_auc_emb": auroc.get("label/embedding"),
        "site_RI_emb": rob.get("site/embedding", {}).get("robustness_index"),
        "site_units": summary.get("flagged_units", {}).get("site", 0),
        "site_true": gt.get("site", {}).get("n_true"),
        "site_prec": gt.get("site", {}).get("precision"),
        "site_rec": gt.get("site", {}).get("recall"),
        "site_rankAUC": gt.get("site", {}).get("auroc"),
        "scan_units": summary.get("flagged_units", {}).get("scanner", 0),
        "scan_prec": gt.get("scanner", {}).get("precision"),
        "scan_rec": gt.get("scanner", {}).get("recall"),
        "scan_rankAUC": gt.get("scanner", {}).get("auroc"),
        "null_rep_fdr": f"{null.get('repeats_with_any_fdr_pass')}/{null.get('repeats')}",
        "null_frac_p": null.get("frac_p_below_alpha"),
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    columns = list(rows[0])
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.3f}".rstrip("0").rstrip(".") or "0"
    return "-" if value is None else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("sweep_runs"))
    parser.add_argument("--confounding", type=float, nargs="+", default=[0.0, 0.5, 0.9])
    parser.add_argument("--site-strength", type=float, nargs="+", default=[1.0])
    parser.add_argument("--extra", type=str, nargs="*", default=["0.9:0", "0.9:2"],
                        help="extra confounding:site_strength cells beside the grid")
    parser.add_argument("--slides", type=int, default=16)
    parser.add_argument("--min-px", type=int, default=1100)
    parser.add_argument("--max-px", type=int, default=1300)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    cells = list(itertools.product(args.confounding, args.site_strength))
    cells += [tuple(float(v) for v in e.split(":")) for e in args.extra]
    rows = []
    for confounding, strength in dict.fromkeys(cells):
        rows.append(run_cell(args.out, confounding, strength, args))
        print(f"done {rows[-1]['cell']} in {rows[-1]['seconds']} s", flush=True)
    print()
    print_table(rows)


if __name__ == "__main__":
    main()
