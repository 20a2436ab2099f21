"""The one-screen summary printed at the end of `pathosae run`: the figures a reader wants first."""

from __future__ import annotations

import json

import pandas as pd

from pathosae.run import RunDir


def run_summary(run: RunDir) -> list[str]:
    """Key figures from whatever stages have finished; stages not run are simply left out."""
    lines = [f"run: {run.root}"]
    for part in (_cohort_line, _sae_line, _confounder_lines, _edit_lines, _saeception_lines):
        lines.extend(part(run))
    report = run.root / "report.html"
    if report.exists():
        lines.append(f"report: {report}")
        lines.append(f"app:    pathosae app {run.root}")
    return lines


def _cohort_line(run: RunDir) -> list[str]:
    stages = run.read_state().get("stages", {})
    cohort = stages.get("cohort", {}).get("summary") or {}
    tiles = stages.get("tile", {}).get("summary") or {}
    if not cohort:
        return []
    text = f"cohort: {cohort.get('n_slides')} slides, {cohort.get('n_patients')} patients"
    if tiles:
        text += f", {tiles.get('n_tiles')} tiles"
        failed = tiles.get("failed") or []
        if failed:
            text += f" ({len(failed)} slides failed tiling: see tiles/_failed.csv)"
    return [text]


def _sae_line(run: RunDir) -> list[str]:
    lines = []
    for path in sorted((run.root / "sae").glob("*/metrics.json")):
        metrics = json.loads(path.read_text())
        held = metrics.get("held_out", metrics)
        fvu, l0, dead = held.get("fvu"), held.get("l0"), held.get("dead_fraction")
        if fvu is None:
            continue
        lines.append(f"SAE {path.parent.name}: held-out FVU {fvu:.3f}, L0 {l0:.1f}, "
                     f"dead {100 * (dead or 0):.1f}%")
    return lines


def _confounder_lines(run: RunDir) -> list[str]:
    path = run.root / "confounders" / "summary.json"
    if not path.exists():
        return []
    summary = json.loads(path.read_text())
    flagged = summary.get("flagged_units") or {}
    alpha = summary.get("fdr_alpha", 0.05)
    lines = ["units flagged at FDR " + f"{alpha:g}: "
             + ", ".join(f"{k} {v}" for k, v in sorted(flagged.items()))]
    auroc = summary.get("probe_auroc") or {}
    for variable in sorted({k.split("/")[0] for k in auroc}):
        parts = [f"{rep} {auroc[f'{variable}/{rep}']:.2f}" for rep in
                 ("embedding", "sae_codes", "sae_residual") if f"{variable}/{rep}" in auroc]
        lines.append(f"{variable} leakage (probe AUROC): " + ", ".join(parts))
    return lines


def _edit_lines(run: RunDir) -> list[str]:
    path = run.root / "edits" / "effects.parquet"
    if not path.exists():
        return []
    table = pd.read_parquet(path)
    table = table[table["missing_reason"].isna()] if "missing_reason" in table else table
    needed = {"edit", "mode", "bacc_shifted", "site_leakage"}
    if table.empty or not needed <= set(table.columns):
        return []
    base = table[table["edit"] == "no_edit"].iloc[0]
    edits = table[table["edit"] != "no_edit"]
    if edits.empty:
        return []
    best = edits.sort_values("bacc_shifted", ascending=False).iloc[0]
    return [
        f"best edit: {best['edit']} ({best['mode']}): shifted-test balanced accuracy "
        f"{_num(base['bacc_shifted'])} -> {_num(best['bacc_shifted'])}, site leakage "
        f"{_num(base['site_leakage'])} -> {_num(best['site_leakage'])}"
    ]


def _num(value: object) -> str:
    """A figure, or why there is none (the within-class site probe needs 3 slides a site)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "n/a"
    return f"{number:.3f}" if number == number else "n/a (too few slides per site and class)"


def _saeception_lines(run: RunDir) -> list[str]:
    path = run.root / "saeception" / "metrics.parquet"
    if not path.exists():
        return []
    table = pd.read_parquet(path)
    if table.empty or "variant" not in table:
        return []
    last = table[table["cycle"] == table["cycle"].max()]
    cols = [c for c in ("bacc_shifted", "site_leakage") if c in last]
    means = last.groupby("variant")[cols].mean()
    parts = [f"{v} " + "/".join(_num(means.loc[v, c]).split(" ")[0] for c in cols)
             for v in means.index]
    return [f"SAE-ception, last cycle ({' / '.join(cols)}): " + ", ".join(parts)]


def print_summary(run: RunDir, echo: object = print) -> None:
    for line in run_summary(run):
        echo(line)  # type: ignore[operator]


__all__ = ["print_summary", "run_summary"]
